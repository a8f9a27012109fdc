"""Atom-centred Gaussian-type orbitals, evaluated analytically in reciprocal space.

An orbital of angular momentum ``l`` and exponent ``alpha`` (Å⁻²) centred at ``R`` is
defined by its Fourier transform (``G`` in Å⁻¹, 2π included)::

    phi_hat(G) = (-i)^l  Y_lm(G/|G|)  (|G| / (2 sqrt(alpha)))^l  exp(-|G|² / (4 alpha))  exp(-i G·R)

which is the transform of ``r^l Y_lm(r̂) exp(-alpha r²)`` up to a constant. ``Y_lm`` are
e3nn's real spherical harmonics ("component" normalisation, ``Y_00 = 1``), so an s
orbital with coefficient 1 holds exactly one electron, and coefficients that transform
like e3nn irreps ``l`` with parity ``(-1)^l`` give a rotation-invariant density.

The periodic density of a cell of volume ``V`` then has the coefficients
(convention of :mod:`mlcharge_workflows.density.grid`)::

    c(m) = (1/V) sum_atoms sum_orbitals C_a,o phi_hat_o(G_m)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from e3nn import o3

#: Below this value of the radial factor an orbital is not evaluated (relative to its peak).
RADIAL_TOL = 1e-7


@dataclass(frozen=True)
class OrbitalLayout:
    """How the flat coefficient vector of one atom maps onto orbitals.

    Parameters
    ----------
    muls
        Number of radial functions (exponents) per angular momentum, ``muls[l]``.
    """

    muls: tuple[int, ...]

    @property
    def irreps(self) -> o3.Irreps:
        """e3nn irreps of the coefficient vector: ``muls[l] x l`` with parity ``(-1)^l``."""
        return o3.Irreps([(m, (l, (-1) ** l)) for l, m in enumerate(self.muls) if m > 0])

    @property
    def lmax(self) -> int:
        return max(l for l, m in enumerate(self.muls) if m > 0)

    @property
    def dim(self) -> int:
        return sum(m * (2 * l + 1) for l, m in enumerate(self.muls))

    @property
    def n_radial(self) -> int:
        """Number of (l, exponent) radial functions."""
        return sum(self.muls)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per coefficient column: its radial function index, ``l`` and spherical-harmonic column.

        The spherical-harmonic column indexes e3nn's concatenated ``Y_0 ... Y_lmax``
        (``l*l + l + m``).
        """
        rad, ls, ys = [], [], []
        r0 = 0
        for l, mul in enumerate(self.muls):
            for u in range(mul):
                for m in range(2 * l + 1):
                    rad.append(r0 + u)
                    ls.append(l)
                    ys.append(l * l + m)
            r0 += mul
        return np.array(rad), np.array(ls), np.array(ys)

    def radial_l(self) -> np.ndarray:
        """``l`` of each radial function, shape ``(n_radial,)``."""
        return np.concatenate([np.full(m, l) for l, m in enumerate(self.muls)]).astype(int)


def even_tempered(n: int, alpha_min: float, alpha_max: float) -> np.ndarray:
    """``n`` exponents in geometric progression from ``alpha_min`` to ``alpha_max`` (Å⁻²)."""
    if n <= 0:
        return np.zeros(0)
    if n == 1:
        return np.array([math.sqrt(alpha_min * alpha_max)])
    return np.geomspace(alpha_min, alpha_max, n)


def q_cutoff(alpha_max: float, lmax: int, tol: float = RADIAL_TOL) -> float:
    """|G| (Å⁻¹) beyond which every radial factor with exponent ≤ ``alpha_max`` is below ``tol``."""
    # (x)^l exp(-x²) with x = q / (2 sqrt(alpha)); find x where it falls below tol, x > sqrt(l/2)
    x = max(1.0, math.sqrt(lmax / 2.0))
    while x**lmax * math.exp(-(x**2)) > tol:
        x += 0.05
    return 2.0 * math.sqrt(alpha_max) * x


class ReciprocalGeometry:
    """The G-vector quantities of one cell that do not depend on the model parameters.

    Parameters
    ----------
    lattice
        ``(3, 3)`` lattice vectors (rows, Å).
    frac
        ``(n_atoms, 3)`` fractional coordinates.
    mill
        ``(N, 3)`` integer Miller indices.
    lmax
        Highest angular momentum of spherical harmonics to tabulate.
    dtype
        torch floating dtype.
    """

    def __init__(
        self,
        lattice: np.ndarray,
        frac: np.ndarray,
        mill: np.ndarray,
        lmax: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        lattice = np.asarray(lattice, dtype=float)
        mill = np.asarray(mill, dtype=np.int64)
        self.volume = float(abs(np.linalg.det(lattice)))
        recip = 2.0 * np.pi * np.linalg.inv(lattice).T
        g = mill @ recip
        q = np.linalg.norm(g, axis=1)
        self.mill = mill
        self.q_np = q
        self.q = torch.as_tensor(q, dtype=dtype, device=device)
        direction = np.where(q[:, None] > 1e-12, g / np.maximum(q, 1e-300)[:, None], [0.0, 0.0, 1.0])
        self.ylm = o3.spherical_harmonics(
            list(range(lmax + 1)),
            torch.as_tensor(direction, dtype=dtype, device=device),
            normalize=False,
            normalization="component",
        )
        self.frac = np.asarray(frac, dtype=float)
        self.dtype = dtype
        self.device = torch.device(device)
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.mill)

    def phases(self, atoms: np.ndarray, rows: np.ndarray, cache_key: object = None) -> torch.Tensor:
        """``exp(-2πi m·f_a)`` for G rows ``rows`` and atoms ``atoms``, shape ``(len(rows), len(atoms))``.

        Built from one 1D table per axis (two complex products per element instead of an
        exponential). With ``cache_key`` the result is kept for later calls (training).
        """
        if cache_key is not None and cache_key in self._cache:
            return self._cache[cache_key]
        frac = self.frac[atoms]
        mill = self.mill[rows]
        out = None
        for ax in range(3):
            lo, hi = int(mill[:, ax].min()), int(mill[:, ax].max())
            table = np.exp(-2j * np.pi * np.outer(np.arange(lo, hi + 1), frac[:, ax]))
            part = table[mill[:, ax] - lo]
            out = part if out is None else out * part
        cdtype = torch.complex128 if self.dtype == torch.float64 else torch.complex64
        result = torch.as_tensor(out, dtype=cdtype, device=self.device)
        if cache_key is not None:
            self._cache[cache_key] = result
        return result


def radial_factors(q: torch.Tensor, alpha: torch.Tensor, ls: np.ndarray) -> torch.Tensor:
    """``(q / (2 sqrt(alpha)))^l exp(-q² / (4 alpha))``, shape ``(N, n_radial)``.

    ``alpha``: ``(n_radial,)`` exponents in Å⁻²; ``ls``: ``(n_radial,)`` angular momenta.
    """
    x = q[:, None] / (2.0 * torch.sqrt(alpha)[None, :])
    ls = np.asarray(ls, dtype=int)
    power = torch.ones_like(x)
    for l in range(1, int(ls.max(initial=0)) + 1):  # integer powers: no 0**0 gradient NaN at G = 0
        power = torch.where(torch.as_tensor(ls >= l, device=q.device)[None, :], power * x, power)
    return power * torch.exp(-x * x)

def orbital_coefficients(
    geom: ReciprocalGeometry,
    coeffs: torch.Tensor,
    alpha: torch.Tensor,
    layout: OrbitalLayout,
    atoms: np.ndarray,
    q_max: float | None = None,
    chunk: int = 65536,
    cache_key: object = None,
    rows: np.ndarray | None = None,
) -> torch.Tensor:
    """Fourier coefficients (e/Å³) of atom-centred orbitals of one species at every G of ``geom``.

    Parameters
    ----------
    geom
        The cell's reciprocal geometry.
    coeffs
        ``(n_sel, layout.dim)`` orbital coefficients of the atoms ``atoms`` (electrons).
    alpha
        ``(layout.n_radial,)`` exponents of this species (Å⁻²).
    atoms
        Indices (into ``geom.frac``) of the atoms these coefficients belong to.
    q_max
        G vectors with ``|G| > q_max`` get zero (their radial factors are negligible).
    chunk
        G vectors per block, bounding memory to ``chunk * n_sel`` complex numbers.
    cache_key
        Key under which ``geom`` keeps the phases (training; None at inference).
    rows
        Evaluate only these G vectors (indices into ``geom``); the result has ``len(rows)`` entries.
    """
    rad, ls, ys = layout.columns()
    rows = np.arange(len(geom)) if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(rows)
    cdtype = torch.complex128 if geom.dtype == torch.float64 else torch.complex64
    dev = geom.device
    out = torch.zeros(n, dtype=cdtype, device=dev)
    if len(atoms) == 0:
        return out
    keep = np.arange(n) if q_max is None else np.flatnonzero(geom.q_np[rows] <= q_max)
    even = torch.as_tensor(ls % 2 == 0, device=dev)
    # (-i)^l: +1, -i, -1, +i  -> real sign for even l, imaginary sign for odd l
    sign = torch.as_tensor([1.0, -1.0, -1.0, 1.0], dtype=geom.dtype, device=dev)[
        torch.as_tensor(ls % 4, device=dev)
    ]
    c_even = (coeffs * (sign * even)[None, :]).T  # (dim, n_sel)
    c_odd = (coeffs * (sign * ~even)[None, :]).T
    ys_t = torch.as_tensor(ys, device=dev)
    rad_t = torch.as_tensor(rad, device=dev)
    radial_ls = layout.radial_l()
    pieces = []
    for start in range(0, len(keep), chunk):
        pos_t = torch.as_tensor(keep[start : start + chunk], device=dev)
        idx = rows[keep[start : start + chunk]]
        idx_t = torch.as_tensor(idx, device=dev)
        radial = radial_factors(geom.q[idx_t], alpha, radial_ls)  # (B, n_radial)
        basis = radial[:, rad_t] * geom.ylm[idx_t][:, ys_t]  # (B, dim)
        x = torch.complex(basis @ c_even, basis @ c_odd)  # (B, n_sel)
        key = None if cache_key is None else (cache_key, start)
        phase = geom.phases(atoms, idx, key)
        pieces.append((pos_t, (phase * x).sum(dim=1)))
    for pos_t, vals in pieces:
        out = out.index_put((pos_t,), vals)
    return out / geom.volume

