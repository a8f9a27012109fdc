"""Density error metrics, on real-space grids (e/Å³) or Fourier coefficients.

NMAPE (normalised mean absolute percentage error, the field's standard since DeepDFT and
ChargE3Net) is ``100 * sum |rho_pred - rho_true| / sum |rho_true|`` over the grid points.
"""

from __future__ import annotations

import numpy as np


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
    error: the quantity pw.x's "estimated scf accuracy" measures, so the one its SCF reduces
    iteration by iteration (NMAPE weighs all wavelengths alike).
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
