"""The atomic reference swapped at prediction time: the run's own pseudopotentials.

The learned deformation has no G = 0 term, so a prediction with another reference is that
reference plus the same deformation and integrates to the reference's own valence count
with no rescaling. Fe with the 16-electron semicore UPF is the case the issue names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.potcar import format_potcar_dataset, parse_potcar_atomic_density
from mlcharge_workflows.model import load_model, predict_density
from mlcharge_workflows.model.atomic import AtomicReference
from mlcharge_workflows.model.predict import predict_fourier, reference_table
from mlcharge_workflows.settings import get_settings

from test_model_equivariance import sic_structure, tiny_model

PSEUDO = get_settings().pseudo_dir
FE_SEMICORE = PSEUDO / "Fe.pbe-spn-rrkjus_psl.0.2.1.UPF"  # 3s3p semicore, 16 electrons


def bcc_fe() -> Structure:
    return Structure(
        Lattice.cubic(2.83), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]],
        site_properties={"magmom": [2.2, 2.2]},
    )


def distance_to_atoms(structure: Structure, shape) -> np.ndarray:
    f = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1).reshape(-1, 3)
    d = np.full(len(f), np.inf)
    for site in structure:
        df = f - site.frac_coords
        df -= np.round(df)
        d = np.minimum(d, np.linalg.norm(df @ structure.lattice.matrix, axis=1))
    return d.reshape(shape)


@pytest.fixture(scope="module")
def shipped():
    return load_model()


def test_semicore_upf_reference_is_the_same_deformation(shipped):
    """16-electron Fe: exact count, and the prediction differs from the 8-electron one by
    exactly the difference of the two atomic references (the deformation is unchanged)."""
    s, shape = bcc_fe(), (36, 36, 36)
    ref = reference_table(shipped, {"Fe": FE_SEMICORE})
    f8 = predict_fourier(s, shape, shipped)
    f16 = predict_fourier(s, shape, shipped, ref)
    assert f16["n_electrons"] == 32.0 and f8["n_electrons"] == 16.0
    np.testing.assert_array_equal(f8["mill"], f16["mill"])
    deform8 = f8["total"] - f8["sad_total"]
    deform16 = f16["total"] - f16["sad_total"]
    scale = np.abs(f8["total"]).max()
    assert np.abs(deform16 - deform8).max() < 1e-5 * scale
    # the magnetisation keeps its moments in μB: m = (μ / z_ref) * rho_atom + learned part
    g0 = np.flatnonzero((f8["mill"] == 0).all(axis=1))[0]
    assert f16["magnetization"][g0].real == pytest.approx(f8["magnetization"][g0].real, rel=1e-5)

    grid = predict_density(s, shape, shipped, spin="model", reference={"Fe": FE_SEMICORE})
    assert grid.n_electrons == pytest.approx(32.0, abs=1e-9)  # no rescaling to reach it
    meta = grid.metadata["reference"]
    assert meta["differs_from_training"] is True
    fe = meta["elements"]["Fe"]
    assert fe["source"]["file"] == FE_SEMICORE.name and fe["source"]["pseudo_type"] == "US"
    assert fe["z_valence"] == 16.0 and fe["z_valence_training"] == 8.0


def test_synthetic_semicore_stays_close_outside_the_core(shipped):
    """A reference that is the training density plus a compact 8-electron shell: the
    prediction integrates to 16 per atom and matches the 8-electron one outside the core."""
    row = shipped.table.elements.index("Fe")
    alpha = 20.0  # Å⁻²: the shell holds ~1e-5 of its charge beyond 0.8 Å
    ref = AtomicReference(
        "Fe", 16.0,
        lambda q: shipped.table(row, q) + 8.0 * np.exp(-np.asarray(q) ** 2 / (4 * alpha)),
        q_max=shipped.table.q_max, identity={"kind": "test", "symbol": "Fe_sc"},
    )
    s, shape = bcc_fe(), (40, 40, 40)
    p8 = predict_density(s, shape, shipped, spin="model")
    p16 = predict_density(s, shape, shipped, spin="model", reference={"Fe": ref})
    assert p16.n_electrons == pytest.approx(32.0, abs=1e-9)
    out = distance_to_atoms(s, shape) > 0.8
    rel = np.abs(p16.total - p8.total)[out].sum() / p8.total[out].sum()
    assert rel < 1e-3
    # same moment (μB) as the unclipped 8-electron prediction; clipping |m| <= rho cuts less
    # where the reference holds more charge
    raw8 = predict_density(s, shape, shipped, spin="model", clip=False)
    assert p16.total_magnetization == pytest.approx(raw8.total_magnetization, rel=1e-4)


def test_registry_file_is_not_reported_as_different(shipped, si):
    from mlcharge_workflows.pseudo import get_pseudo

    s = si
    grid = predict_density(s, (20, 20, 20), shipped, reference={"Si": get_pseudo("Si").source})
    assert grid.metadata["reference"]["differs_from_training"] is False
    plain = predict_density(s, (20, 20, 20), shipped)
    assert plain.metadata["reference"]["source"] == "training"
    np.testing.assert_allclose(grid.total, plain.total, atol=1e-4 * plain.total.max())


def test_paw_and_unknown_elements_are_refused(shipped):
    with pytest.raises(ValueError, match="PAW"):
        AtomicReference.from_upf(PSEUDO / "Fe.pbesol-spn-kjpaw_psl.1.0.0.UPF")
    with pytest.raises(ValueError, match="does not know"):
        reference_table(shipped, {"Rh": PSEUDO / "Rh.pbe-rrkjus_lb.UPF"})
    with pytest.raises(ValueError, match="is for"):
        shipped.table.with_references({"Fe": AtomicReference.from_upf(PSEUDO / "Ni.pbe-nd-rrkjus.UPF")})


def test_potcar_reference_on_vasp_range():
    """A POTCAR table is used as VASP does: up to its own PSGMAX, G = 0 the valence."""
    model = tiny_model(torch.float64)
    npspts, psgmax = 1000, 80.0
    q = np.arange(npspts) * psgmax / npspts
    atom = parse_potcar_atomic_density(
        format_potcar_dataset("Ni_pv", 16.0, 16.0 * np.exp(-(q**2) / 24.0), psgmax)
    )
    table = model.table.with_references({"Ni": AtomicReference.from_potcar(atom)})
    assert table.q_max >= atom.q_max > model.table.q_max
    s = sic_structure()
    grid = predict_density(s, (30, 30, 30), model, reference=table, spin="model")
    assert grid.n_electrons == pytest.approx(4 + 4 + 16, abs=1e-9)
    assert grid.metadata["reference"]["elements"]["Ni"]["source"]["symbol"] == "Ni_pv"
    assert grid.metadata["reference"]["elements"]["Si"]["source"] == {"kind": "training"}


def test_device_option(monkeypatch):
    from mlcharge_workflows.model.predict import resolve_device

    monkeypatch.delenv("MLCHARGE_MODEL_DEVICE", raising=False)
    assert resolve_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setenv("MLCHARGE_MODEL_DEVICE", "cpu")
    assert resolve_device() == "cpu"
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    grid = predict_density(sic_structure(), (16, 16, 16), tiny_model(torch.float64), device="cpu")
    assert grid.metadata["device"] == "cpu"
