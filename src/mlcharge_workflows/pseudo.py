"""Pseudopotential registry: element -> Debian UPF file, valence, kind and suggested cutoffs.

Every file is a PBE norm-conserving (NC) or ultrasoft (US) potential shipped by Debian's
``quantum-espresso-data`` (``settings.pseudo_dir``) or, for H and Cu, gzipped in the
examples of ``quantum-espresso``. Debian has no scalar-relativistic PBE file for Co (only a
fully relativistic US one, which pw.x 6.7 refuses without spin-orbit, and a PBEsol one), so
Co is generated once with QE's own ``ld1.x`` from the parameters of that fully relativistic
file, made scalar-relativistic, and cached (:data:`CACHE_DIR`). PAW files are avoided on
purpose: a PAW start needs one-centre occupancies (becsum) consistent with the density,
which a predicted density does not carry (see docs/qe-protocol.md).

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
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlcharge_workflows.settings import MLChargeSettings
from mlcharge_workflows.validation import MIN_DISTANCE, validate_structure  # noqa: F401

if TYPE_CHECKING:
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
LD1_INPUTS = {
    "Co.pbe-nd-rrkjus_ld1.UPF": """ &input
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
""",
}

PseudoKind = Literal["NC", "US", "PAW"]

# element: (file name, where: None = pseudo_dir, "ld1" = generated (LD1_INPUTS), else a folder
#           relative to QE_EXAMPLES_DIR holding <file name>.gz; ecutwfc (Ry), ecutrho (Ry))
# Cutoffs are moderate values for fast comparisons (not converged to 1 meV/atom); the
# protocol takes the maximum over the species of a structure.
_REGISTRY: dict[str, tuple[str, str | None, float, float]] = {
    "H": ("H_HSCV_PBE-1.0.UPF", "CPV/EXX-wf-example", 50.0, 200.0),
    "B": ("B.pbe-n-rrkjus_psl.1.0.0.UPF", None, 35.0, 280.0),
    "C": ("C.pbe-rrkjus.UPF", None, 30.0, 240.0),
    "N": ("N.pbe-n-rrkjus_psl.1.0.0.UPF", None, 40.0, 320.0),
    "O": ("O.pbe-rrkjus.UPF", None, 35.0, 280.0),
    "Si": ("Si.pbe-rrkj.UPF", None, 30.0, 120.0),
    "Fe": ("Fe.pbe-nd-rrkjus.UPF", None, 35.0, 350.0),
    "Co": ("Co.pbe-nd-rrkjus_ld1.UPF", "ld1", 35.0, 350.0),
    "Ni": ("Ni.pbe-nd-rrkjus.UPF", None, 35.0, 350.0),
    "Cu": ("Cu_US_PBE_3pj_lowE.UPF", "XSpectra/pseudo", 35.0, 350.0),
}


@dataclass(frozen=True)
class PseudoInfo:
    """One registry entry, with what was read from its UPF header."""

    element: str
    filename: str  # name in the run's pseudo folder
    source: Path  # a plain UPF file (gzipped originals are decompressed into the cache)
    kind: PseudoKind
    z_valence: float
    functional: str
    ecutwfc_ry: float
    ecutrho_ry: float


def _open_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", errors="replace") as fh:
            return fh.read()
    return path.read_text(errors="replace")


def read_upf_header(path: str | Path) -> dict:
    """Element, kind (NC/US/PAW), z_valence, functional and spin-orbit flag of a UPF v1/v2 file."""
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
        return {
            "element": attrs.get("element", "").strip(),
            "kind": kind,
            "z_valence": float(attrs["z_valence"].replace("D", "E").replace("d", "e")),
            "functional": " ".join(attrs.get("functional", "").split()),
            "has_so": attrs.get("has_so", "").strip().lower() in ("t", "true"),
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


def generate_pseudo(filename: str, folder: Path = CACHE_DIR) -> Path:
    """Generate ``filename`` (a key of :data:`LD1_INPUTS`) with ld1.x into ``folder``.

    Written atomically (temporary folder, then rename), so concurrent callers are safe.
    """
    if folder == CACHE_DIR:
        folder = _cache_folder()
    dest = folder / filename
    if dest.is_file():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        proc = subprocess.run(
            [_ld1_command()], input=LD1_INPUTS[filename], cwd=tmp, capture_output=True, text=True
        )
        made = Path(tmp) / filename
        if proc.returncode != 0 or not made.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise RuntimeError(f"ld1.x failed to generate {filename} (status {proc.returncode}):\n{tail}")
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


def supported_elements() -> list[str]:
    """Elements the registry has a pseudopotential for, in registry order."""
    return list(_REGISTRY)


@cache
def _get_pseudo(element: str, pseudo_dir: Path) -> PseudoInfo:
    filename, where, ecutwfc, ecutrho = _REGISTRY[element]
    source = _locate(filename, where, pseudo_dir)
    head = read_upf_header(source)
    if head["element"] != element:
        raise ValueError(f"{source} is for element {head['element']!r}, not {element!r}")
    return PseudoInfo(
        element=element,
        filename=filename,
        source=source,
        kind=head["kind"],
        z_valence=head["z_valence"],
        functional=head["functional"],
        ecutwfc_ry=ecutwfc,
        ecutrho_ry=ecutrho,
    )


def get_pseudo(element: str) -> PseudoInfo:
    """Registry entry of ``element``; ``ValueError`` listing the supported ones if unknown."""
    if element not in _REGISTRY:
        raise ValueError(
            f"element {element!r} has no pseudopotential in the registry; "
            f"supported elements: {', '.join(supported_elements())}"
        )
    return _get_pseudo(element, Path(MLChargeSettings().pseudo_dir))


def structure_elements(structure: Structure) -> list[str]:
    """Element symbols of a structure in order of first appearance."""
    seen: dict[str, None] = {}
    for site in structure:
        seen.setdefault(site.specie.symbol, None)
    return list(seen)


def n_valence_electrons(structure: Structure) -> float:
    """Number of valence electrons of a neutral structure with the registry's pseudopotentials."""
    return float(sum(get_pseudo(site.specie.symbol).z_valence for site in structure))


def check_structure(structure: Structure) -> None:
    """Raise ``ValueError`` for a structure pw.x cannot run with the registry.

    Checks: :func:`mlcharge_workflows.validation.validate_structure` (non-finite numbers,
    empty or degenerate cell, disorder, atoms closer than :data:`MIN_DISTANCE` Å, periodic
    images included), then every element in the registry (the message lists the supported
    ones).
    """
    validate_structure(structure)
    unknown = sorted({s.specie.symbol for s in structure} - set(_REGISTRY))
    if unknown:
        raise ValueError(
            f"unsupported element(s) {', '.join(unknown)}; "
            f"supported elements: {', '.join(supported_elements())}"
        )


def stage_pseudos(elements: list[str], folder: str | Path) -> Path:
    """Copy the UPF files of ``elements`` into ``folder`` (a run's ``pseudo/``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for el in elements:
        info = get_pseudo(el)
        dest = folder / info.filename
        if not dest.exists():
            shutil.copyfile(info.source, dest)
    return folder
