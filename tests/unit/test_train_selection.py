"""Checkpoint selection by pw.x's SCF error or NMAPE, the validation scores, and a pinned
tiny training that guards the loop's behaviour through refactors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model_train import SMALL, _config, dataset  # noqa: F401 - the synthetic dataset fixture

from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.model import DensityModel, ModelConfig, load_weights
from mlcharge_workflows.training.evaluate import pwx_ecut_ry, validation_scores
from mlcharge_workflows.training.metrics import scf_error
from mlcharge_workflows.training.train import TrainConfig, build_table, load_records, prepare_sample, train

REPO_DATA = Path(__file__).resolve().parents[2] / "data" / "qe" / "main"


def _kept_epoch(history: list[dict], key: str, relative: bool) -> int:
    best, epoch = np.inf, None
    for h in history:
        v = h[key]
        if v < (best * (1 - 1e-6) if relative else best - 1e-6):
            best, epoch = v, h["epoch"]
    return epoch


@pytest.mark.parametrize("select_by", ["scf_error", "nmape"])
def test_kept_model_is_the_best_by_the_chosen_score(dataset, tmp_path, select_by):  # noqa: F811
    metrics = train(_config(dataset, tmp_path / "r", epochs=4, select_by=select_by), log=lambda _: None)
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert all(h["val_scf_error"] > 0 and h["val_nmape"] > 0 for h in history)  # both, every epoch
    kept = _kept_epoch(history, f"val_{select_by}", relative=select_by == "scf_error")
    meta = load_weights(tmp_path / "r" / "model.pt").metadata
    assert meta["epoch"] == kept and meta["selected_by"] == select_by
    assert meta["training"]["select_by"] == select_by  # the model card says which criterion picked it
    row = history[kept]
    assert metrics["best_epoch"] == kept and metrics["select_by"] == select_by
    assert metrics["best_val_nmape"] == pytest.approx(row["val_nmape"])
    assert metrics["best_val_scf_error"] == pytest.approx(row["val_scf_error"])
    test_row = metrics["test"]["records"][0]
    assert test_row["scf_error"] > 0 and metrics["test"]["scf_error"]["count"] == 1


def test_default_and_old_configs(tmp_path, dataset):  # noqa: F811
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets: [x]\nepochs: 2\n")  # written before select_by existed
    assert TrainConfig.from_yaml(cfg).select_by == "scf_error"
    cfg.write_text("datasets: [x]\nselect_by: energy\n")
    with pytest.raises(ValueError, match="select_by"):
        TrainConfig.from_yaml(cfg)
    # a checkpoint from before select_by picked by NMAPE: resuming it by another score is refused
    out = tmp_path / "old"
    train(_config(dataset, out, epochs=2, select_by="nmape"), log=lambda _: None)
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    state = json.loads(saved["state"])
    del state["select_by"], state["best"]
    saved["state"] = json.dumps(state)
    torch.save(saved, out / "checkpoint.pt")
    with pytest.raises(ValueError, match="select_by: nmape"):
        train(_config(dataset, out, epochs=3), log=lambda _: None)
    lines: list[str] = []
    metrics = train(_config(dataset, out, epochs=3, select_by="nmape"), log=lines.append)
    assert any("resumed" in ln for ln in lines) and metrics["epochs_run"] == 3


def test_pinned_tiny_training(dataset, tmp_path):  # noqa: F811
    """Losses and validation NMAPE of a tiny run with every sampled loss term.

    Pinned from the code before train.py was split into modules (commit f4e960a, torch CPU,
    one thread; the split left them bit-identical): a change here is a change of behaviour.
    """
    cfg = _config(dataset, tmp_path / "p", epochs=3, loss_hartree=0.3, loss_r1=0.1, select_by="nmape")
    metrics = train(cfg, log=lambda _: None)
    history = json.loads((tmp_path / "p" / "history.json").read_text())
    np.testing.assert_allclose(
        [[h["train_loss"], h["val_nmape"]] for h in history],
        [[0.00504507590085268, 2.366038532979389], [0.0029259504517540336, 1.4903808169981168],
         [0.001508998917415738, 0.7752483378765793]],
        rtol=1e-4,
    )
    assert metrics["test"]["records"][0]["nmape"] == pytest.approx(0.6872981953981158, rel=1e-4)


@pytest.mark.skipif(not REPO_DATA.is_dir(), reason="the repository's data/qe/main")
def test_validation_scores_match_the_grid_functional(tmp_path):
    """The training's half-sphere SCF error of a real magnetic record equals :func:`scf_error`
    on the grids (the written prediction against the record's converged density)."""
    from mlcharge_workflows.training.evaluate import _written_density

    splits = load_records(TrainConfig(datasets=[REPO_DATA], max_atoms=2))
    rec = next(r for r in splits["train"] if r.magnetization is not None)
    elements = sorted({s.specie.symbol for s in rec.structure})
    table, ecut = build_table(elements, [rec], tmp_path)
    torch.manual_seed(0)
    model = DensityModel(ModelConfig(elements=elements, ecutrho_ry=ecut, **SMALL), table)
    sample = prepare_sample(model, rec, 10.0)
    scores = validation_scores(model, sample)
    assert scores["scf_error_magnetization"] > 0 and scores["scf_error_charge"] > 0
    assert pwx_ecut_ry(rec) == 4 * rec.metadata["ecutwfc_ry"]
    rho, m = _written_density(model, sample, spin=True)
    pred = DensityGrid(rec.structure, rho, m)
    expected = scf_error(pred, rec.to_grid(), pwx_ecut_ry(rec)) / len(rec.structure)
    assert scores["scf_error"] == pytest.approx(expected, rel=1e-4)


REAL_DATA = REPO_DATA.parent / "real"


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the repository's data/qe/real")
def test_exclude_prototypes_holds_out_every_record_of_them():
    """``exclude_prototypes`` leaves a benchmark's prototypes out of every split, and only them."""
    from mlcharge_workflows.training.pack import parse_generated_id

    def protos(splits):
        return [(parse_generated_id(r.id) or {}).get("prototype") for s in splits.values() for r in s]

    everything = protos(load_records(TrainConfig(datasets=[REAL_DATA])))
    held = sorted({p for p in everything if p})[:2]
    lines = []
    kept = protos(load_records(TrainConfig(datasets=[REAL_DATA], exclude_prototypes=held), lines.append))
    assert held and not set(held) & set(kept)
    assert len(kept) == len(everything) - sum(p in held for p in everything)
    assert any("left out" in line and held[0] in line for line in lines)
