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
