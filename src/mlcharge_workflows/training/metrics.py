"""Density error metrics, on real-space grids (e/Å³) or Fourier coefficients.

NMAPE (normalised mean absolute percentage error, the field's standard since DeepDFT and
ChargE3Net) is ``100 * sum |rho_pred - rho_true| / sum |rho_true|`` over the grid points.

The SCF error (:func:`scf_error`) is pw.x's own measure of a density error, the
"estimated scf accuracy" it prints each iteration: ``rho_ddot(Δ, Δ)`` of QE's
``PW/src/scf_mod.f90`` (``dr2`` in ``mix_rho.f90``, with ``Δ = rho_out - rho_in``). In QE's
units (Ry, bohr; ``e2 = 2``, ``Ω`` the cell volume, coefficients ``rho(r) = Σ_G rho(G) e^{iG·r}``)::

    rho_ddot = Ω/2 · [ e2·4π · Σ_{G≠0} |Δrho(G)|² / |G|²            (charge: the Hartree energy of Δrho)
                     + e2·4π/(2π)² · Σ_G |Δm(G)|² ]                  (nspin=2: magnetisation, G=0 included)

over pw.x's smooth sphere ``|G|² <= 4·ecutwfc`` (``ngms``; every G when ``ecutrho = 4·ecutwfc``),
the full sphere (a gamma-only run stores half and doubles). The magnetisation weight is
``1/|G|²`` frozen at ``|G| = 2π`` bohr⁻¹ (QE's comment: "lambda = 1 a.u."). Here it takes Å and
e/Å³ and converts once: charge ``= a0 · 4π V Σ |Δrho|²/|G|²`` and magnetisation
``= a0³/π · V Σ |Δm|²`` (``a0`` the bohr in Å, ``V`` in Å³, ``G`` in Å⁻¹), in Ry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mlcharge_workflows.units import BOHR_TO_ANGSTROM

if TYPE_CHECKING:
    from mlcharge_workflows.density.grid import DensityGrid


def nmape(pred: np.ndarray, true: np.ndarray) -> float:
    """NMAPE (%) of two grids of the same shape."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    if pred.shape != true.shape:
        raise ValueError(f"grids differ in shape: {pred.shape} vs {true.shape}")
    denom = np.abs(true).sum()
    if denom == 0:
        raise ValueError("reference density is zero everywhere: NMAPE undefined")
    return float(100.0 * np.abs(pred - true).sum() / denom)


def hartree_metric(delta: np.ndarray, lattice: np.ndarray) -> float:
    """Hartree metric ``4π V Σ_{G≠0} |Δρ(G)|² / G²`` (e²/Å) of a density error on a periodic grid.

    ``delta`` in e/Å³ on the cell's grid, ``lattice`` rows in Å. Twice the Hartree energy of the
    error; times ``BOHR_TO_ANGSTROM`` it is the charge term (Ry) of pw.x's "estimated scf
    accuracy", :func:`scf_error` (NMAPE weighs all wavelengths alike).
    """
    delta = np.asarray(delta, dtype=float)
    lattice = np.asarray(lattice, dtype=float)
    volume = abs(np.linalg.det(lattice))
    c = np.fft.fftn(delta) / delta.size
    recip = 2 * np.pi * np.linalg.inv(lattice).T
    freqs = [np.fft.fftfreq(n, 1 / n) for n in delta.shape]
    mill = np.stack(np.meshgrid(*freqs, indexing="ij"), -1).reshape(-1, 3)
    q2 = ((mill @ recip) ** 2).sum(1)
    power = np.abs(c.reshape(-1)) ** 2
    nz = q2 > 1e-12
    return float(4 * np.pi * volume * (power[nz] / q2[nz]).sum())


def scf_error_coefficients(
    d_total: np.ndarray,
    d_magnetization: np.ndarray | None,
    mill: np.ndarray,
    lattice: np.ndarray,
    ecut_ry: float | None = None,
    weights: np.ndarray | None = None,
) -> tuple[float, float]:
    """pw.x's SCF error of a density error given by its Fourier coefficients: ``(charge, magnetisation)`` in Ry.

    Parameters
    ----------
    d_total, d_magnetization
        ``(N,)`` coefficients of ``Δrho`` and ``Δm`` (e/Å³) at the Miller indices ``mill``
        ``(N, 3)``; ``d_magnetization`` None for a non-magnetic (nspin=1) run.
    lattice
        ``(3, 3)`` cell rows in Å.
    ecut_ry
        Only G with ``|G|² <= ecut_ry`` (Ry, i.e. bohr⁻²) count: pw.x's smooth sphere is
        ``4 * ecutwfc``. None: every G given.
    weights
        ``(N,)`` multiplicity of each row: 2 for a row standing for ``±G`` (half-sphere
        storage, e.g. ``m3 > 0``), 1 otherwise. None: all 1 (a full sphere).

    The sum of the two is pw.x's "estimated scf accuracy" when ``Δ = rho_out - rho_in`` of an
    iteration (module docstring).
    """
    lattice = np.asarray(lattice, dtype=float)
    volume = abs(float(np.linalg.det(lattice)))
    recip = 2 * np.pi * np.linalg.inv(lattice).T
    q2 = ((np.asarray(mill, dtype=float) @ recip) ** 2).sum(1)  # Å⁻²
    w = np.ones(len(q2)) if weights is None else np.asarray(weights, dtype=float)
    if ecut_ry is not None:
        w = np.where(q2 * BOHR_TO_ANGSTROM**2 <= ecut_ry * (1 + 1e-10), w, 0.0)
    d_total = np.asarray(d_total)
    nz = q2 > 1e-12
    charge = BOHR_TO_ANGSTROM * 4 * np.pi * volume * float((w[nz] * np.abs(d_total[nz]) ** 2 / q2[nz]).sum())
    mag = 0.0
    if d_magnetization is not None:
        mag = BOHR_TO_ANGSTROM**3 / np.pi * volume * float((w * np.abs(np.asarray(d_magnetization)) ** 2).sum())
    return charge, mag


def scf_error_terms(
    d_total: np.ndarray, d_magnetization: np.ndarray | None, lattice: np.ndarray, ecut_ry: float | None = None
) -> tuple[float, float]:
    """pw.x's SCF error of a density error on a periodic grid: ``(charge, magnetisation)`` in Ry.

    ``d_total``, ``d_magnetization``: ``Δrho``, ``Δm`` (e/Å³) on the cell's grid (every G of
    the FFT box counts, up to ``ecut_ry`` when given); ``lattice`` rows in Å.
    """
    d_total = np.asarray(d_total, dtype=float)
    if d_magnetization is not None and np.shape(d_magnetization) != d_total.shape:
        raise ValueError(f"grids differ in shape: {d_total.shape} vs {np.shape(d_magnetization)}")
    freqs = [np.fft.fftfreq(n, 1 / n) for n in d_total.shape]
    mill = np.stack(np.meshgrid(*freqs, indexing="ij"), -1).reshape(-1, 3)
    c_tot = (np.fft.fftn(d_total) / d_total.size).reshape(-1)
    c_mag = None
    if d_magnetization is not None:
        c_mag = (np.fft.fftn(np.asarray(d_magnetization, dtype=float)) / d_total.size).reshape(-1)
    return scf_error_coefficients(c_tot, c_mag, mill, lattice, ecut_ry)


def scf_error(pred: DensityGrid, true: DensityGrid, ecut_ry: float | None = None) -> float:
    """pw.x's SCF error (Ry) of ``pred`` against ``true``: ``rho_ddot(pred - true)``.

    Both grids on the same cell and shape. The magnetisation term counts when ``true`` is
    spin-polarised (a missing ``pred`` magnetisation is zero). ``ecut_ry``: pw.x's
    ``4 * ecutwfc`` (see :func:`scf_error_coefficients`). Extensive: divide by the atom count
    to compare cells (pw.x's per-atom thresholds).
    """
    if pred.shape != true.shape:
        raise ValueError(f"grids differ in shape: {pred.shape} vs {true.shape}")
    if np.abs(pred.structure.lattice.matrix - true.structure.lattice.matrix).max() > 1e-6:
        raise ValueError("the two densities are on different cells")
    d_mag = None
    if true.magnetization is not None:
        m = pred.magnetization if pred.magnetization is not None else np.zeros(true.shape)
        d_mag = m - true.magnetization
    charge, mag = scf_error_terms(pred.total - true.total, d_mag, true.structure.lattice.matrix, ecut_ry)
    return charge + mag


def magnetization_error(pred: np.ndarray, true: np.ndarray, volume: float) -> float:
    """Integral of ``|m_pred - m_true|`` over the cell (μB); grids of the same shape."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    if pred.shape != true.shape:
        raise ValueError(f"grids differ in shape: {pred.shape} vs {true.shape}")
    return float(np.abs(pred - true).mean() * volume)


def l2_relative(pred_coeffs: np.ndarray, true_coeffs: np.ndarray) -> float:
    """``||c_pred - c_true|| / ||c_true||`` over Fourier coefficients (= real-space L2 by Parseval)."""
    num = np.linalg.norm(np.asarray(pred_coeffs) - np.asarray(true_coeffs))
    den = np.linalg.norm(np.asarray(true_coeffs))
    if den == 0:
        raise ValueError("reference coefficients are all zero")
    return float(num / den)


def geometric_mean(values: list[float], floor: float = 1e-30) -> float:
    """``exp(mean(log(v)))`` of positive values (each floored at ``floor``)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("geometric mean of no values")
    if (arr < 0).any():
        raise ValueError(f"geometric mean of negative values: {arr[arr < 0][:3].tolist()}")
    return float(np.exp(np.log(np.maximum(arr, floor)).mean()))


def summarize(values: list[float]) -> dict:
    """Mean, median, max and count of a list of per-structure metrics."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"count": 0}
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "max": float(arr.max()),
    }
