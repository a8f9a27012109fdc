"""pw.x's SCF error functional (``rho_ddot``) in the package's units, against hand-made cases.

The reference numbers are computed here the way QE's ``PW/src/scf_mod.f90`` computes
``rho_ddot`` (bohr, e/bohr³, ``gg`` in units of ``tpiba2``, ``e2 = 2``), not with the
package's formula, so a slip in the Å -> bohr conversion fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.grid import DensityGrid, fft_miller
from mlcharge_workflows.training.metrics import (
    hartree_metric,
    scf_error,
    scf_error_coefficients,
    scf_error_terms,
)
from mlcharge_workflows.units import BOHR_TO_ANGSTROM as A0

L, SHAPE = 5.0, (12, 12, 12)  # cubic cell (Å), grid


def coefficients_at(values, mill):
    """``c_m = fftn(values) / N`` at ``mill`` (the whole FFT box, Nyquist planes included)."""
    c = np.fft.fftn(values) / values.size
    return c[mill[:, 0] % SHAPE[0], mill[:, 1] % SHAPE[1], mill[:, 2] % SHAPE[2]]


def _qe_rho_ddot(rho_g, mag_g, gg, omega, tpiba2, smooth):
    """QE's rho_ddot(rho, rho, ngms) transcribed: bohr units, full sphere (not gamma-only)."""
    e2, fpi, tpi = 2.0, 4 * math.pi, 2 * math.pi
    fac = e2 * fpi / tpiba2
    g0 = gg < 1e-12
    keep = smooth & ~g0
    out = fac * np.sum(np.abs(rho_g[keep]) ** 2 / gg[keep])
    if mag_g is not None:
        out += e2 * fpi / tpi**2 * np.sum(np.abs(mag_g[smooth]) ** 2)
    return out * omega * 0.5


def _plane_waves():
    x = np.arange(SHAPE[0]) / SHAPE[0]
    X, Y, _ = np.meshgrid(x, x, x, indexing="ij")
    a, b = 0.01, 0.003  # e/Å³
    d_rho = a * np.cos(2 * np.pi * X) + 0.5 * a * np.sin(2 * np.pi * 2 * Y)
    d_mag = b + b * np.cos(2 * np.pi * X)
    return d_rho, d_mag, a, b


def test_single_plane_wave_by_hand():
    """``a cos(2πx/L)``: charge ``a0 · 4πV · 2 (a/2)² / (2π/L)² = a0 L⁵ a² / (2π)`` Ry."""
    a = 0.01
    x = np.arange(SHAPE[0]) / SHAPE[0]
    d = np.broadcast_to(a * np.cos(2 * np.pi * x)[:, None, None], SHAPE).copy()
    charge, mag = scf_error_terms(d, None, np.eye(3) * L)
    assert charge == pytest.approx(A0 * L**5 * a**2 / (2 * np.pi), rel=1e-12)
    assert mag == 0.0
    # uniform magnetisation error b: the G=0 term, a0³/π · V b² (charge unchanged)
    b = 0.002
    charge2, mag2 = scf_error_terms(d, np.full(SHAPE, b), np.eye(3) * L)
    assert charge2 == pytest.approx(charge, rel=1e-12)
    assert mag2 == pytest.approx(A0**3 / np.pi * L**3 * b**2, rel=1e-12)
    # the existing Hartree metric (e²/Å) is the charge term over a0
    assert hartree_metric(d, np.eye(3) * L) * A0 == pytest.approx(charge, rel=1e-12)


def test_matches_qe_rho_ddot_in_bohr_units():
    """Both terms against QE's expression evaluated in QE's own units, with a smooth cutoff."""
    d_rho, d_mag, _, _ = _plane_waves()
    lattice = Lattice.cubic(L).matrix
    mill = fft_miller(SHAPE).reshape(-1, 3)
    c_rho, c_mag = coefficients_at(d_rho, mill), coefficients_at(d_mag, mill)
    alat = L / A0  # bohr
    tpiba2 = (2 * np.pi / alat) ** 2
    gg = (mill.astype(float) ** 2).sum(1)  # |G|² / tpiba2 for a cubic cell
    omega = alat**3
    to_bohr = A0**3  # e/Å³ -> e/bohr³
    for ecut in (None, 1.0):  # Ry: |G|² (bohr⁻²) <= 1 keeps |m| = 1 (0.44) and drops |m| = 2 (1.77)
        smooth = np.ones(len(gg), bool) if ecut is None else gg * tpiba2 <= ecut
        expected = _qe_rho_ddot(c_rho * to_bohr, c_mag * to_bohr, gg, omega, tpiba2, smooth)
        charge, mag = scf_error_coefficients(c_rho, c_mag, mill, lattice, ecut_ry=ecut)
        assert charge + mag == pytest.approx(expected, rel=1e-10)
        assert charge > 0 and mag > 0
    full = sum(scf_error_coefficients(c_rho, c_mag, mill, lattice))
    assert sum(scf_error_coefficients(c_rho, c_mag, mill, lattice, ecut_ry=1.0)) < full


def test_half_sphere_weights_and_grid_wrapper():
    d_rho, d_mag, _, _ = _plane_waves()
    lattice = Lattice.cubic(L).matrix
    mill = fft_miller(SHAPE).reshape(-1, 3)
    full = scf_error_coefficients(coefficients_at(d_rho, mill), coefficients_at(d_mag, mill), mill, lattice)
    # the m3 >= 0 half with weight 2 where m3 > 0 (the training samples' storage); drop the
    # m3 = -n/2 Nyquist plane, which has no partner in the half (zero for these waves)
    half = (mill[:, 2] >= 0) & (mill[:, 2] < SHAPE[2] // 2)
    w = np.where(mill[half, 2] > 0, 2.0, 1.0)
    got = scf_error_coefficients(coefficients_at(d_rho, mill[half]), coefficients_at(d_mag, mill[half]),
                                 mill[half], lattice, weights=w)
    np.testing.assert_allclose(got, full, rtol=1e-12)
    s = Structure(Lattice.cubic(L), ["Fe"], [[0, 0, 0]])
    true = DensityGrid(s, np.full(SHAPE, 0.2), np.full(SHAPE, 0.05))
    pred = DensityGrid(s, 0.2 + d_rho, 0.05 + d_mag)
    assert scf_error(pred, true) == pytest.approx(sum(full), rel=1e-12)
    # a prediction without magnetisation on a magnetic cell: the whole moment is an error
    no_mag = DensityGrid(s, 0.2 + d_rho)
    assert scf_error(no_mag, true) == pytest.approx(
        full[0] + A0**3 / np.pi * L**3 * 0.05**2, rel=1e-12
    )
    with pytest.raises(ValueError, match="shape"):
        scf_error(DensityGrid(s, np.full((6, 6, 6), 0.2)), true)
