"""Inference API: normalisation, non-negativity, spin, any grid, bad input, weights files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.model import (
    DEFAULT_WEIGHTS,
    load_model,
    load_weights,
    predict_density,
    predict_qe_coefficients,
    save_model,
)

from test_model_equivariance import sic_structure, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(torch.float32)


@pytest.mark.parametrize("shape", [(20, 20, 20), (18, 25, 31)])
def test_exact_normalisation_and_non_negative(model, shape):
    s = sic_structure()
    grid = predict_density(s, shape, model, spin="model")
    assert isinstance(grid, DensityGrid) and grid.shape == shape
    assert grid.n_electrons == pytest.approx(18.0, abs=1e-10)
    assert grid.total.min() > 0.0  # floor: half the atomic superposition, which is positive
    # the unclipped prediction is also normalised exactly (G = 0 fixed)
    raw = predict_density(s, shape, model, clip=False, spin="model")
    assert raw.n_electrons == pytest.approx(18.0, abs=1e-9)
    assert raw.total.min() < 0 and grid.metadata["clipped_electrons"] > 0  # this random model dips
    zero_floor = predict_density(s, shape, model, floor=0.0, spin="model")
    assert zero_floor.total.min() == 0.0
    # the atomic floor (> 0 everywhere) adds more charge than a zero floor would
    assert grid.metadata["clipped_electrons"] > zero_floor.metadata["clipped_electrons"]
    assert zero_floor.metadata["clipped_electrons"] == pytest.approx(
        np.maximum(-raw.total, 0).mean() * s.volume, rel=1e-9
    )


def test_default_grid_is_qe_fft_grid(model):
    from mlcharge_workflows.density.qe_gvectors import qe_fft_grid

    s = sic_structure()
    grid = predict_density(s, model=model)
    assert grid.shape == qe_fft_grid(s.lattice.matrix, 160.0)  # max ecutrho of Si, C, Ni


def test_grids_agree_where_they_overlap(model):
    """Resolution-free: a fine and a coarse grid give the same coefficients at low G."""
    s = sic_structure()
    mill = np.array([[1, 0, 0], [0, 2, -1], [1, 1, 1], [-2, 1, 0]])
    fine = predict_density(s, (40, 40, 40), model, clip=False, spin="model").fourier(mill)[0]
    coarse = predict_density(s, (24, 27, 30), model, clip=False, spin="model").fourier(mill)[0]
    np.testing.assert_allclose(fine, coarse, atol=1e-6)


def test_magnetisation_for_magnetic_elements(model, monkeypatch, si_fcc):
    monkeypatch.delenv("MLCHARGE_MODEL_SPIN", raising=False)
    grid = predict_density(sic_structure(), (20, 20, 20), model, spin="model")
    assert grid.magnetization is not None and grid.metadata["spin_start"] == "model"
    atomic = predict_density(sic_structure(), (20, 20, 20), model)
    assert atomic.metadata["spin_start"] == "atomic" and not np.allclose(atomic.total, grid.total)
    with pytest.raises(ValueError, match="spin start"):
        predict_density(sic_structure(), (20, 20, 20), model, spin="ferro")
    assert np.all(np.abs(grid.magnetization) <= grid.total + 1e-12)
    assert predict_density(si_fcc, (16, 16, 16), model.__class__(model.config, model.table).eval()).magnetization is None


def test_charge_spin_start_is_learned_rho_with_atomic_m(model):
    """``spin="charge"``: the learned total of ``"model"`` with the magnetisation of ``"atomic"``."""
    s = sic_structure()
    learned = predict_density(s, (20, 20, 20), model, spin="model")
    atomic = predict_density(s, (20, 20, 20), model, spin="atomic")
    mixed = predict_density(s, (20, 20, 20), model, spin="charge")
    assert mixed.metadata["spin_start"] == "charge"
    np.testing.assert_allclose(mixed.total, learned.total, atol=1e-10)
    assert not np.allclose(mixed.total, atomic.total)
    # the atomic m, clipped to the learned rho (|m| <= rho)
    np.testing.assert_allclose(mixed.magnetization, np.clip(atomic.magnetization, -mixed.total, mixed.total),
                               atol=1e-10)
    assert not np.allclose(mixed.magnetization, learned.magnetization)


def test_magmom_flip_is_time_reversal(model):
    """Flipping every starting moment flips the magnetisation and keeps the total, exactly."""
    s = sic_structure()
    up = predict_density(s.copy(site_properties={"magmom": [0, 0, 2.0]}), (20, 20, 20), model, spin="model")
    down = predict_density(s.copy(site_properties={"magmom": [0, 0, -2.0]}), (20, 20, 20), model, spin="model")
    np.testing.assert_allclose(down.magnetization, -up.magnetization, atol=1e-6)
    np.testing.assert_allclose(down.total, up.total, atol=1e-6)
    assert abs(up.total_magnetization) > 1e-3


def test_qe_coefficients_exact_g0(model):
    s = sic_structure()
    mill = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 3, -2], [4, 4, 4]])
    tot, mag = predict_qe_coefficients(s, mill, model, spin="model")
    assert tot[0].real * s.lattice.volume == pytest.approx(18.0, abs=1e-9)
    np.testing.assert_allclose(tot[1], np.conj(tot[2]), atol=1e-12)
    assert mag is not None and mag.shape == tot.shape


def test_unknown_element_lists_supported(model):
    s = Structure(Lattice.cubic(4.0), ["Au"], [[0, 0, 0]])
    with pytest.raises(ValueError, match=r"does not know element\(s\) Au.*trained on: C, Ni, Si"):
        predict_density(s, (10, 10, 10), model)


def test_vacuum_and_short_distances(model):
    box = Structure(Lattice.cubic(14.0), ["C", "C"], [[0.5, 0.5, 0.5], [0.5 + 1.25 / 14, 0.5, 0.5]])
    grid = predict_density(box, (48, 48, 48), model)
    assert np.isfinite(grid.total).all() and grid.total.min() >= 0
    assert grid.n_electrons == pytest.approx(8.0, abs=1e-9)
    assert grid.total[0, 0, 0] < 1e-3 * grid.total.max()  # far from the molecule: vacuum
    close = Structure(Lattice.cubic(8.0), ["C", "C"], [[0, 0, 0], [0.5 / 8, 0, 0]])
    with pytest.warns(UserWarning, match="only 0.500 Å apart"):
        assert np.isfinite(predict_density(close, (16, 16, 16), model).total).all()
    overlap = Structure(Lattice.cubic(8.0), ["C", "C"], [[0, 0, 0], [0.01 / 8, 0, 0]])
    with pytest.raises(ValueError, match="overlapping atoms"):
        predict_density(overlap, (16, 16, 16), model)


def test_non_finite_output_raises(model):
    broken = tiny_model(torch.float32)
    with torch.no_grad():
        broken.output_scale.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        predict_density(sic_structure(), (12, 12, 12), broken, spin="model")


def test_weights_roundtrip_and_bad_files(model, tmp_path):
    path = save_model(model, tmp_path / "m.pt", {"version": "test"})
    loaded = load_weights(path)
    s = sic_structure()
    a = predict_density(s, (16, 16, 16), model, spin="model").total
    b = predict_density(s, (16, 16, 16), loaded, spin="model").total
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert loaded.metadata["version"] == "test"

    with pytest.raises(ValueError, match="not found"):
        load_weights(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_weights(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a weights file at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_weights(garbage)
    payload = torch.load(path, weights_only=True)
    payload["config"]["orbital_muls"] = [3, 1, 1, 1, 1]  # config no longer matches the tensors
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_weights(tmp_path / "edited.pt")
    from mlcharge_workflows.model.io import _checksum

    payload["checksum"] = _checksum(payload["config"], payload["table"], payload["state_dict"])
    torch.save(payload, tmp_path / "mismatched.pt")
    with pytest.raises(ValueError, match="corrupt or mismatched"):
        load_weights(tmp_path / "mismatched.pt")
    other = {"format": "something else"}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a mlcharge density model"):
        load_weights(tmp_path / "other.pt")


def test_shipped_weights_load_offline(si_fcc):
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.stat().st_size < 5 * 1024**2
    model = load_model()
    assert model is load_model()  # cached
    assert "Si" in model.supported_elements
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid = predict_density(si_fcc, model=model)
    assert grid.n_electrons == pytest.approx(8.0, abs=1e-9)


def test_threads_are_restored_and_checked(model, monkeypatch):
    before = torch.get_num_threads()
    predict_density(sic_structure(), (12, 12, 12), model, threads=1)
    assert torch.get_num_threads() == before
    monkeypatch.setenv("MLCHARGE_MODEL_THREADS", "0")
    with pytest.raises(ValueError, match="MLCHARGE_MODEL_THREADS"):
        predict_density(sic_structure(), (12, 12, 12), model)


def test_spin_start_default_comes_from_the_weights_unless_set(model, monkeypatch):
    """Argument > MLCHARGE_MODEL_SPIN > the weights' spin_start_default > 'atomic'."""
    monkeypatch.delenv("MLCHARGE_MODEL_SPIN", raising=False)
    saved = dict(model.metadata)
    try:
        model.metadata = {**saved, "spin_start_default": "model"}
        assert predict_density(sic_structure(), (16, 16, 16), model).metadata["spin_start"] == "model"
        monkeypatch.setenv("MLCHARGE_MODEL_SPIN", "atomic")
        assert predict_density(sic_structure(), (16, 16, 16), model).metadata["spin_start"] == "atomic"
        assert predict_density(sic_structure(), (16, 16, 16), model, spin="model").metadata["spin_start"] == "model"
        monkeypatch.delenv("MLCHARGE_MODEL_SPIN")
        model.metadata = {k: v for k, v in saved.items() if k != "spin_start_default"}
        assert predict_density(sic_structure(), (16, 16, 16), model).metadata["spin_start"] == "atomic"
    finally:
        model.metadata = saved


def test_moments_spin_start_is_the_atomic_m_scaled_to_the_learned_moments(model):
    """``spin="moments"``: each atom's learned moment (its own atomic and orbital terms,
    integrated) on the atomic magnetisation's shape, with the learned rho."""
    s = sic_structure()
    learned = predict_density(s, (20, 20, 20), model, spin="model", clip=False)
    scaled = predict_density(s, (20, 20, 20), model, spin="moments", clip=False)
    assert scaled.metadata["spin_start"] == "moments"
    mu = np.array(scaled.metadata["site_moments"])
    assert mu.shape == (len(s),) and abs(mu.sum()) > 1e-3
    # the atoms' moments add up to the learned total moment, and the start keeps it
    assert mu.sum() == pytest.approx(learned.total_magnetization, abs=1e-5)
    assert scaled.total_magnetization == pytest.approx(mu.sum(), abs=1e-5)
    np.testing.assert_allclose(scaled.total, learned.total, atol=1e-10)
    # the shape is pw.x's atomic one, with the learned moments as starting moments
    atomic = predict_density(s.copy(site_properties={"magmom": list(mu)}), (20, 20, 20), model,
                             spin="atomic", clip=False)
    np.testing.assert_allclose(scaled.magnetization, atomic.magnetization, atol=1e-8)
    assert not np.allclose(scaled.magnetization, learned.magnetization, atol=1e-4)
    # a moment belongs to its atom: reordering the sites reorders the moments
    order = [2, 0, 1]
    moved = Structure.from_sites([s[i] for i in order])
    again = predict_density(moved, (20, 20, 20), model, spin="moments", clip=False)
    np.testing.assert_allclose(again.metadata["site_moments"], mu[order], atol=1e-5)
    # non-magnetic cells have no moments
    assert predict_density(s.copy(site_properties={"magmom": [0, 0, 0]}), (20, 20, 20), model,
                           spin="moments").metadata["site_moments"] is None

