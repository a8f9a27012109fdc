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

    def phases(
        self, atoms: np.ndarray, rows: np.ndarray, cache_key: object = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos θ, sin θ)`` with ``θ = 2π m·f_a``, shape ``(len(rows), len(atoms))`` each.

        ``exp(-iG·R_a) = cos θ - i sin θ``. ``m·f`` is reduced modulo 1 in float64 before the
        cast, so float32 phases stay accurate for large Miller indices. With ``cache_key``
        the result is kept for later calls (training on fixed rows).
        """
        if cache_key is not None and cache_key in self._cache:
            return self._cache[cache_key]
        mill = torch.as_tensor(self.mill[rows], dtype=torch.float64, device=self.device)
        frac = torch.as_tensor(self.frac[atoms], dtype=torch.float64, device=self.device)
        theta = torch.remainder(mill @ frac.T, 1.0).to(self.dtype) * (2.0 * math.pi)
        result = (torch.cos(theta), torch.sin(theta))
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

@dataclass
class SpeciesTerm:
    """One density (total or magnetisation) of one species, for :func:`species_fourier`.

    ``coeffs`` ``(n_sel, layout.dim)`` orbital coefficients (electrons) or None; ``alpha``
    ``(n_radial,)`` exponents (Å⁻²); orbitals are cut at ``|G| > q_max``. ``sad_form``
    ``(len(geom),)`` atomic form factor ``F_s(|G|)`` (electrons) at every G of the geometry,
    weighted per atom by ``sad_weights`` (None: 1), or None for no atomic term.
    """

    layout: OrbitalLayout
    coeffs: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    q_max: float = math.inf
    sad_form: torch.Tensor | None = None
    sad_weights: torch.Tensor | None = None


def species_fourier(
    geom: ReciprocalGeometry,
    atoms: np.ndarray,
    terms: list[SpeciesTerm],
    rows: np.ndarray | None = None,
    chunk: int = 32768,
    cache_key: object = None,
) -> list[torch.Tensor]:
    """Fourier coefficients (e/Å³) of the atoms ``atoms`` of one species, one array per term.

    Every term (atomic density and orbitals, total and magnetisation) shares the phases
    ``exp(-iG·R_a)``, computed once per block of ``chunk`` G vectors, which bounds memory
    by ``chunk * len(atoms)``. ``rows`` restricts the evaluation to those G vectors (the
    results then have ``len(rows)`` entries); ``cache_key`` keeps the phases in ``geom``.
    """
    rows = np.arange(len(geom)) if rows is None else np.asarray(rows, dtype=np.int64)
    cdtype = torch.complex128 if geom.dtype == torch.float64 else torch.complex64
    dev = geom.device
    n = len(rows)
    outs = [torch.zeros(n, dtype=cdtype, device=dev) for _ in terms]
    if len(atoms) == 0 or n == 0:
        return outs
    sign = torch.as_tensor([1.0, -1.0, -1.0, 1.0], dtype=geom.dtype, device=dev)
    prepared = []
    for term in terms:
        cols = {}
        if term.coeffs is not None and term.layout.n_radial:
            rad, ls, ys = term.layout.columns()
            # (-i)^l = +1, -i, -1, +i for l % 4 = 0..3: even l real part, odd l imaginary part
            for name, mask in (("even", ls % 2 == 0), ("odd", ls % 2 == 1)):
                idx = np.flatnonzero(mask)
                if idx.size:
                    sel = torch.as_tensor(idx, device=dev)
                    signed = term.coeffs[:, sel] * sign[torch.as_tensor(ls[idx] % 4, device=dev)][None, :]
                    cols[name] = (torch.as_tensor(rad[idx], device=dev), torch.as_tensor(ys[idx], device=dev), signed.T)
        prepared.append(cols)
    pieces: list[list] = [[] for _ in terms]
    for start in range(0, n, chunk):
        pos = slice(start, start + chunk)
        idx = rows[pos]
        idx_t = torch.as_tensor(idx, device=dev)
        key = None if cache_key is None else (cache_key, start)
        cos, sin = geom.phases(atoms, idx, key)  # (B, n_sel) each
        q = geom.q[idx_t]
        ylm = None
        for k, (term, cols) in enumerate(zip(terms, prepared)):
            re = torch.zeros(len(idx), dtype=geom.dtype, device=dev)
            im = torch.zeros_like(re)
            if term.sad_form is not None:
                form = term.sad_form[idx_t]
                if term.sad_weights is None:
                    re = re + form * cos.sum(1)
                    im = im - form * sin.sum(1)
                else:
                    re = re + form * (cos @ term.sad_weights)
                    im = im - form * (sin @ term.sad_weights)
            if cols:
                ylm = geom.ylm[idx_t] if ylm is None else ylm
                radial = radial_factors(q, term.alpha, term.layout.radial_l())
                radial = radial * (q <= term.q_max).to(radial.dtype)[:, None]
                x = {name: (radial[:, r] * ylm[:, y]) @ c for name, (r, y, c) in cols.items()}
                # (cos - i sin)(x_even + i x_odd)
                if "even" in x:
                    re = re + (cos * x["even"]).sum(1)
                    im = im - (sin * x["even"]).sum(1)
                if "odd" in x:
                    re = re + (sin * x["odd"]).sum(1)
                    im = im + (cos * x["odd"]).sum(1)
            pieces[k].append(torch.complex(re, im))
    return [torch.cat(p) / geom.volume for p in pieces]
