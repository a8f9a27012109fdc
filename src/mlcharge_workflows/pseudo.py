"""Pseudopotential registry: element -> UPF file, valence, kind and suggested cutoffs.

Every file is a PBE norm-conserving (NC) or ultrasoft (US) potential: shipped by Debian's
``quantum-espresso-data`` (``settings.pseudo_dir``), gzipped in the examples of
``quantum-espresso`` (H, Cu), or generated once with QE's own ``ld1.x`` and cached
(:data:`CACHE_DIR`) from :data:`LD1_RECIPES`: Co (Debian has only a fully relativistic and a
PBEsol file) and the elements Debian has no PBE NC/US file for (Li, Na, Mg, Al, P, S, F, Cl,
K, Ca, Ti, Zn; pslibrary's generation parameters). A generated element is supported only
with a passing record in :data:`VALIDATION_FILE` (ghost states, ld1.x transferability tests,
PBE lattice constant; ``benchmarks/pseudo_validation.py``); a failed record keeps any element
out of :func:`supported_elements`.

A user's own NC/US file enters through :func:`pseudo_from_file` and
:func:`resolve_pseudos` (element -> :class:`PseudoInfo`, overrides replacing the registry).
PAW files are refused on purpose: a PAW start needs one-centre occupancies (becsum)
consistent with the density, which a predicted density does not carry (docs/qe-protocol.md).

Examples
--------
>>> from mlcharge_workflows.pseudo import get_pseudo, supported_elements
>>> "Si" in supported_elements()
True
>>> get_pseudo("Si").kind, get_pseudo("Si").z_valence
('NC', 4.0)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from mlcharge_workflows.settings import MLChargeSettings
from mlcharge_workflows.validation import MIN_DISTANCE, validate_structure  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pymatgen.core import Structure

#: Where Debian's ``quantum-espresso`` package keeps its examples (some gzipped UPF files).
QE_EXAMPLES_DIR = Path("/usr/share/doc/quantum-espresso/examples")

#: Where generated pseudopotentials are kept (``$XDG_CACHE_HOME/mlcharge_workflows/pseudo``).
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlcharge_workflows" / "pseudo"

#: ld1.x input of the Co potential: the cut-off radii, reference energies, local potential
#: (rcloc 1.7, Bessel-smoothed AE potential) and 3d8 4s1 configuration of Debian's fully
#: relativistic ``CorelUSPBE.RRKJ3.UPF``, generated scalar-relativistic with PBE. Checked with
#: pw.x (35/350 Ry, k-spacing 0.3 Å⁻¹): fcc Co energy minimum near a = 3.54 Å, 1.61 μB/atom
#: at a = 3.52 Å (PBE literature: 3.52-3.54 Å, 1.6-1.7 μB).
_CO_INPUT = """ &input
   title='Co', zed=27.0, rel=1, config='[Ar] 3d8.0 4s1.0 4p0.0', iswitch=3, dft='PBE'
 /
 &inputp
   pseudotype=3, file_pseudopw='Co.pbe-nd-rrkjus_ld1.UPF', author='mlcharge_workflows (ld1.x)',
   lloc=-1, rcloc=1.7, nlcc=.true., new_core_ps=.true., rcore=1.2, tm=.true.
 /
6
4S  1  0  1.00  0.00  2.20  2.50  0.0
4S  1  0  0.00  0.50  2.20  2.50  0.0
4P  2  1  0.00  0.00  2.40  2.60  0.0
4P  2  1  0.00  0.50  2.40  2.60  0.0
3D  3  2  8.00  0.00  1.50  2.10  0.0
3D  3  2  0.00 -0.43  1.50  2.10  0.0
"""


def _psl(element: str, zed: float, config: str, tag: str, inputp: str, cards: str) -> str:
    """An ld1.x input in pslibrary's layout: scalar-relativistic (rel=1), PBE, US (pseudotype=3)."""
    return (
        f" &input\n   title='{element}', zed={zed}, rel=1, config='{config}', iswitch=3, dft='PBE'\n /\n"
        f" &inputp\n   pseudotype=3, file_pseudopw='{element}.pbe-{tag}-rrkjus_ld1.UPF',\n"
        f"   author='ADC (pslibrary)',\n   {inputp}\n /\n"
        f"{cards.strip()}\n"
    )


@dataclass(frozen=True)
class Ld1Recipe:
    """How one registry file is generated with ld1.x and tested.

    ``tests`` are valence configurations for ld1.x's transferability test (``iswitch=2``):
    the first is the generation configuration, the others give excitation energies that are
    compared with the all-electron atom's. ``origin`` says where the parameters come from.
    """

    filename: str
    input: str
    tests: tuple[str, ...]
    origin: str
    cutoffs_ry: tuple[float, float] | None = None  # validated (ecutwfc, ecutrho), registry use


# Generation parameters of pslibrary (A. Dal Corso, Comput. Mater. Sci. 95, 337 (2014); the
# public dalcorso/pslibrary repository, us_ps_collection.job): the ``rrkjus_psl.0.x`` entries
# for Li (0.2.1), Na (0.2), Al, P, S, F, Cl (0.1) and Zn (0.2.2), and the earliest
# ``$fct-rrkjus`` entries of the same file for Mg, K, Ca and Ti, one per element in
# ``data/pseudo/ld1_pslibrary.json`` (zed, config, file tag, &inputp settings, the
# wavefunction cards, test configurations, pslibrary entry). Only rel=1, dft='PBE', the
# author and the file name are set here (:func:`_psl`).
_PSL = "pslibrary us_ps_collection.job"
_PSL_FILE = Path(__file__).parent / "data" / "pseudo" / "ld1_pslibrary.json"


def _pslibrary_recipes() -> dict[str, Ld1Recipe]:
    """The ld1.x recipes of ``data/pseudo/ld1_pslibrary.json``, in its order."""
    out = {}
    for el, r in json.loads(_PSL_FILE.read_text(encoding="utf-8")).items():
        text = _psl(el, r["zed"], r["config"], r["tag"], r["inputp"], "\n".join(r["cards"]))
        out[el] = Ld1Recipe(f"{el}.pbe-{r['tag']}-rrkjus_ld1.UPF", text, tuple(r["tests"]),
                            f"{_PSL}: {r['entry']}", tuple(r["cutoffs_ry"]))
    return out


LD1_RECIPES: dict[str, Ld1Recipe] = {
    "Co": Ld1Recipe(
        "Co.pbe-nd-rrkjus_ld1.UPF", _CO_INPUT,
        ("3d8 4s1 4p0", "3d7 4s2 4p0", "3d8 4s0.5 4p0.5", "3d8 4s0 4p0"),
        "radii of Debian's CorelUSPBE.RRKJ3.UPF, made scalar-relativistic PBE"),
    **_pslibrary_recipes(),
}

#: ld1.x inputs of the generated registry files, by file name.
LD1_INPUTS = {r.filename: r.input for r in LD1_RECIPES.values()}

#: Most species (``ntyp``) pw.x 6.7 accepts in one run (its ``ntypx``); an antiferromagnetic
#: start that splits an element into two kinds counts twice.
MAX_SPECIES = 10

PseudoKind = Literal["NC", "US", "PAW"]


class _Entry(NamedTuple):
    filename: str
    where: str | None  # None: pseudo_dir; "ld1": generated (LD1_RECIPES); else a folder of
    #                    QE_EXAMPLES_DIR holding <filename>.gz
    ecutwfc_ry: float
    ecutrho_ry: float
    needs_record: bool = False  # supported only with a passing record in VALIDATION_FILE


# Cutoffs are moderate values for fast comparisons (not converged to 1 meV/atom); the
# protocol takes the maximum over the species of a structure. Elements added with ld1.x
# files (Li ... Zn) are supported only once benchmarks/pseudo_validation.py has recorded a
# pass for them; their cutoffs are those of that validation (docs/qe-protocol.md).
_REGISTRY: dict[str, _Entry] = {
    "H": _Entry("H_HSCV_PBE-1.0.UPF", "CPV/EXX-wf-example", 50.0, 200.0),
    "B": _Entry("B.pbe-n-rrkjus_psl.1.0.0.UPF", None, 35.0, 280.0),
    "C": _Entry("C.pbe-rrkjus.UPF", None, 30.0, 240.0),
    "N": _Entry("N.pbe-n-rrkjus_psl.1.0.0.UPF", None, 40.0, 320.0),
    "O": _Entry("O.pbe-rrkjus.UPF", None, 35.0, 280.0),
    "Si": _Entry("Si.pbe-rrkj.UPF", None, 30.0, 120.0),
    "Fe": _Entry("Fe.pbe-nd-rrkjus.UPF", None, 35.0, 350.0),
    "Co": _Entry("Co.pbe-nd-rrkjus_ld1.UPF", "ld1", 35.0, 350.0),
    "Ni": _Entry("Ni.pbe-nd-rrkjus.UPF", None, 35.0, 350.0),
    "Cu": _Entry("Cu_US_PBE_3pj_lowE.UPF", "XSpectra/pseudo", 35.0, 350.0),
    # the pslibrary-generated files, in the recipe file's order, at their validated cutoffs
    **{el: _Entry(r.filename, "ld1", *r.cutoffs_ry, True)
       for el, r in LD1_RECIPES.items() if r.cutoffs_ry is not None},
}

#: Validation records of the generated files (written by benchmarks/pseudo_validation.py):
#: element -> {"passed": bool, "reason": str, "md5": ..., ld1.x tests, lattice constant}.
VALIDATION_FILE = Path(__file__).parent / "data" / "pseudo" / "validation.json"

#: Why PAW files are refused (docs/qe-protocol.md).
PAW_REASON = (
    "a PAW run also needs one-centre occupancies (becsum) consistent with the start density, "
    "which a predicted density does not carry (measured: GaAs from its own converged density "
    "with atomic becsum took 18 SCF iterations, against 11 from atoms)"
)

#: Cutoffs (Ry) of a user file for an element the registry does not know and whose header
#: suggests none.
DEFAULT_CUTOFFS_RY = (45.0, 360.0)


@dataclass(frozen=True)
class PseudoInfo:
    """One pseudopotential file (registry or user's), with what was read from its UPF."""

    element: str
    filename: str  # name in the run's pseudo folder
    source: Path  # a plain UPF file (gzipped originals are decompressed into the cache)
    kind: PseudoKind
    z_valence: float
    functional: str
    ecutwfc_ry: float
    ecutrho_ry: float
    has_rhoatom: bool = True  # PP_RHOATOM present (the atomic reference density)
    md5: str = ""  # of the file's bytes
    origin: str = "registry"  # "registry" or "user"


def _open_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", errors="replace") as fh:
            return fh.read()
    return path.read_text(errors="replace")


def read_upf_header(path: str | Path) -> dict:
    """Element, kind (NC/US/PAW), z_valence, functional, spin-orbit flag and PP_RHOATOM presence
    of a UPF v1/v2 file (v2 also: the suggested ``wfc_cutoff``/``rho_cutoff`` in Ry, 0 if none)."""
    path = Path(path)
    text = _open_text(path)
    m = re.search(r"<PP_HEADER(.*?)(/>|</PP_HEADER>)", text, re.DOTALL)
    if m is None:
        raise ValueError(f"{path}: no <PP_HEADER> found, not a UPF file")
    head = m.group(1)
    attrs = dict(re.findall(r'(\w+)\s*=\s*["\']([^"\']*)["\']', head))
    if "z_valence" in attrs:  # UPF v2
        ptype = attrs.get("pseudo_type", "").strip().upper()
        if attrs.get("is_paw", "").strip().lower() in ("t", "true", ".true.") or ptype == "PAW":
            kind = "PAW"
        elif ptype in ("US", "USPP") or attrs.get("is_ultrasoft", "").strip().lower() in (
            "t",
            "true",
        ):
            kind = "US"
        else:
            kind = "NC"
        def number(key: str, required: bool = False) -> float:
            try:
                return float(attrs.get(key, "0").replace("D", "E").replace("d", "e"))
            except ValueError:
                if required:
                    raise ValueError(f"{path}: unreadable {key}={attrs.get(key)!r} in PP_HEADER") from None
                return 0.0

        return {
            "element": attrs.get("element", "").strip(),
            "kind": kind,
            "z_valence": number("z_valence", required=True),
            "functional": " ".join(attrs.get("functional", "").split()),
            "has_so": attrs.get("has_so", "").strip().lower() in ("t", "true"),
            "has_rhoatom": "<PP_RHOATOM" in text,
            "wfc_cutoff": number("wfc_cutoff"),
            "rho_cutoff": number("rho_cutoff"),
        }
    lines = [ln.strip() for ln in head.lstrip(">").strip().splitlines()]  # UPF v1

    def line_with(tag: str) -> str:
        for ln in lines:
            if tag in ln:
                return ln
        raise ValueError(f"{path}: UPF v1 header has no '{tag}' line")

    kind_tok = lines[2].split()[0].upper()  # line 3: NC / US / PAW
    func_line = line_with("Exchange-Correlation")
    return {
        "element": line_with("Element").split()[0],
        "kind": {"US": "US", "PAW": "PAW"}.get(kind_tok, "NC"),
        "z_valence": float(line_with("Z valence").split()[0]),
        "functional": " ".join(func_line.split("Exchange-Correlation")[0].split()),
        "has_so": "Fully-Relativistic" in text[: m.start()],
        "has_rhoatom": "<PP_RHOATOM" in text,
    }


def is_pbe(functional: str) -> bool:
    """Whether a UPF functional string denotes PBE (short name or the four QE components)."""
    tokens = functional.upper().split()
    return tokens[:1] == ["PBE"] or tokens[:4] in (
        ["SLA", "PW", "PBE", "PBE"],
        ["SLA", "PW", "PBX", "PBC"],
    )


def _ld1_command() -> str:
    pw = shlex.split(MLChargeSettings().pw_cmd)
    found = shutil.which(pw[0]) if pw else None
    sibling = Path(found).with_name("ld1.x") if found else None
    if sibling is not None and sibling.is_file():
        return str(sibling)
    ld1 = shutil.which("ld1.x")
    if ld1 is None:
        raise FileNotFoundError(
            "ld1.x (Quantum ESPRESSO's atomic code) is needed to generate a pseudopotential; "
            "install Debian's quantum-espresso package"
        )
    return ld1


def run_ld1(text: str, cwd: str | Path) -> str:
    """Run ld1.x on the input ``text`` in folder ``cwd``; its output, or ``RuntimeError``."""
    proc = subprocess.run([_ld1_command()], input=text, cwd=cwd, capture_output=True, text=True,
                          errors="replace")
    crash = Path(cwd) / "CRASH"
    if proc.returncode != 0 or crash.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"ld1.x failed (status {proc.returncode}) in {cwd}:\n{tail}")
    return proc.stdout


#: Generation dates written by ld1.x, replaced so that a generated file is the same bytes
#: on every day and machine with the same ld1.x.
_DATE_PATTERNS = ((re.compile(r'date="[^"]*"'), 'date=""'),
                  (re.compile(r"Generation date:[^\n]*"), "Generation date: (removed)"))


_NUMERIC_LINE = re.compile(r"^[\s0-9eEdD+\-.]+$")


def _wrap_long_numeric_lines(text: str, width: int = 4) -> str:
    """Wrap lines of numbers longer than 200 characters, ``width`` numbers a line.

    ld1.x 6.7 writes a matrix (PP_DIJ, PP_Q) on one line; with 7 projectors that line is
    over 1024 characters, which QE's own UPF reader (ld1.x, pw.x) refuses ("line too long").
    """
    out = []
    for line in text.split("\n"):
        if len(line) > 200 and _NUMERIC_LINE.match(line):
            nums = line.split()
            out.extend("  " + "  ".join(nums[i : i + width]) for i in range(0, len(nums), width))
        else:
            out.append(line)
    return "\n".join(out)


def generate_pseudo(filename: str, folder: Path = CACHE_DIR) -> Path:
    """Generate ``filename`` (a key of :data:`LD1_INPUTS`) with ld1.x into ``folder``.

    The generation date is removed from the file, so its checksum depends only on the input
    and the ld1.x build. Written atomically (temporary folder, then rename), so concurrent
    callers are safe.
    """
    if folder == CACHE_DIR:
        folder = _cache_folder()
    dest = folder / filename
    if dest.is_file():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        run_ld1(LD1_INPUTS[filename], tmp)
        made = Path(tmp) / filename
        if not made.is_file():
            raise RuntimeError(f"ld1.x ran but wrote no {filename} in {tmp}")
        text = made.read_text()
        for pattern, repl in _DATE_PATTERNS:
            text = pattern.sub(repl, text)
        made.write_text(_wrap_long_numeric_lines(text))
        os.replace(made, dest)
    return dest


def _cache_folder() -> Path:
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        return CACHE_DIR
    except OSError:  # read-only home (some CI runners): a per-machine temporary folder
        folder = Path(tempfile.gettempdir()) / "mlcharge_workflows_pseudo"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _decompressed(gz: Path, filename: str) -> Path:
    """A plain copy of a gzipped UPF in the cache (atomic write), so every reader can open it."""
    folder = _cache_folder()
    dest = folder / filename
    if not dest.is_file():
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
            with gzip.open(gz, "rb") as src:
                shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, dest)
    return dest


def _locate(filename: str, where: str | None, pseudo_dir: Path) -> Path:
    candidates = [pseudo_dir / filename, CACHE_DIR / filename, pseudo_dir / f"{filename}.gz"]
    if where not in (None, "ld1"):
        candidates.append(QE_EXAMPLES_DIR / where / f"{filename}.gz")
    for path in candidates:
        if path.is_file():
            return _decompressed(path, filename) if path.suffix == ".gz" else path
    if where == "ld1":
        return generate_pseudo(filename)
    raise FileNotFoundError(
        f"pseudopotential {filename} not found (looked in {', '.join(map(str, candidates))}); "
        "install Debian's quantum-espresso and quantum-espresso-data packages"
    )


@cache
def _validation_records(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def validation_record(element: str) -> dict | None:
    """The recorded validation of ``element``'s registry file, or ``None`` if there is none."""
    return _validation_records(VALIDATION_FILE).get(element)


def excluded_elements() -> dict[str, str]:
    """Registry elements kept out of :func:`supported_elements`, with the reason."""
    out = {}
    for el, entry in _REGISTRY.items():
        rec = validation_record(el)
        if rec is not None and not rec.get("passed", False):
            out[el] = f"its pseudopotential failed validation: {rec.get('reason') or 'no reason recorded'}"
        elif rec is None and entry.needs_record:
            out[el] = "its generated pseudopotential has no validation record yet"
    return out


def supported_elements() -> list[str]:
    """Elements the registry has a validated pseudopotential for, in registry order.

    An element whose file failed validation (or, for files generated with ld1.x, has no
    passing record in :data:`VALIDATION_FILE`) is left out; :func:`excluded_elements` says why.
    """
    excluded = excluded_elements()
    return [el for el in _REGISTRY if el not in excluded]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@cache
def _get_pseudo(element: str, pseudo_dir: Path) -> PseudoInfo:
    entry = _REGISTRY[element]
    source = _locate(entry.filename, entry.where, pseudo_dir)
    head = read_upf_header(source)
    if head["element"] != element:
        raise ValueError(f"{source} is for element {head['element']!r}, not {element!r}")
    return PseudoInfo(
        element=element,
        filename=entry.filename,
        source=source,
        kind=head["kind"],
        z_valence=head["z_valence"],
        functional=head["functional"],
        ecutwfc_ry=entry.ecutwfc_ry,
        ecutrho_ry=entry.ecutrho_ry,
        has_rhoatom=head["has_rhoatom"],
        md5=_md5(source),
    )


def get_pseudo(element: str, *, validated_only: bool = True) -> PseudoInfo:
    """Registry entry of ``element``; ``ValueError`` listing the supported ones if unknown.

    An element kept out by a failed (or missing) validation raises ``ValueError`` with the
    reason; ``validated_only=False`` returns its entry anyway (for the validation itself).
    """
    if element not in _REGISTRY:
        raise ValueError(
            f"element {element!r} has no pseudopotential in the registry; "
            f"supported elements: {', '.join(supported_elements())}"
        )
    if validated_only:
        reason = excluded_elements().get(element)
        if reason:
            raise ValueError(
                f"element {element!r} is not supported: {reason}; "
                f"supported elements: {', '.join(supported_elements())}"
            )
    return _get_pseudo(element, Path(MLChargeSettings().pseudo_dir))


def pseudo_from_file(
    path: str | Path,
    element: str | None = None,
    *,
    ecutwfc_ry: float | None = None,
    ecutrho_ry: float | None = None,
) -> PseudoInfo:
    """A :class:`PseudoInfo` for any NC or US UPF file (v1 or v2, plain or gzipped).

    Refused with ``ValueError`` naming the file: PAW (:data:`PAW_REASON`), fully relativistic
    (pw.x needs spin-orbit for it), no ``PP_RHOATOM`` (the atomic reference density of a
    start density is built from it), an element other than ``element``.

    Cutoffs: the arguments; else the larger of the registry's (if it knows the element) and
    the file's suggestion (UPF v2 ``wfc_cutoff``/``rho_cutoff``); else
    :data:`DEFAULT_CUTOFFS_RY`. ``ecutrho`` is at least 4 × ``ecutwfc`` (8 × for US).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"pseudopotential file {path} does not exist")
    head = read_upf_header(path)
    el = head["element"]
    if element is not None and el != element:
        raise ValueError(f"{path} is a pseudopotential for {el!r}, not for {element!r}")
    if head["kind"] == "PAW":
        raise ValueError(f"{path} is a PAW data set, refused: {PAW_REASON}; use a NC or US file for {el}")
    if head["has_so"]:
        raise ValueError(f"{path} is fully relativistic (spin-orbit); pw.x runs here are scalar-"
                         f"relativistic: use a scalar-relativistic NC or US file for {el}")
    if not head["has_rhoatom"]:
        raise ValueError(f"{path} has no PP_RHOATOM: the atomic reference density cannot be built")
    if path.suffix == ".gz":
        filename = path.name[: -len(".gz")]
        source = _decompressed(path, f"user-{_md5(path)[:8]}-{filename}")
    else:
        filename, source = path.name, path
    if ecutwfc_ry is None or ecutrho_ry is None:
        reg = _REGISTRY.get(el)
        wfc_c = [c for c in (head.get("wfc_cutoff", 0.0), reg and reg.ecutwfc_ry) if c]
        rho_c = [c for c in (head.get("rho_cutoff", 0.0), reg and reg.ecutrho_ry) if c]
        wfc = ecutwfc_ry or (float(np.ceil(max(wfc_c))) if wfc_c else DEFAULT_CUTOFFS_RY[0])
        rho = ecutrho_ry or (float(np.ceil(max(rho_c))) if rho_c else DEFAULT_CUTOFFS_RY[1])
        ecutwfc_ry, ecutrho_ry = wfc, max(rho, (8 if head["kind"] == "US" else 4) * wfc)
    if ecutrho_ry < 4 * ecutwfc_ry:
        raise ValueError(f"{path}: ecutrho {ecutrho_ry} Ry is below 4 × ecutwfc ({ecutwfc_ry} Ry)")
    return PseudoInfo(
        element=el,
        filename=filename,
        source=source,
        kind=head["kind"],
        z_valence=head["z_valence"],
        functional=head["functional"],
        ecutwfc_ry=float(ecutwfc_ry),
        ecutrho_ry=float(ecutrho_ry),
        has_rhoatom=True,
        md5=_md5(source),
        origin="user",
    )


@cache
def _pseudo_from_file_cached(path: str, element: str, mtime_ns: int, size: int) -> PseudoInfo:
    """:func:`pseudo_from_file` once per file version (a protocol resolves its files often)."""
    return pseudo_from_file(path, element)


def resolve_pseudos(
    structure: Structure | Iterable[str],
    overrides: Mapping[str, str | Path | PseudoInfo] | None = None,
) -> dict[str, PseudoInfo]:
    """The pseudopotential of every element of ``structure`` (or of a list of symbols).

    ``overrides`` maps an element to a UPF path (read with :func:`pseudo_from_file`) or a
    :class:`PseudoInfo`; the other elements come from the registry (:func:`get_pseudo`).
    Overrides for elements the structure lacks are ignored. ``ValueError`` if an override is
    for another element, if two elements would share a file name in the run's pseudo folder,
    or if the files mix exchange-correlation functionals (pw.x refuses that).

    Examples
    --------
    >>> infos = resolve_pseudos(["Si", "C"])
    >>> infos["Si"].filename, infos["Si"].origin
    ('Si.pbe-rrkj.UPF', 'registry')
    """
    elements = structure_elements(structure) if hasattr(structure, "sites") else list(dict.fromkeys(structure))
    overrides = dict(overrides or {})
    out: dict[str, PseudoInfo] = {}
    for el in elements:
        given = overrides.get(el)
        if given is None:
            out[el] = get_pseudo(el)
        elif isinstance(given, PseudoInfo):
            if given.element != el:
                raise ValueError(f"override for {el!r} is a pseudopotential for {given.element!r}")
            out[el] = given
        else:
            path = Path(given).expanduser()
            stat = path.stat() if path.is_file() else None
            out[el] = (_pseudo_from_file_cached(str(path.resolve()), el, stat.st_mtime_ns, stat.st_size)
                       if stat else pseudo_from_file(path, el))
    names: dict[str, str] = {}
    for el, info in out.items():
        if info.filename in names:
            raise ValueError(f"{names[info.filename]} and {el} would both use the file name "
                             f"{info.filename!r} in the run's pseudo folder")
        names[info.filename] = el
    functionals = {" ".join(("PBE" if is_pbe(i.functional) else i.functional).split()).upper()
                   for i in out.values()}
    if len(functionals) > 1:
        detail = ", ".join(f"{el}: {i.functional}" for el, i in out.items())
        raise ValueError(f"the pseudopotentials mix exchange-correlation functionals ({detail})")
    return out


def pseudo_record(pseudos: Mapping[str, PseudoInfo]) -> dict[str, dict]:
    """What a record says of the files a run used: element -> filename, source, md5, kind,
    z_valence, origin."""
    return {el: {"filename": i.filename, "source": str(i.source), "md5": i.md5, "kind": i.kind,
                 "z_valence": i.z_valence, "origin": i.origin} for el, i in sorted(pseudos.items())}


def structure_elements(structure: Structure) -> list[str]:
    """Element symbols of a structure in order of first appearance."""
    seen: dict[str, None] = {}
    for site in structure:
        seen.setdefault(site.specie.symbol, None)
    return list(seen)


def n_valence_electrons(structure: Structure, pseudos: Mapping[str, PseudoInfo] | None = None) -> float:
    """Valence electrons of a neutral structure (registry files, or ``pseudos`` per element)."""
    pseudos = pseudos or {}
    return float(sum((pseudos.get(el) or get_pseudo(el)).z_valence
                     for el in (site.specie.symbol for site in structure)))


def check_structure(structure: Structure, pseudopotentials: Mapping[str, object] | None = None) -> None:
    """Raise ``ValueError`` for a structure pw.x cannot run with the registry.

    Checks: :func:`mlcharge_workflows.validation.validate_structure` (non-finite numbers,
    empty or degenerate cell, disorder, atoms closer than :data:`MIN_DISTANCE` Å, periodic
    images included), then every element in the registry (the message lists the supported
    ones) or given a file in ``pseudopotentials`` (element -> UPF path).
    """
    validate_structure(structure)
    known = set(supported_elements()) | set(pseudopotentials or {})  # a user file covers its element
    unknown = sorted({s.specie.symbol for s in structure} - known)
    if unknown:
        raise ValueError(
            f"unsupported element(s) {', '.join(unknown)}; "
            f"supported elements: {', '.join(supported_elements())}"
        )
    if len(structure_elements(structure)) > MAX_SPECIES:
        raise ValueError(
            f"structure has {len(structure_elements(structure))} elements; pw.x 6.7 accepts at "
            f"most {MAX_SPECIES} species per run (ntypx)"
        )


def stage_pseudos(elements: list[str], folder: str | Path,
                  pseudos: Mapping[str, PseudoInfo] | None = None) -> Path:
    """Copy the UPF files of ``elements`` into ``folder`` (a run's ``pseudo/``).

    ``pseudos`` (element -> :class:`PseudoInfo`, e.g. from :func:`resolve_pseudos`) replaces
    the registry's file for the elements it names.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pseudos = pseudos or {}
    for el in elements:
        info = pseudos.get(el) or get_pseudo(el)
        dest = folder / info.filename
        if not dest.exists() or (info.md5 and _md5(dest) != info.md5):
            shutil.copyfile(info.source, dest)
    return folder
