"""Superposition of atomic densities (SAD) from the ``PP_RHOATOM`` of UPF pseudopotentials.

This is pw.x's atomic starting density (``atomic_rho_g``): for each species the radial
transform ``f(q) = ∫ rho_atom(r) sin(qr)/(qr) dr`` (``rho_atom = 4πr²ρ``, Simpson's rule on the
UPF mesh cut at 10 bohr), summed with the structure factor and divided by the cell volume.
The transform is tabulated once per pseudopotential file and interpolated on ``|G|``, so a
grid of a million points costs well under a second.

Coefficients use the convention of :mod:`mlcharge_workflows.density.grid` (e/Å³).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlcharge_workflows.density.grid import DensityGrid, fft_miller
from mlcharge_workflows.density.qe_gvectors import QE_BOHR_TO_ANGSTROM as BOHR_TO_ANGSTROM

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from scipy.interpolate import CubicSpline

#: pw.x integrates atomic densities to this radius (bohr), ``read_pseudo.f90``.
RCUT_BOHR = 10.0

#: Starting moment per species as a fraction of its valence charge (pw.x's
#: ``starting_magnetization``, -1..1): the one default of the QE protocol and the model.
DEFAULT_STARTING_MAGNETIZATION: dict[str, float] = {"Fe": 0.4, "Co": 0.35, "Ni": 0.3}
#: Spacing (bohr⁻¹) of the tabulated radial transform.
DQ_BOHR = 0.002


@dataclass(frozen=True)
class UPFAtomicDensity:
    """Atomic valence density of a UPF file.

    Attributes
    ----------
    element, z_valence
        Element symbol and valence charge.
    r, rab
        Radial mesh and its integration weights ``dr/di`` (bohr).
    rho_atom
        ``4π r² ρ(r)`` (e/bohr), integrating to about ``z_valence``.
    """

    element: str
    z_valence: float
    r: np.ndarray
    rab: np.ndarray
    rho_atom: np.ndarray

    @property
    def msh(self) -> int:
        """Number of mesh points pw.x integrates over (first r > 10 bohr, made odd)."""
        beyond = np.flatnonzero(self.r > RCUT_BOHR)
        n = int(beyond[0]) + 1 if beyond.size else len(self.r)
        return 2 * ((n + 1) // 2) - 1

    def radial_transform(self, q_bohr: np.ndarray) -> np.ndarray:
        """``∫ rho_atom(r) sin(qr)/(qr) dr`` (electrons) at ``q`` (bohr⁻¹), QE's Simpson rule."""
        n = self.msh
        r, f = self.r[:n], self.rho_atom[:n] * self.rab[:n]
        w = np.ones(n)
        w[1 : n - 1 : 2], w[2 : n - 1 : 2] = 4.0, 2.0
        fw = f * w / 3.0
        q = np.atleast_1d(np.asarray(q_bohr, dtype=float))
        out = np.empty(q.shape)
        for start in range(0, q.size, 512):
            qq = q.ravel()[start : start + 512, None]
            qr = qq * r[None, :]
            with np.errstate(invalid="ignore", divide="ignore"):
                sinc = np.where(qr > 1e-8, np.sin(qr) / qr, 1.0)
            sinc[:, r < 1e-8] = 1.0
            out.ravel()[start : start + 512] = sinc @ fw
        return out


def _upf_block(text: str, tag: str, path: Path) -> np.ndarray:
    match = re.search(rf"<{tag}(?=[\s>])[^>]*>(.*?)</{tag}\s*>", text, re.DOTALL)
    if match is None:
        raise ValueError(f"{path}: no <{tag}> section: not a usable UPF file")
    try:
        return np.array(match.group(1).replace("D", "E").split(), dtype=float)
    except ValueError:
        raise ValueError(f"{path}: corrupt numbers in <{tag}>") from None


def read_upf_atomic_density(path: str | Path) -> UPFAtomicDensity:
    """Read the radial mesh, ``PP_RHOATOM`` and valence of a UPF (v1 or v2) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudopotential not found: {path}")
    text = path.read_text(errors="replace")
    header = re.search(r"<PP_HEADER(.*?)(?:/>|</PP_HEADER>)", text, re.DOTALL)
    if header is None:
        raise ValueError(f"{path}: no <PP_HEADER>: not a UPF file")
    head = header.group(1)
    zm = re.search(r'z_valence\s*=\s*"\s*([^"]+)"', head) or re.search(
        r"([-+0-9.EeDd]+)\s+Z valence", head
    )
    em = re.search(r'element\s*=\s*"\s*([A-Za-z]+)\s*"', head) or re.search(
        r"^\s*([A-Za-z]{1,2})\s+Element", head, re.MULTILINE
    )
    if zm is None or em is None:
        raise ValueError(f"{path}: PP_HEADER lacks element or z_valence")
    r = _upf_block(text, "PP_R", path)
    rab = _upf_block(text, "PP_RAB", path)
    rho = _upf_block(text, "PP_RHOATOM", path)
    n = min(len(r), len(rab), len(rho))
    if n < 3 or len(rho) != len(r):
        raise ValueError(f"{path}: PP_RHOATOM has {len(rho)} points, mesh has {len(r)}")
    return UPFAtomicDensity(
        em.group(1).capitalize(), float(zm.group(1).replace("D", "E")), r[:n], rab[:n], rho[:n]
    )


_TABLES: dict[tuple[str, float], tuple[UPFAtomicDensity, CubicSpline]] = {}


def _species_table(path: Path, qmax_bohr: float) -> tuple[UPFAtomicDensity, CubicSpline]:
    """Tabulated radial transform of a UPF file, cached by content (copies share a table)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudopotential not found: {path}")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    qmax = float(np.ceil(max(qmax_bohr, 1.0) / 5.0) * 5.0)  # a few table sizes, not one per cell
    key = (digest, qmax)
    if key not in _TABLES:
        from scipy.interpolate import CubicSpline  # slow import: only when a table is built

        if len(_TABLES) > 64:
            _TABLES.clear()
        atom = read_upf_atomic_density(path)
        q = np.arange(0.0, qmax + 4 * DQ_BOHR, DQ_BOHR)
        _TABLES[key] = (atom, CubicSpline(q, atom.radial_transform(q)))
    return _TABLES[key]


def _check_pseudos(structure: Structure, pseudos: dict[str, Path]) -> dict[str, Path]:
    species = sorted({s.species_string for s in structure})
    missing = [s for s in species if s not in pseudos]
    if missing:
        raise ValueError(f"no pseudopotential given for {missing}; have {sorted(pseudos)}")
    return {s: Path(pseudos[s]) for s in species}


def _structure_factor(structure: Structure, mill: np.ndarray, species: str) -> np.ndarray:
    """``sum_a exp(-2πi m·f_a)`` over the atoms of ``species``, separable per axis."""
    frac = np.array([s.frac_coords for s in structure if s.species_string == species])
    lo, hi = mill.min(axis=0), mill.max(axis=0)
    out = np.zeros(len(mill), dtype=complex)
    idx = [mill[:, ax] - lo[ax] for ax in range(3)]
    for f in frac:
        ph = [np.exp(-2j * np.pi * np.arange(lo[ax], hi[ax] + 1) * f[ax]) for ax in range(3)]
        out += ph[0][idx[0]] * ph[1][idx[1]] * ph[2][idx[2]]
    return out


def sad_coefficients(
    structure: Structure,
    mill: np.ndarray,
    pseudos: dict[str, Path],
    magnetization: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """SAD Fourier coefficients (e/Å³) at Miller indices ``mill`` (N, 3).

    ``pseudos`` maps species (``site.species_string``) to UPF files. ``magnetization`` maps
    species to pw.x's ``starting_magnetization`` (``m = fraction * rho_atom``, -1..1); with it
    the second result is the magnetisation coefficients, else None. Not normalised: the
    ``G = 0`` term is the sum of the integrated ``PP_RHOATOM`` over the cell volume.
    """
    paths = _check_pseudos(structure, pseudos)
    mill = np.asarray(mill, dtype=np.int64).reshape(-1, 3)
    gnorm = np.linalg.norm(mill @ structure.lattice.reciprocal_lattice.matrix, axis=1)
    q = gnorm * BOHR_TO_ANGSTROM  # Å⁻¹ -> bohr⁻¹
    volume = structure.lattice.volume
    total = np.zeros(len(mill), dtype=complex)
    mag = None if magnetization is None else np.zeros(len(mill), dtype=complex)
    for sp, path in paths.items():
        _, spline = _species_table(path, float(q.max()) if q.size else 0.0)
        term = spline(q) * _structure_factor(structure, mill, sp) / volume
        total += term
        if mag is not None:
            frac = float(magnetization.get(sp, 0.0))
            if not -1.0 <= frac <= 1.0:
                raise ValueError(f"starting magnetization of {sp} must be in [-1, 1], got {frac}")
            mag += frac * term
    return total, mag


def superposition_density(
    structure: Structure,
    shape: tuple[int, int, int],
    pseudos: dict[str, Path],
    magnetization: dict[str, float] | None = None,
    normalize: bool = True,
) -> DensityGrid:
    """SAD density on a grid of ``shape`` (Nyquist planes dropped).

    ``normalize`` scales total (and magnetisation, as pw.x does) so the total integrates
    exactly to the sum of the pseudopotentials' ``z_valence``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"grid shape must be three positive integers, got {shape}")
    mill = fft_miller(shape).reshape(-1, 3)
    keep = np.all(np.abs(mill) <= (np.array(shape) - 1) // 2, axis=1)
    c_tot = np.zeros(len(mill), dtype=complex)
    c_mag = None if magnetization is None else np.zeros(len(mill), dtype=complex)
    tot, mag = sad_coefficients(structure, mill[keep], pseudos, magnetization)
    c_tot[keep] = tot
    if c_mag is not None:
        c_mag[keep] = mag
    paths = _check_pseudos(structure, pseudos)
    zval = {sp: _species_table(p, 0.0)[0].z_valence for sp, p in paths.items()}
    nelec = sum(zval[s.species_string] for s in structure)
    scale = nelec / (c_tot[0].real * structure.lattice.volume) if normalize else 1.0
    n = int(np.prod(shape))
    total = np.fft.ifftn(c_tot.reshape(shape) * scale).real * n
    m = None if c_mag is None else np.fft.ifftn(c_mag.reshape(shape) * scale).real * n
    meta = {
        "source_format": "sad",
        "pseudopotentials": {sp: str(p) for sp, p in paths.items()},
        "starting_magnetization": dict(magnetization or {}),
        "nelec": nelec,
    }
    return DensityGrid(structure, total, m, metadata=meta)


__all__ = [
    "UPFAtomicDensity",
    "read_upf_atomic_density",
    "sad_coefficients",
    "superposition_density",
]
