"""Training loop on a small synthetic dataset: progress, checkpoints, resume, determinism, stop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.grid import fft_miller
from mlcharge_workflows.model import DensityModel, ModelConfig, load_weights
from mlcharge_workflows.training.dataset import DensityDataset, DensityRecord
from mlcharge_workflows.training.train import TrainConfig, build_table, hash_split, train

SMALL = {
    "cutoff": 3.0,
    "n_layers": 1,
    "irreps_hidden": "4x0e",
    "orbital_muls": [2, 1, 1],
    "magnetization_muls": [1],
}


def _structures() -> list[Structure]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(6):
        a = 5.4 + 0.05 * i
        lat = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
        species = ["Si", "Si"] if i % 2 == 0 else ["Si", "C"]
        out.append(Structure(lat, species, [[0, 0, 0], [0.25 + rng.normal(0, 0.01), 0.25, 0.25]]))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Records made by a random 'teacher' model: learnable targets on real SAD tables."""
    root = tmp_path_factory.mktemp("ds")
    structures = _structures()
    table, ecut = build_table(["C", "Si"], [], root)
    torch.manual_seed(1)
    teacher = DensityModel(ModelConfig(elements=["C", "Si"], ecutrho_ry={"C": 60.0, "Si": 60.0}, **SMALL), table)
    ds = DensityDataset(root)
    for i, s in enumerate(structures):
        shape = (12, 12, 12)
        mill = fft_miller(shape).reshape(-1, 3)
        mill = mill[np.all(np.abs(mill) <= 5, axis=1)]
        cell = teacher.prepare(s)
        teacher.attach_mill(cell, mill)
        with torch.no_grad():
            tot, _ = teacher.fourier(cell)
        ds.add(DensityRecord(f"rec{i}", s, shape, mill, tot.numpy().astype(complex)))
    ds.manifest["splits"] = {"train": ["rec0", "rec1", "rec2", "rec3"], "val": ["rec4"], "test": ["rec5"]}
    ds.save_manifest()
    return root


def _config(dataset, out, **kw) -> TrainConfig:
    base = dict(datasets=[dataset], output=out, epochs=3, batch_size=2, lr=1e-2, seed=0,
                threads=1, n_extra=64, model=dict(SMALL))
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_model_and_metrics(dataset, tmp_path):
    lines: list[str] = []
    metrics = train(_config(dataset, tmp_path / "run"), log=lines.append)
    assert sum("val_NMAPE" in ln for ln in lines) == 3
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    model = load_weights(tmp_path / "run" / "model.pt")
    assert model.supported_elements == ["C", "Si"]
    assert metrics["n_train"] == 4 and metrics["test"]["nmape"]["count"] == 1
    row = metrics["test"]["records"][0]
    assert row["nmape"] < row["sad_nmape"] * 2 and np.isfinite(row["nmape"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["best_val_nmape"] == pytest.approx(metrics["best_val_nmape"])
    # the last epoch's weights: the checkpoint's, loadable, with the training record
    last = load_weights(tmp_path / "run" / "model_last.pt")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    for name, value in last.state_dict().items():
        assert torch.equal(value.cpu(), ckpt["model"][name].cpu()), name
    assert last.metadata["training"]["kept"] == "last epoch" and last.metadata["training"]["kept_epoch"] == 3
    assert last.metadata["epoch"] == 2 and last.metadata["selected_by"] == "last epoch"  # not the best's
    assert last.metadata["training"]["record_ids"] == model.metadata["training"]["record_ids"]
    assert saved["last_epoch_test"]["nmape"]["count"] == 1


def test_resume_and_determinism(dataset, tmp_path):
    full = train(_config(dataset, tmp_path / "a", epochs=4), log=lambda _: None)
    h_full = json.loads((tmp_path / "a" / "history.json").read_text())
    train(_config(dataset, tmp_path / "b", epochs=2), log=lambda _: None)
    lines: list[str] = []
    train(_config(dataset, tmp_path / "b", epochs=4), log=lines.append)
    assert any("resumed" in ln and "epoch 2" in ln for ln in lines)
    h_resumed = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in h_resumed] == [0, 1, 2, 3]
    np.testing.assert_allclose(
        [h["train_loss"] for h in h_resumed], [h["train_loss"] for h in h_full], rtol=1e-5
    )
    assert full["epochs_run"] == 4


def test_early_stopping(dataset, tmp_path):
    metrics = train(_config(dataset, tmp_path / "s", epochs=50, lr=0.0, patience=2), log=lambda _: None)
    assert metrics["epochs_run"] == 3 and "early stopping" in metrics["stop_reason"]


def test_config_errors(dataset, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets: [nowhere]\nunknown_key: 1\n")
    with pytest.raises(ValueError, match="unknown_key"):
        TrainConfig.from_yaml(cfg)
    with pytest.raises(ValueError, match="not a dataset folder"):
        train(_config(tmp_path / "nowhere", tmp_path / "x"))


def test_hash_split_is_stable():
    ids = [f"id{i}" for i in range(2000)]
    splits = [hash_split(i, 0, 0.1, 0.1) for i in ids]
    assert 0.07 < splits.count("test") / len(ids) < 0.13
    assert splits == [hash_split(i, 0, 0.1, 0.1) for i in ids]


def test_train_on_val_keeps_last_epoch(dataset, tmp_path):
    metrics = train(_config(dataset, tmp_path / "tv", epochs=3, patience=1, lr=0.0, train_on_val=True), log=lambda _: None)
    assert metrics["epochs_run"] == 3 and metrics["n_train"] == 5 and metrics["train_on_val"]
    assert load_weights(tmp_path / "tv" / "model.pt").metadata["epoch"] == 2


def test_hartree_metric_of_a_plane_wave():
    from mlcharge_workflows.training.metrics import hartree_metric

    a, n, amp = 4.0, 16, 0.03
    lattice = np.eye(3) * a
    x = np.arange(n) / n
    delta = amp * np.cos(2 * np.pi * 2 * x)[:, None, None] * np.ones((n, n, n))
    g = 2 * np.pi * 2 / a
    assert hartree_metric(delta, lattice) == pytest.approx(2 * np.pi * a**3 * amp**2 / g**2, rel=1e-10)
    assert hartree_metric(np.full((n, n, n), 0.1), lattice) == pytest.approx(0.0, abs=1e-20)


def test_hartree_loss_equals_the_metric_on_the_grid(dataset, tmp_path):
    """The training term (G half-sphere, Parseval weights) is the Hartree metric / N of the grid error."""
    from mlcharge_workflows.training.metrics import hartree_metric
    from mlcharge_workflows.training.train import _errors, half_to_grid, prepare_sample

    rec = DensityDataset(dataset)["rec1"]
    table, ecut = build_table(["C", "Si"], [], tmp_path)
    torch.manual_seed(5)
    model = DensityModel(ModelConfig(elements=["C", "Si"], ecutrho_ry={"C": 60.0, "Si": 60.0}, **SMALL), table).double()
    s = prepare_sample(model, rec, q_core=1e3)
    assert len(s.rest) == 0
    g2, hartree = _errors(model, s, None, _config(dataset, tmp_path), s.core, False, True)
    with torch.no_grad():
        tot, _ = model.fourier(s.cell)
        delta = (half_to_grid(tot, s.cell.mill, s.grid_shape) - half_to_grid(s.target, s.cell.mill, s.grid_shape)).numpy()
    expected = hartree_metric(delta, rec.structure.lattice.matrix) / s.cell.n_electrons
    assert float(hartree.detach()) == pytest.approx(expected, rel=1e-6) and expected > 0
    assert float(g2.detach()) == pytest.approx((delta**2).sum() * s.cell.volume / delta.size / s.cell.n_electrons, rel=1e-6)


def test_train_with_hartree_loss_reports_the_ratio(dataset, tmp_path):
    metrics = train(_config(dataset, tmp_path / "h", epochs=2, loss_g2=0.0, loss_hartree=1.0), log=lambda _: None)
    row = metrics["test"]["records"][0]
    assert row["hartree"] > 0 and row["sad_hartree"] > 0
    assert row["hartree_ratio"] == pytest.approx(row["hartree"] / row["sad_hartree"])
    assert metrics["test"]["hartree_ratio"]["count"] == 1
    with pytest.raises(ValueError, match="loss_hartree"):
        _config(dataset, tmp_path, loss_hartree=-1.0)


@pytest.fixture(scope="module")
def magnetic_dataset(tmp_path_factory):
    """bcc Fe records whose magmom site property (generator moments) differs from the protocol's."""
    root = tmp_path_factory.mktemp("dsmag")
    table, _ = build_table(["Fe"], [], root)
    torch.manual_seed(2)
    teacher = DensityModel(ModelConfig(elements=["Fe"], ecutrho_ry={"Fe": 60.0}, **SMALL), table)
    ds = DensityDataset(root)
    for i in range(4):
        a = 2.80 + 0.03 * i
        s = Structure(Lattice.cubic(a), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5 + 0.01 * i]])
        s.add_site_property("magmom", [2.2, 2.2])
        shape = (10, 10, 10)
        mill = fft_miller(shape).reshape(-1, 3)
        mill = mill[np.all(np.abs(mill) <= 4, axis=1)]
        cell = teacher.prepare(s, spin=True)
        teacher.attach_mill(cell, mill)
        with torch.no_grad():
            tot, mag = teacher.fourier(cell)
        ds.add(DensityRecord(f"fe{i}", s, shape, mill, tot.numpy().astype(complex), mag.numpy().astype(complex)))
    ds.manifest["splits"] = {"train": ["fe0", "fe1"], "val": ["fe2"], "test": ["fe3"]}
    ds.save_manifest()
    return root


def test_record_magmom_is_not_model_input_by_default(magnetic_dataset, tmp_path):
    """The records' magmom (generator moments) is stripped and the QE protocol's starting moments,
    which the workflows feed the model, become its defaults; record_magmom=True keeps the old input."""
    from mlcharge_workflows.engines.qe.sets import QEProtocol

    m = train(_config(magnetic_dataset, tmp_path / "a", epochs=1), log=lambda _: None)
    model = load_weights(tmp_path / "a" / "model.pt")
    assert model.config.starting_magnetization == {"Fe": QEProtocol().starting_magnetization["Fe"]}
    assert "magnetization_nmape" in m["test"]["records"][0]
    assert DensityDataset(magnetic_dataset)["fe3"].structure.site_properties["magmom"] == [2.2, 2.2]
    train(_config(magnetic_dataset, tmp_path / "b", epochs=1, record_magmom=True), log=lambda _: None)
    old = load_weights(tmp_path / "b" / "model.pt")
    assert old.config.starting_magnetization["Fe"] == pytest.approx(2.2 / 8, abs=1e-3)


def test_cosine_schedule_anneals_and_resumes(dataset, tmp_path):
    full = train(_config(dataset, tmp_path / "c", epochs=5, lr_schedule="cosine", lr_min=1e-4), log=lambda _: None)
    hist = json.loads((tmp_path / "c" / "history.json").read_text())
    lrs = [h["lr"] for h in hist]
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert full["cosine_epochs"] == 5 and "cosine schedule complete" in full["stop_reason"]
    train(_config(dataset, tmp_path / "d", epochs=5, lr_schedule="cosine", lr_min=1e-4, max_minutes=None), log=lambda _: None)
    np.testing.assert_allclose([h["train_loss"] for h in json.loads((tmp_path / "d" / "history.json").read_text())],
                               [h["train_loss"] for h in hist], rtol=1e-5)
    lines: list[str] = []
    timed = train(_config(dataset, tmp_path / "t", epochs=50, lr_schedule="cosine", max_minutes=0.2, val_every=2),
                  log=lines.append)
    assert any("cosine schedule over" in ln for ln in lines)
    assert 2 <= timed["cosine_epochs"] <= 50 and timed["epochs_run"] <= timed["cosine_epochs"]


def test_fine_tune_from_the_shipped_weights(dataset, tmp_path):
    """init_weights: training starts from the given weights, keeps their architecture and records it."""
    from mlcharge_workflows.model.io import DEFAULT_WEIGHTS

    shipped = load_weights(DEFAULT_WEIGHTS)
    lines: list[str] = []
    cfg = _config(dataset, tmp_path / "ft", epochs=1, lr=1e-9, model={}, init_weights="default")
    train(cfg, log=lines.append)
    assert any("fine-tuning from default" in ln for ln in lines)
    tuned = load_weights(tmp_path / "ft" / "model.pt")
    assert tuned.config.to_dict() == shipped.config.to_dict()
    assert tuned.metadata["init_version"] == shipped.metadata["version"]
    for (name, a), b in zip(shipped.state_dict().items(), tuned.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=name)  # lr 1e-9: no move
    # a real learning rate moves the weights away from the shipped ones
    train(_config(dataset, tmp_path / "ft2", epochs=1, lr=1e-2, model={}, init_weights=str(DEFAULT_WEIGHTS)),
          log=lambda _: None)
    moved = load_weights(tmp_path / "ft2" / "model.pt")
    assert any(not torch.allclose(a, b) for a, b in zip(shipped.state_dict().values(), moved.state_dict().values()))


def test_fine_tune_refuses_overrides_and_uncovered_elements(dataset, tmp_path):
    from mlcharge_workflows.model.io import save_model

    with pytest.raises(ValueError, match="remove the `model` overrides"):
        train(_config(dataset, tmp_path / "a", init_weights="default"), log=lambda _: None)
    table, _ = build_table(["Si"], [], tmp_path)
    si_only = DensityModel(ModelConfig(elements=["Si"], ecutrho_ry={"Si": 60.0}, **SMALL), table)
    save_model(si_only, tmp_path / "si.pt")
    with pytest.raises(ValueError, match=r"elements \['C'\] that the weights .* do not cover"):
        train(_config(dataset, tmp_path / "b", model={}, init_weights=str(tmp_path / "si.pt")), log=lambda _: None)


def test_quadratic_loss_is_the_exact_g_space_loss(tmp_path):
    """loss_mode quadratic: x^T P x - 2 q^T x + r equals the loss_g2 over every G (total and
    magnetisation, float64), for any coefficients, on a spin-polarised two-species cell."""
    from mlcharge_workflows.training.quadratic import quadratic_loss
    from mlcharge_workflows.training.train import prepare_sample, sample_loss

    table, _ = build_table(["Ni", "Si"], [], tmp_path)
    cfg = ModelConfig(elements=["Ni", "Si"], ecutrho_ry={"Ni": 80.0, "Si": 60.0}, learn_exponents=False,
                      **{**SMALL, "orbital_muls": [3, 2, 2, 1], "magnetization_muls": [2, 1]})
    torch.manual_seed(3)
    model = DensityModel(cfg, table).double()
    lat = Lattice.cubic(3.1)
    s = Structure(lat, ["Ni", "Si", "Ni"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.1, 0.0]])
    shape = (10, 10, 10)
    mill = fft_miller(shape).reshape(-1, 3)
    mill = mill[np.all(np.abs(mill) <= 4, axis=1)]
    teacher = DensityModel(cfg, table).double()
    with torch.no_grad():
        for p in teacher.network.parameters():
            p.add_(0.3 * torch.randn_like(p))
        cell = teacher.prepare(s, spin=True)
        teacher.attach_mill(cell, mill)
        tot, mag = teacher.fourier(cell)
    rec = DensityRecord("x", s, shape, mill, tot.numpy(), mag.numpy())
    half = mill[:, 2] >= 0
    ql = quadratic_loss(model, s, mill[half], tot.numpy()[half], mag.numpy()[half])
    smp = prepare_sample(model, rec, q_core=1e9)
    tc = TrainConfig(datasets=[tmp_path], magnetization_weight=0.7, n_extra=0)
    rng = np.random.default_rng(0)
    for scale in (0.0, 0.01, 0.1):
        c = (scale * torch.randn(3, model.layout.dim, dtype=torch.float64),
             scale * torch.randn(3, model.mag_layout.dim, dtype=torch.float64))
        ref = float(sample_loss(model, smp, c, tc, False, rng))
        assert ref > 0
        assert float(ql(c, 0.7)) == pytest.approx(ref, rel=1e-10)
    # the teacher's own coefficients give zero loss (to rounding): the forms see the same basis
    with torch.no_grad():
        best = teacher.orbital_coefficients([teacher.prepare(s, spin=True)])[0]
    assert float(ql(best, 0.7)) < 1e-12 * float(ql((best[0] * 0, best[1] * 0), 0.7)) + 1e-14


def test_quadratic_training_fits_and_refuses_learned_exponents(dataset, tmp_path):
    lines: list[str] = []
    model = {**SMALL, "learn_exponents": False}
    metrics = train(_config(dataset, tmp_path / "q", epochs=6, loss_mode="quadratic", val_every=3, model=model),
                    log=lines.append)
    assert sum("val_NMAPE" in ln for ln in lines) == 2  # epochs 3 and 6
    assert any("quadratic loss forms: 4/4" in ln for ln in lines)
    assert len(list((tmp_path / "q" / "quadratic").rglob("*.pt"))) == 4  # cached for the next run
    losses = [h["train_loss"] for h in json.loads((tmp_path / "q" / "history.json").read_text())]
    assert losses[-1] < losses[0]
    assert metrics["test"]["nmape"]["count"] == 1
    with pytest.raises(ValueError, match="learn_exponents: false"):
        train(_config(dataset, tmp_path / "r", loss_mode="quadratic"), log=lambda _: None)
    with pytest.raises(ValueError, match="loss_r1 and loss_hartree"):
        train(_config(dataset, tmp_path / "s", loss_mode="quadratic", loss_r1=1.0, model=model), log=lambda _: None)


def test_quadratic_cache_key_survives_save_and_load(dataset, tmp_path):
    """Fine-tuning from saved weights finds the forms cached for the model they came from."""
    from mlcharge_workflows.model.io import save_model
    from mlcharge_workflows.training.quadratic import float64_copy, model_key

    table, _ = build_table(["C", "Si"], [], tmp_path)
    model = DensityModel(ModelConfig(elements=["C", "Si"], ecutrho_ry={"C": 60.0, "Si": 60.0},
                                     learn_exponents=False, **SMALL), table)
    save_model(model, tmp_path / "m.pt")
    again = load_weights(tmp_path / "m.pt")
    assert model_key(float64_copy(model)) == model_key(float64_copy(again))
    other = DensityModel(ModelConfig(elements=["C", "Si"], ecutrho_ry={"C": 60.0, "Si": 60.0},
                                     learn_exponents=False, **{**SMALL, "orbital_muls": [3, 1, 1]}), table)
    assert model_key(other) != model_key(model)
