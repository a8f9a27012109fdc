"""The atomic pseudo charge density of a VASP POTCAR: what VASP superposes for ``ICHARG = 2``.

pymatgen's ``PotcarSingle`` reads the header keywords, not the tabulated data. A POTCAR
dataset holds, after its ``PSCTR`` header (layout from VASP's ``pseudo.F`` as public
POTCAR readers show it)::

     local part
       <PSGMAX>                        max |G| of the tables (Å⁻¹, 2π included)
       <NPSPTS values>                 local potential V(q)
     gradient corrections used for XC  (optional, then one integer)
     core charge-density (partial)     (optional, NPSPTS values)
     kinetic energy density (partial)  (optional, NPSPTS values)
     atomic pseudo charge-density
       <NPSPTS values>                 rho_atom(q) in electrons, q_i = (i-1) PSGMAX / NPSPTS
     <G_PARAM> <flag>
     Non local Part ...

VASP evaluates ``rho_atom(|G|)`` with a four-point cubic interpolation and sets it to
zero beyond ``PSGMAX - 3 PSGMAX/NPSPTS`` (``RHOATO`` in ``charge.F``);
:meth:`PotcarAtomicDensity.radial_transform` does the same. Each atom's magnetisation
for ``MAGMOM`` is that density times ``MAGMOM / ZVAL`` (``MRHOATO``), the convention of
:mod:`mlcharge_workflows.model.atomic`.

No POTCAR ships with this package (they are licensed); :func:`format_potcar_dataset`
writes a minimal dataset in this layout from known radial data, for tests and examples.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PotcarAtomicDensity",
    "format_potcar_dataset",
    "parse_potcar_atomic_density",
    "potcar_atomic_density",
    "potcar_superposition",
    "read_potcar_atomic_densities",
]

_LOCAL = re.compile(r"^\s*local part\s*$", re.MULTILINE | re.IGNORECASE)
_SECTION = re.compile(r"^\s*([A-Za-z].*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PotcarAtomicDensity:
    """Atomic pseudo charge density of one POTCAR dataset.

    Attributes
    ----------
    symbol
        POTCAR symbol (``"Fe_pv"``), from the title line.
    title
        First line of the dataset (``"PAW_PBE Fe_pv 02Aug2007"``).
    element
        Element symbol (the symbol before ``_``).
    z_valence
        ZVAL (second line of the dataset).
    psgmax
        Largest ``|G|`` of the tables (Å⁻¹).
    values
        ``(NPSPTS,)`` ``rho_atom(q_i)`` in electrons at ``q_i = i * psgmax / NPSPTS``.
    sha256
        Checksum of the dataset text (identifies the file without naming its contents).
    """

    symbol: str
    title: str
    element: str
    z_valence: float
    psgmax: float
    values: np.ndarray = field(repr=False)
    sha256: str = ""

    @property
    def q_max(self) -> float:
        """``|G|`` (Å⁻¹) beyond which VASP takes the atomic density as zero."""
        return self.psgmax - 3 * self.psgmax / len(self.values)

    def radial_transform(self, q: np.ndarray) -> np.ndarray:
        """``rho_atom(q)`` (electrons) at ``q`` (Å⁻¹), VASP's four-point interpolation."""
        q = np.asarray(q, dtype=float)
        v = self.values
        n = len(v)
        argsc = n / self.psgmax
        out = np.zeros(q.shape)
        inside = (q > 0) & (q < self.q_max)
        arg = q[inside] * argsc + 1.0  # 1-based position, as in the Fortran
        naddr = np.maximum(arg.astype(np.int64), 2)
        rem = arg - naddr
        v1, v2, v3, v4 = (v[naddr - 2], v[naddr - 1], v[naddr], v[np.minimum(naddr + 1, n - 1)])
        t1 = (6 * v3 - 2 * v1 - 3 * v2 - v4) / 6.0
        t2 = (v1 + v3 - 2 * v2) / 2.0
        t3 = (v4 - v1 + 3 * (v2 - v3)) / 6.0
        out[inside] = v2 + rem * (t1 + rem * (t2 + rem * t3))
        out[q == 0] = v[0]
        return out

    def identity(self) -> dict[str, Any]:
        """What a record or task document stores about this reference."""
        return {
            "kind": "POTCAR",
            "symbol": self.symbol,
            "title": self.title,
            "z_valence": self.z_valence,
            "sha256": self.sha256,
        }


def _numbers(tokens: list[str], start: int, count: int, what: str, name: str) -> np.ndarray:
    chunk = tokens[start : start + count]
    if len(chunk) < count:
        raise ValueError(f"{name}: {what} has {len(chunk)} values, expected {count}")
    try:
        return np.array([float(t.replace("D", "E")) for t in chunk])
    except ValueError:
        raise ValueError(f"{name}: corrupt number in {what}") from None


def parse_potcar_atomic_density(text: str, name: str = "POTCAR") -> PotcarAtomicDensity:
    """Read the atomic pseudo charge density of one POTCAR dataset (its full text).

    Raises ``ValueError`` naming ``name`` and the missing piece for anything else.
    """
    lines = text.strip("\n").splitlines()
    if len(lines) < 3:
        raise ValueError(f"{name}: not a POTCAR dataset (fewer than 3 lines)")
    title = lines[0].strip()
    parts = title.split()
    symbol = parts[1] if len(parts) > 1 else parts[0] if parts else ""
    element = symbol.split("_")[0].split(".")[0]
    if not re.fullmatch(r"[A-Z][a-z]?", element):
        raise ValueError(f"{name}: title line {title!r} names no element")
    try:
        z_valence = float(lines[1].split()[0])
    except (IndexError, ValueError):
        raise ValueError(f"{name}: second line {lines[1]!r} is not the valence (ZVAL)") from None
    local = _LOCAL.search(text)
    if local is None:
        raise ValueError(f"{name}: no 'local part' block: not a POTCAR dataset")
    body = text[local.end() :]
    head = re.search(r"^\s*atomic pseudo charge-density\s*$", body, re.MULTILINE | re.IGNORECASE)
    if head is None:
        raise ValueError(f"{name}: no 'atomic pseudo charge-density' block after 'local part'")
    # NPSPTS: the count of numbers of the local potential (1000 in VASP), read from the
    # file itself so any table size is taken as written
    local_tokens = []
    for line in body[: head.start()].splitlines():
        if re.search(r"[A-Za-z]{3}", line):  # next section title
            break
        local_tokens.extend(line.split())
    if len(local_tokens) < 6:
        raise ValueError(f"{name}: 'local part' block holds {len(local_tokens)} numbers")
    psgmax = float(local_tokens[0].replace("D", "E"))
    npspts = len(local_tokens) - 1
    rho_tokens = body[head.end() :].split()
    values = _numbers(rho_tokens, 0, npspts, "atomic pseudo charge-density", name)
    if not (np.isfinite(psgmax) and psgmax > 0):
        raise ValueError(f"{name}: PSGMAX {psgmax} is not a positive number")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: non-finite atomic pseudo charge density")
    if values[0] <= 0:
        raise ValueError(f"{name}: atomic pseudo charge density at G=0 is {values[0]}, not positive")
    digest = hashlib.sha256(text.encode()).hexdigest()
    return PotcarAtomicDensity(symbol, title, element, z_valence, psgmax, values, digest)


def read_potcar_atomic_densities(path: str | Path) -> list[PotcarAtomicDensity]:
    """Every dataset of a (possibly concatenated, possibly gzipped) POTCAR file, in order."""
    from monty.io import zopen

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"POTCAR not found: {path}")
    with zopen(str(path), "rt") as fh:
        text = fh.read()
    chunks = [c for c in re.split(r"^\s*End of Dataset\s*$", text, flags=re.MULTILINE) if c.strip()]
    if not chunks:
        raise ValueError(f"{path}: empty POTCAR")
    return [parse_potcar_atomic_density(c, f"{path} (dataset {i + 1})") for i, c in enumerate(chunks)]


def potcar_atomic_density(single: Any) -> PotcarAtomicDensity:
    """The atomic density of a pymatgen ``PotcarSingle`` (its raw text, ``.data``)."""
    data = getattr(single, "data", None)
    if not data:
        raise ValueError(f"POTCAR {getattr(single, 'symbol', single)!r} carries no data")
    atom = parse_potcar_atomic_density(data, f"POTCAR {getattr(single, 'symbol', '?')}")
    symbol = getattr(single, "symbol", None) or atom.symbol
    return PotcarAtomicDensity(
        symbol, atom.title, atom.element, atom.z_valence, atom.psgmax, atom.values, atom.sha256
    )


def potcar_superposition(
    structure: Any,
    shape: tuple[int, int, int],
    atoms: dict[str, PotcarAtomicDensity],
    magmoms: np.ndarray | None = None,
) -> Any:
    """VASP's ``ICHARG = 2`` start: the superposition of the POTCARs' atomic densities.

    ``atoms`` maps element to its POTCAR density; ``magmoms`` (μB per site, collinear)
    adds the magnetisation ``sum_a (MAGMOM_a / ZVAL_a) rho_a`` (VASP's ``MRHOATO``). The
    ``G = 0`` term is the valence count over the volume (VASP's ``SET_RHO0``); Nyquist
    planes are dropped. Returns a :class:`~mlcharge_workflows.density.grid.DensityGrid`.
    """
    from mlcharge_workflows.density.grid import DensityGrid, fft_miller
    from mlcharge_workflows.density.sad import _structure_factor

    shape = tuple(int(n) for n in shape)
    missing = sorted({s.specie.symbol for s in structure} - set(atoms))
    if missing:
        raise ValueError(f"no POTCAR density given for {missing}")
    mill = fft_miller(shape).reshape(-1, 3)
    keep = np.flatnonzero(np.all(np.abs(mill) <= (np.array(shape) - 1) // 2, axis=1))
    q = np.linalg.norm(mill[keep] @ structure.lattice.reciprocal_lattice.matrix, axis=1)
    volume = structure.lattice.volume
    symbols = [site.specie.symbol for site in structure]
    spin = magmoms is not None and np.any(np.asarray(magmoms, dtype=float) != 0)
    c_tot = np.zeros(len(mill), dtype=complex)
    c_mag = np.zeros(len(mill), dtype=complex) if spin else None
    for el in sorted(set(symbols)):
        form = atoms[el].radial_transform(q) / volume
        c_tot[keep] += form * _structure_factor(structure, mill[keep], el)
        if spin:
            for i in (i for i, s in enumerate(symbols) if s == el and magmoms[i] != 0):
                f = structure[i].frac_coords
                phase = np.exp(-2j * np.pi * (mill[keep] @ f))
                c_mag[keep] += form * phase * float(magmoms[i]) / atoms[el].z_valence
    nelec = float(sum(atoms[el].z_valence for el in symbols))
    zero = np.flatnonzero((mill == 0).all(axis=1))[0]
    c_tot[zero] = nelec / volume
    n = int(np.prod(shape))
    total = np.fft.ifftn(c_tot.reshape(shape)).real * n
    mag = None if c_mag is None else np.fft.ifftn(c_mag.reshape(shape)).real * n
    meta = {
        "source_format": "potcar-superposition",
        "pseudopotentials": {el: atoms[el].identity() for el in sorted(set(symbols))},
        "nelec": nelec,
    }
    return DensityGrid(structure, total, mag, metadata=meta)


def _block(values: np.ndarray) -> str:
    rows = [values[i : i + 5] for i in range(0, len(values), 5)]
    return "\n".join("".join(f"{x:16.8E}" for x in row) for row in rows)


def format_potcar_dataset(
    symbol: str,
    z_valence: float,
    rho_q: np.ndarray,
    psgmax: float,
    functional_title: str = "PAW_PBE",
    date: str = "01Jan2000",
    lexch: str = "PE",
) -> str:
    """A minimal POTCAR dataset in VASP's layout with the atomic density ``rho_q``.

    For tests and examples only: the local potential, core density and projectors are
    zeros, so VASP could not run with it. ``rho_q`` is ``rho_atom`` (electrons) on
    ``q_i = i * psgmax / len(rho_q)``. pymatgen's ``PotcarSingle`` reads the header
    (it warns that the checksum is unknown).
    """
    rho_q = np.asarray(rho_q, dtype=float)
    n = len(rho_q)
    title = f"{functional_title} {symbol} {date}"
    element = symbol.split("_")[0]
    zeros = np.zeros(n)
    return "\n".join(
        [
            f"  {title}",
            f"   {z_valence:.13f}",
            " parameters from PSCTR are:",
            f"   VRHFIN ={element}: synthetic",
            f"   LEXCH  = {lexch}",
            "   EATOM  =     0.0000 eV,    0.0000 Ry",
            "",
            f"   TITEL  = {title}",
            "   LULTRA =        F    use ultrasoft PP ?",
            "   IUNSCR =        1    unscreen: 0-lin 1-nonlin 2-no",
            "   RPACOR =    0.000    partial core radius",
            f"   POMASS =   1.000; ZVAL   =   {z_valence:.3f}    mass and valenz",
            "   RCORE  =    2.000    outmost cutoff radius",
            "   RWIGS  =    2.000; RWIGS  =    1.000    wigner-seitz radius (au A)",
            "   ENMAX  =  400.000; ENMIN  =  300.000 eV",
            "   LCOR   =        T    correct aug charges",
            "   LPAW   =        T    paw PP",
            "   EAUG   =  500.000",
            "   RMAX   =    2.500    core radius for proj-oper",
            "   RAUG   =    1.300    factor for augmentation sphere",
            "   RDEP   =    2.000    radius for radial grids",
            "   RDEPT  =    1.800    core radius for aug-charge",
            "   END of PSCTR-controll parameters",
            " local part",
            f"   {psgmax:.13f}",
            _block(zeros),
            " gradient corrections used for XC",
            "         8",
            " core charge-density (partial)",
            _block(zeros),
            " atomic pseudo charge-density",
            _block(rho_q),
            f"   {0.0:.13f}      T",
            " Non local Part",
            " End of Dataset",
            "",
        ]
    )
