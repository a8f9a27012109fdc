"""QE's G-vector order (``ggen``) and dense FFT grid, reproduced with pw.x's arithmetic.

pw.x 6.7 ignores the Miller indices of a ``charge-density.dat`` it reads, so coefficients
must be written in exactly this order. The cell is taken as pw.x sees ``CELL_PARAMETERS
angstrom``: ``at = rd_ht / bohr_radius_angs``, ``alat = |a1|``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from mlcharge_workflows.units import BOHR_TO_ANGSTROM

if TYPE_CHECKING:
    from pymatgen.core import Structure

EPS8 = 1.0e-8
#: Bohr radius exactly as pw.x 6.7 uses it (CODATA 2018); kept under this name for the QE modules.
QE_BOHR_TO_ANGSTROM = BOHR_TO_ANGSTROM
#: e/bohr³ -> e/Å³ with that Bohr radius.
QE_PER_BOHR3_TO_PER_ANGSTROM3 = 1.0 / QE_BOHR_TO_ANGSTROM**3


def _qe_cell(lattice_matrix_angstrom: np.ndarray) -> tuple[np.ndarray, float]:
    """QE's ``at`` (columns, alat units) and ``alat`` (bohr) for CELL_PARAMETERS angstrom."""
    rd_ht = np.asarray(lattice_matrix_angstrom, dtype=float).reshape(3, 3)
    at = rd_ht.T * (1.0 / QE_BOHR_TO_ANGSTROM)  # cell_base_init: units = 1/bohr_radius_angs
    alat = float(np.sqrt(at[0, 0] ** 2 + at[1, 0] ** 2 + at[2, 0] ** 2))
    return at / alat, alat


def _recips(at: np.ndarray) -> np.ndarray:
    """QE's ``recips``: reciprocal vectors (columns, 2π/alat) with QE's operation order."""
    a1, a2, a3 = at[:, 0], at[:, 1], at[:, 2]
    den = 0.0
    for perm, s in (((0, 1, 2), 1.0), ((1, 2, 0), 1.0), ((2, 0, 1), 1.0),
                    ((1, 0, 2), -1.0), ((0, 2, 1), -1.0), ((2, 1, 0), -1.0)):
        i, j, k = perm
        den = den + s * a1[i] * a2[j] * a3[k]
    bg = np.empty((3, 3))
    for ipol, (j, k) in enumerate(((1, 2), (2, 0), (0, 1))):
        bg[ipol, 0] = (a2[j] * a3[k] - a2[k] * a3[j]) / den
        bg[ipol, 1] = (a3[j] * a1[k] - a3[k] * a1[j]) / den
        bg[ipol, 2] = (a1[j] * a2[k] - a1[k] * a2[j]) / den
    return bg


def _sphere(lattice: np.ndarray, ecutrho_ry: float, gamma_only: bool):
    """Miller indices inside QE's density sphere in generation order, with QE's |G|² (tpiba²)."""
    if not ecutrho_ry > 0:
        raise ValueError(f"ecutrho must be positive, got {ecutrho_ry} Ry")
    at, alat = _qe_cell(lattice)
    bg = _recips(at)
    gcutm = ecutrho_ry / (2.0 * np.pi / alat) ** 2
    nmax = [int(np.sqrt(gcutm) * np.linalg.norm(at[:, i])) + 2 for i in range(3)]
    ii, jj, kk = np.meshgrid(*(np.arange(-n, n + 1) for n in nmax), indexing="ij")
    ii, jj, kk = ii.ravel(), jj.ravel(), kk.ravel()
    if gamma_only:
        keep = (ii > 0) | ((ii == 0) & (jj > 0)) | ((ii == 0) & (jj == 0) & (kk >= 0))
        ii, jj, kk = ii[keep], jj[keep], kk[keep]
    # ggen: tx = i*bg1; ty = tx + j*bg2; t = ty + k*bg3; tt = t1**2 + t2**2 + t3**2
    tx = ii[:, None] * bg[:, 0][None, :]
    ty = tx + jj[:, None] * bg[:, 1][None, :]
    t = ty + kk[:, None] * bg[:, 2][None, :]
    tt = t[:, 0] ** 2 + t[:, 1] ** 2 + t[:, 2] ** 2
    sel = tt <= gcutm
    return np.stack([ii[sel], jj[sel], kk[sel]], axis=1), tt[sel], bg, alat


def _hpsort_eps_order(values: np.ndarray, eps: float = EPS8) -> np.ndarray:
    """Order of QE's ``hpsort_eps``: ascending, values within ``eps`` tie, ties by index."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    group = np.concatenate([[0], np.cumsum(np.diff(v) >= eps)])
    return order[np.lexsort((order, group))]


def qe_gvector_order(
    lattice_matrix_angstrom: np.ndarray, ecutrho_ry: float, gamma_only: bool = False
) -> np.ndarray:
    """Miller indices ``(N, 3)`` of the density G sphere in pw.x's global order.

    Reproduces ``ggen`` for a cell given as ``CELL_PARAMETERS angstrom`` (alat = |a1|). The
    cell must be the very floats pw.x parses (write it with ``repr`` precision): a cell
    rounded to 1e-6 Å can reorder nearly degenerate shells.
    """
    lattice = np.ascontiguousarray(lattice_matrix_angstrom, dtype=float).reshape(3, 3)
    return _cached_order(lattice.tobytes(), float(ecutrho_ry), bool(gamma_only)).copy()


def qe_gvector_order_is_ambiguous(
    lattice_matrix_angstrom: np.ndarray, ecutrho_ry: float, gamma_only: bool = False,
    band: tuple[float, float] = (0.5, 2.0),
) -> bool:
    """Whether :func:`qe_gvector_order` may differ from pw.x's order for this cell.

    ``hpsort_eps`` ties |G|² values closer than 1e-8 (tpiba²). Two shells whose |G|² differ
    by about that much (between ``band[0]`` and ``band[1]`` times 1e-8) are tied or not
    depending on the last bits of the arithmetic, which differ between numpy and pw.x.
    This happens when a lattice is special up to the decimals written in the input (e.g. a
    c/a of 1/√2 rounded to 10 digits: 74 such pairs on a 3-atom tetragonal cell whose
    computed order differed from pw.x's at 6,212 of 23,393 G vectors); generic cells have
    none. Callers then take pw.x's own order from a dry run.
    """
    lattice = np.ascontiguousarray(lattice_matrix_angstrom, dtype=float).reshape(3, 3)
    _, g2 = _cached_sphere(lattice.tobytes(), float(ecutrho_ry), bool(gamma_only))
    gaps = np.diff(np.sort(g2))
    return bool(np.any((gaps > band[0] * EPS8) & (gaps < band[1] * EPS8)))


@lru_cache(maxsize=8)
def _cached_sphere(lattice_bytes: bytes, ecutrho_ry: float, gamma_only: bool):
    """Miller indices and |G|² (zeroed below 1e-8) of a cell's sphere, built once per cell."""
    lattice = np.frombuffer(lattice_bytes, dtype=float).reshape(3, 3)
    mill, tt, _, _ = _sphere(lattice, ecutrho_ry, gamma_only)
    return mill, np.where(tt > EPS8, tt, 0.0)


@lru_cache(maxsize=8)
def _cached_order(lattice_bytes: bytes, ecutrho_ry: float, gamma_only: bool) -> np.ndarray:
    mill, g2 = _cached_sphere(lattice_bytes, ecutrho_ry, gamma_only)
    return mill[_hpsort_eps_order(g2)]


def _good_fft_order(n: int, factor: int = 1) -> int:
    """Smallest ``m >= n`` with only the prime factors 2, 3, 5 (QE's FFTW rule), divisible by
    ``factor``."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1 and n % factor == 0:
            return n
        n += 1


def fft_grid_for_miller(
    mill: np.ndarray, fft_fact: tuple[int, int, int] = (1, 1, 1)
) -> tuple[int, int, int]:
    """QE's FFT grid for a G sphere: ``good_fft_order(2 * max|m_i| + 1, fft_fact_i)``."""
    nb = np.abs(np.asarray(mill)).max(axis=0)
    return tuple(  # type: ignore[return-value]
        _good_fft_order(2 * int(n) + 1, int(f)) for n, f in zip(nb, fft_fact)
    )


def qe_fft_fact(structure: Structure, symprec: float = 1e-4) -> tuple[int, int, int]:
    """Divisors pw.x imposes on the FFT grid so fractional translations fit it.

    Follows ``sgam_at``: a translation component ``t`` (reduced to (-1/2, 1/2]) counts when
    ``1/|t|`` is 2, 3, 4 or 6; ``fft_fact_i`` is the least common multiple over symmetry
    operations. Magnetisation, ``nosym`` or k-points can make pw.x use fewer operations.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    ops = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations()
    fact = [1, 1, 1]
    for op in ops:
        t = op.translation_vector - np.round(op.translation_vector)
        nfrac = [0, 0, 0]
        for i in range(3):
            if abs(t[i]) > 1e-5:
                n = int(round(1.0 / abs(t[i])))
                if n not in (2, 3, 4, 6) or abs(1.0 / abs(t[i]) - n) > 1e-4:
                    break
                nfrac[i] = n
        else:
            fact = [int(np.lcm(f, n)) if n else f for f, n in zip(fact, nfrac)]
    return tuple(fact)  # type: ignore[return-value]


def qe_fft_grid(
    lattice_matrix_angstrom: np.ndarray,
    ecutrho_ry: float,
    fft_fact: tuple[int, int, int] = (1, 1, 1),
) -> tuple[int, int, int]:
    """pw.x's dense FFT grid ``(nr1, nr2, nr3)`` for a cell and ``ecutrho``.

    Symmetry with fractional translations makes pw.x round up to multiples of ``fft_fact``
    (see :func:`qe_fft_fact`); ``nr1, nr2, nr3`` in ``&SYSTEM`` force a grid.
    """
    mill, tt, _, alat = _sphere(np.asarray(lattice_matrix_angstrom), ecutrho_ry, False)
    gcutm = ecutrho_ry / (2.0 * np.pi / alat) ** 2
    return fft_grid_for_miller(mill[tt < gcutm], fft_fact)


def qe_reciprocal_bohr(lattice_matrix_angstrom: np.ndarray) -> np.ndarray:
    """Reciprocal vectors (rows, bohr⁻¹, 2π included) as pw.x writes them."""
    at, alat = _qe_cell(np.asarray(lattice_matrix_angstrom))
    return _recips(at).T * (2.0 * np.pi / alat)
