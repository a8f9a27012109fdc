"""SCF-step counting and timings from VASP outputs (vasprun.xml, OSZICAR, OUTCAR).

Counts come from pymatgen: ``Vasprun(...).ionic_steps[i]["electronic_steps"]`` and
``Oszicar(...).electronic_steps``. A static run has one ionic step; its SCF
iteration count is ``electronic_steps[0]``, which includes the ``|NELMDL|``
non-self-consistent steps VASP runs first (default -5 from scratch, 0 with a WAVECAR).

Custodian keeps each failed attempt in ``error.N.tar.gz``; :func:`count_attempts`
adds them up, so an arm that was rerun pays for every step it ran.

Examples
--------
>>> from mlcharge_workflows.engines.vasp.parse import scf_steps_from_oszicar
>>> scf_steps_from_oszicar("OSZICAR")  # doctest: +SKIP
[17]
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monty.io import zopen
from monty.os.path import zpath

from mlcharge_workflows.common.documents import get_field

__all__ = [
    "DISCARD_MESSAGES",
    "STDOUT_FILES",
    "StartEvidence",
    "VaspScfSummary",
    "count_attempts",
    "is_backed_up",
    "parse_vasp_scf",
    "read_start_evidence",
    "scf_steps_from_oszicar",
    "start_evidence",
    "scf_steps_from_vasprun",
    "task_field",
    "task_magnetization",
    "task_successful",
    "wall_time_from_outcar",
]


@dataclass
class VaspScfSummary:
    """What one VASP run says about its SCF (all times in seconds, energies in eV)."""

    electronic_steps: list[int]  # SCF steps per ionic step
    source: str  # "vasprun.xml" or "OSZICAR"
    nelm: int | None = None
    nelmdl: int | None = None
    icharg: int | None = None  # value VASP used (vasprun <parameters>)
    istart: int | None = None
    ngf: tuple[int, int, int] | None = None  # fine grid NGXF, NGYF, NGZF VASP used
    converged_electronic: bool | None = None
    energy_eV: float | None = None
    scf_wall_s: float | None = None  # sum of <time name="totalsc"> wall times
    wall_s: float | None = None  # OUTCAR "Elapsed time (sec)"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scf_iterations(self) -> int:
        """SCF steps of the first ionic step (the whole SCF of a static run)."""
        return self.electronic_steps[0] if self.electronic_steps else 0

    @property
    def hit_nelm(self) -> bool:
        """Whether any ionic step stopped at NELM (electronic SCF not converged)."""
        return self.nelm is not None and any(n >= self.nelm for n in self.electronic_steps)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (with ``scf_iterations`` and ``hit_nelm``)."""
        d = asdict(self)
        d["ngf"] = list(self.ngf) if self.ngf else None
        d["scf_iterations"] = self.scf_iterations
        d["hit_nelm"] = self.hit_nelm
        return d


def _existing(path: str | Path) -> Path:
    p = Path(zpath(str(path)))
    if not p.exists():
        raise FileNotFoundError(f"VASP output not found: {path} (also tried .gz/.bz2/.xz)")
    return p


def _vasprun(path: str | Path):
    from pymatgen.io.vasp import Vasprun

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged runs warn; we report it instead
        return Vasprun(
            str(_existing(path)),
            parse_dos=False,
            parse_eigen=False,
            parse_projected_eigen=False,
            parse_potcar_file=False,
            exception_on_bad_xml=False,
        )


def scf_steps_from_vasprun(path: str | Path) -> list[int]:
    """SCF steps of each ionic step, read from vasprun.xml with pymatgen."""
    return [len(step["electronic_steps"]) for step in _vasprun(path).ionic_steps]


def scf_steps_from_oszicar(path: str | Path) -> list[int]:
    """SCF steps of each ionic step, read from OSZICAR with pymatgen.

    A run killed mid-SCF leaves an ionic step without its closing line; pymatgen still
    lists its electronic steps, so the count covers every step VASP paid for.
    """
    from pymatgen.io.vasp import Oszicar

    return [len(steps) for steps in Oszicar(str(_existing(path))).electronic_steps]


def _totalsc_wall(path: Path) -> float | None:
    """Sum of the wall-clock ``totalsc`` times of vasprun.xml (None if absent)."""
    total, found = 0.0, False
    try:
        with zopen(str(path), "rb") as fh:
            for _, elem in ET.iterparse(fh, events=("end",)):
                if elem.tag == "time" and elem.get("name") == "totalsc":
                    total += float(elem.text.split()[-1])
                    found = True
                elif elem.tag in ("scstep", "dos", "eigenvalues", "projected"):
                    elem.clear()
    except ET.ParseError:  # truncated file from a killed run: keep what was read
        pass
    return total if found else None


_ELAPSED = re.compile(r"Elapsed time \(sec\):\s*([0-9.]+)")


def wall_time_from_outcar(path: str | Path) -> float | None:
    """VASP's own wall time ("Elapsed time (sec)") from OUTCAR; None if the run did not finish."""
    p = Path(zpath(str(path)))
    if not p.exists():
        return None
    with zopen(str(p), "rt", errors="replace") as fh:
        m = _ELAPSED.findall(fh.read())
    return float(m[-1]) if m else None


def parse_vasp_scf(path: str | Path) -> VaspScfSummary:
    """Parse the SCF of a VASP run folder (or a vasprun.xml / OSZICAR file).

    vasprun.xml is preferred (it also gives NELM, NELMDL, ICHARG, the grid and
    convergence); a folder with only an OSZICAR falls back to it (``nelm`` etc. None).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    vasprun = (
        Path(zpath(str(folder / "vasprun.xml")))
        if path.is_dir()
        else (path if "vasprun" in path.name else None)
    )
    oszicar = (
        Path(zpath(str(folder / "OSZICAR")))
        if path.is_dir()
        else (path if "OSZICAR" in path.name else None)
    )
    wall = wall_time_from_outcar(folder / "OUTCAR")
    if vasprun is not None and vasprun.exists():
        v = _vasprun(vasprun)
        p = v.parameters
        ngf = tuple(int(p[k]) for k in ("NGXF", "NGYF", "NGZF")) if "NGXF" in p else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                energy = float(v.final_energy)
            except Exception:  # noqa: BLE001 - no energy in a crashed run
                energy = None
        return VaspScfSummary(
            electronic_steps=[len(s["electronic_steps"]) for s in v.ionic_steps],
            source="vasprun.xml",
            nelm=_int(p.get("NELM")),
            nelmdl=_int(p.get("NELMDL")),
            icharg=_int(p.get("ICHARG")),
            istart=_int(p.get("ISTART")),
            ngf=ngf,  # type: ignore[arg-type]
            converged_electronic=bool(v.converged_electronic),
            energy_eV=energy,
            scf_wall_s=_totalsc_wall(vasprun),
            wall_s=wall,
        )
    if oszicar is not None and oszicar.exists():
        from pymatgen.io.vasp import Oszicar

        osz = Oszicar(str(oszicar))
        energy = float(osz.final_energy) if osz.ionic_steps else None
        return VaspScfSummary(
            electronic_steps=[len(s) for s in osz.electronic_steps],
            source="OSZICAR",
            energy_eV=energy,
            wall_s=wall,
        )
    raise FileNotFoundError(f"no vasprun.xml or OSZICAR in {folder}")


#: Files holding VASP's standard output: atomate2/custodian write ``vasp.out`` and
#: ``std_err.txt``; a plain ``mpirun vasp_std > stdout`` run may leave ``stdout``.
STDOUT_FILES = ("vasp.out", "std_err.txt", "stdout", "vasp.log")

#: Messages with which VASP gives up a CHGCAR (docs/vasp-guide.md, "The CHGCAR VASP reads";
#: from VASP's READCH/RD_RHO_PAW and main.F): (phrase as matched, what it means).
DISCARD_MESSAGES: tuple[tuple[str, str], ...] = (
    ("PAW occupancies are missing on CHGCAR", "no PAW occupancies"),
    ("could not be read from file CHGCAR", "ICHARG>10: VASP stopped"),
    ("dimensions on CHGCAR file are different", "grid differs from NGXF/NGYF/NGZF"),
    ("number of atoms are different on CHGCAR", "another cell"),
    ("chargedensity file is incomplete", "truncated CHGCAR"),
    ("data corrupt", "PAW occupancies unreadable (RD_RHO_PAW)"),  # a symptom: named last
)
#: OUTCAR: the start block VASP prints for every run from a supplied density (ICHARG=1, 2).
_SUPPLIED = "initial charge density was supplied"
#: ... followed, when the total density came from atoms, by this line.
_ATOMS = "charge density of overlapping atoms calculated"
#: stdout: the total density was taken from CHGCAR / the magnetisation replaced by atoms.
_READ = "charge-density read from file"
_MAG_ATOMS = "magnetization density of overlapping atoms calculated"


@dataclass
class StartEvidence:
    """What VASP's own output says about the start density of one run.

    ``density_read``: True when OUTCAR/stdout show the CHGCAR was read, False when they
    show VASP discarded it (the run started from overlapping atoms, or stopped for
    ICHARG > 10), None when the files say neither (no OUTCAR start block and no stdout:
    e.g. a mocked run). ``evidence`` is a one-line explanation, ``messages`` the lines
    found, ``files`` the files read.
    """

    density_read: bool | None
    evidence: str
    messages: list[str] = field(default_factory=list)
    magnetization_from_atoms: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``"read"``, ``"discarded"`` or ``"unverified"``."""
        return {True: "read", False: "discarded", None: "unverified"}[self.density_read]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (with ``status``)."""
        return {**asdict(self), "status": self.status}


def _flat(text: str) -> str:
    """One line, box characters and runs of white space collapsed (VASP 6 wraps its
    warnings in ``|`` boxes over several lines)."""
    return re.sub(r"[|\s]+", " ", text)


def _outcar_start(outcar: str) -> bool | None:
    """OUTCAR's start block: after "initial charge density was supplied" the next lines
    either say "charge density of overlapping atoms calculated" (False) or go straight to
    the electron count (True); None without the block."""
    lines = outcar.splitlines()
    for i, line in enumerate(lines):
        if _SUPPLIED in line:
            return _ATOMS not in _flat(" ".join(lines[i + 1 : i + 4]))
    return None


def start_evidence(outcar: str | None = None, stdout: str | None = None) -> StartEvidence:
    """Decide from OUTCAR and stdout text whether VASP read the supplied CHGCAR.

    OUTCAR's start block decides when it is there: "charge density of overlapping atoms
    calculated" right after "initial charge density was supplied" means the total density
    came from atoms (False), the block without it that it was read (True; discard messages
    beside it then concern the magnetisation block, which VASP replaced by MAGMOM atoms).
    Without the block, any discard message (:data:`DISCARD_MESSAGES`) in either file means
    False and stdout's "charge-density read from file" True; neither: unverified (None).
    """
    texts = {"OUTCAR": outcar or "", "stdout": stdout or ""}
    flat = {name: _flat(text).lower() for name, text in texts.items()}
    found = [f"{name}: {phrase} ({meaning})" for phrase, meaning in DISCARD_MESSAGES
             for name in texts if phrase.lower() in flat[name]]
    mag_atoms = any(_MAG_ATOMS in f for f in flat.values())
    outcar_read = _outcar_start(texts["OUTCAR"])
    if outcar_read is False:
        found.append(f"OUTCAR: {_ATOMS} (after '{_SUPPLIED}')")  # the cause first
        return StartEvidence(False, found[0], found, mag_atoms)
    if outcar_read:
        return StartEvidence(True, f"OUTCAR: {_SUPPLIED}, no overlapping atoms", found, mag_atoms)
    if found:
        return StartEvidence(False, found[0], found, mag_atoms)
    if _READ in flat["stdout"]:
        return StartEvidence(True, f"stdout: {_READ}", [], mag_atoms)
    return StartEvidence(None, "unverified: neither OUTCAR nor stdout show the start "
                         "(no start block, no stdout)", [], mag_atoms)


def _stdout_text(members: dict[str, bytes]) -> str | None:
    parts = [members[n].decode(errors="replace") for n in STDOUT_FILES if members.get(n)]
    return "\n".join(parts) if parts else None


def read_start_evidence(directory: str | Path) -> StartEvidence:
    """:func:`start_evidence` of a run folder (OUTCAR and stdout files, gzipped or not)."""
    directory = Path(directory)
    members = {n: b for n in ("OUTCAR", *STDOUT_FILES) if (b := _read_bytes(directory / n))}
    outcar = members.get("OUTCAR")
    ev = start_evidence(outcar.decode(errors="replace") if outcar else None,
                        _stdout_text(members))
    ev.files = sorted(members)
    return ev


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _steps_from_bytes(name: str, data: bytes) -> list[int]:
    """SCF steps per ionic step of an OSZICAR or vasprun.xml given as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        if name == "OSZICAR":
            return scf_steps_from_oszicar(path)
        return scf_steps_from_vasprun(path)


def _attempt(source: str, steps: list[int], members: dict[str, bytes]) -> dict[str, Any]:
    wall, outcar = None, members.get("OUTCAR")
    text = outcar.decode(errors="replace") if outcar else None
    if text:
        found = _ELAPSED.findall(text)
        wall = float(found[-1]) if found else None
    evidence = start_evidence(text, _stdout_text(members))
    evidence.files = sorted(n for n in members if n == "OUTCAR" or n in STDOUT_FILES)
    return {
        "source": source,
        "electronic_steps": steps,
        "scf_iterations": steps[0] if steps else 0,
        "wall_s": wall,
        "start_evidence": evidence.as_dict(),
    }


#: Files of one attempt that :func:`count_attempts` reads (folder or custodian backup).
_ATTEMPT_FILES = ("OSZICAR", "vasprun.xml", "OUTCAR", *STDOUT_FILES)


def _backup_number(path: Path) -> int:
    m = re.search(r"error\.(\d+)\.tar", path.name)
    return int(m.group(1)) if m else 0


def _backup_members(tarball: Path) -> dict[str, bytes]:
    """``{"OSZICAR": bytes, "vasprun.xml": bytes, "OUTCAR": bytes, "vasp.out": bytes, ...}``
    (those present) of a backup (custodian backs up stdout as ``vasp.out``)."""
    out: dict[str, bytes] = {}
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name in _ATTEMPT_FILES and member.isfile():
                out[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return out


def _read_bytes(path: Path) -> bytes | None:
    p = Path(zpath(str(path)))
    if not p.exists():
        return None
    with zopen(str(p), "rb") as fh:
        return fh.read()


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def count_attempts(directory: str | Path) -> list[dict[str, Any]]:
    """Every SCF attempt in a custodian run folder, oldest first.

    Failed attempts come from custodian's ``error.N.tar.gz`` backups (their OSZICAR,
    else their vasprun.xml), the last from the folder itself. Identical backups
    (two handlers backing up the same attempt) are counted once.

    Returns
    -------
    list of dict
        ``{"source", "electronic_steps", "scf_iterations", "wall_s", "start_evidence"}``
        per attempt (``wall_s``: the attempt's OUTCAR "Elapsed time", None if it has none;
        ``start_evidence``: :meth:`StartEvidence.as_dict` of its OUTCAR and stdout, whether
        VASP read the supplied CHGCAR).
    """
    directory = Path(directory)
    attempts: list[dict[str, Any]] = []
    seen: set[str] = set()
    tarballs = sorted(directory.glob("error.*.tar*"), key=_backup_number)
    sources = [(t.name, _backup_members(t)) for t in tarballs]
    final = {n: b for n in _ATTEMPT_FILES if (b := _read_bytes(directory / n))}
    sources.append(("final", final))
    for label, members in sources:
        name = "OSZICAR" if "OSZICAR" in members else "vasprun.xml"
        if name not in members:
            continue
        digest = _digest(members[name])
        if digest in seen:
            continue
        seen.update(_digest(members[n]) for n in ("OSZICAR", "vasprun.xml") if n in members)
        source = name if label == "final" else label
        steps = _steps_from_bytes(name, members[name])
        attempts.append(_attempt(source, steps, members))
    return attempts


def is_backed_up(directory: str | Path) -> bool:
    """Whether the newest ``error.N.tar.gz`` already holds this folder's OSZICAR/vasprun.xml."""
    directory = Path(directory)
    tarballs = sorted(directory.glob("error.*.tar*"), key=_backup_number)
    if not tarballs:
        return False
    members = _backup_members(tarballs[-1])
    for name in ("OSZICAR", "vasprun.xml"):
        data = _read_bytes(directory / name)
        if data is not None and name in members:
            return _digest(data) == _digest(members[name])
    return False


#: Nested attribute-or-key access (the one getter of the package).
task_field = get_field


def task_successful(task: Any) -> bool | None:
    """True if an atomate2 TaskDoc's state is successful (None when it has no state)."""
    state = task_field(task, "state")
    return None if state is None else str(getattr(state, "value", state)).lower() == "successful"


def task_magnetization(task: Any) -> float | None:
    """Total magnetisation (μB/cell) of the last calculation's OUTCAR, or None."""
    calcs = task_field(task, "calcs_reversed")
    mag = task_field(calcs[0] if calcs else None, "output", "outcar", "total_magnetization")
    return None if mag is None else float(mag)
