"""Training of the density model: ``mlcharge train CONFIG.yaml``.

The loop only; each concept has its module:

* :mod:`~mlcharge_workflows.training.config`: :class:`TrainConfig` (the YAML keys);
* :mod:`~mlcharge_workflows.training.records`: the records by split (:func:`load_records`);
* :mod:`~mlcharge_workflows.training.references`: the atomic reference of each record
  (:func:`build_table`, :func:`record_reference`);
* :mod:`~mlcharge_workflows.training.samples`: a record prepared for training (:class:`Sample`);
* :mod:`~mlcharge_workflows.training.losses`: the configured loss (:func:`sample_loss`) and
  the exact quadratic forms;
* :mod:`~mlcharge_workflows.training.evaluate`: validation scores and test metrics.

Shuffling uses ``default_rng([seed, epoch])``, so a resumed run repeats the epochs it would
have run. Every name those modules define that callers used to import from here still
imports from here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mlcharge_workflows.model.core import DensityModel, ModelConfig
from mlcharge_workflows.model.io import save_model
from mlcharge_workflows.training.config import TrainConfig
from mlcharge_workflows.training.dataset import DensityRecord
from mlcharge_workflows.training.evaluate import (
    aggregate_validation,
    evaluate,
    quick_nmape,
    sad_grid,
    sad_nmape,
    validation_scores,
)
from mlcharge_workflows.training.losses import g_space_errors, quadratic_losses, sample_loss
from mlcharge_workflows.training.records import family, hash_split, load_records
from mlcharge_workflows.training.references import (
    build_table,
    median_starting_magnetization,
    record_pseudopotentials,
    record_reference,
)
from mlcharge_workflows.training.samples import Sample, half_to_grid, prepare_sample, usable

#: Old private name (tests and benchmarks import it from here).
_errors = g_space_errors

__all__ = [
    "Sample",
    "TrainConfig",
    "build_table",
    "evaluate",
    "family",
    "half_to_grid",
    "hash_split",
    "load_records",
    "prepare_sample",
    "quick_nmape",
    "record_pseudopotentials",
    "record_reference",
    "sad_grid",
    "sad_nmape",
    "sample_loss",
    "train",
]

#: Bytes of cached structure-factor phases the training set may hold in memory.
PHASE_CACHE_BYTES = 1.5e9


def _initial_model(cfg: TrainConfig, records: list[DensityRecord]) -> DensityModel:
    """The weights named by ``cfg.init_weights``, in training mode, checked against the data."""
    from mlcharge_workflows.model.io import DEFAULT_WEIGHTS, load_weights

    if cfg.model:
        raise ValueError(
            f"init_weights fine-tunes an existing model, whose architecture is fixed: remove the "
            f"`model` overrides {sorted(cfg.model)}"
        )
    path = DEFAULT_WEIGHTS if cfg.init_weights == "default" else Path(cfg.init_weights)
    model = load_weights(path)
    have = set(model.config.elements)
    if cfg.elements and set(cfg.elements) != have:
        raise ValueError(f"elements {sorted(cfg.elements)} differ from those of {path}: {sorted(have)}")
    missing = sorted({s.specie.symbol for r in records for s in r.structure} - have)
    if missing:
        raise ValueError(
            f"the data holds elements {missing} that the weights {path} do not cover (they cover "
            f"{', '.join(sorted(have))}); train from scratch with init_weights unset to add elements"
        )
    model.metadata = {"init_weights": str(path), "init_version": model.metadata.get("version")}
    return model.float().train()


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no GPU is available")
    return torch.device(cfg.device)


def load_splits(cfg: TrainConfig, log) -> dict[str, list[DensityRecord]]:
    """The records by split as training sees them: without ``record_magmom`` stripped of their
    ``magmom`` (the protocol's starting moments then apply, as in the workflows)."""
    splits = load_records(cfg, log)
    if not cfg.record_magmom:
        for rec in splits["train"] + splits["val"] + splits["test"]:
            # the protocol's moments, in training and test, as in the workflows
            if "magmom" in rec.structure.site_properties:
                rec.structure = rec.structure.copy()
                rec.structure.remove_site_property("magmom")
    return splits


def _build_model(cfg: TrainConfig, records: list[DensityRecord], out: Path, device, log) -> DensityModel:
    """The fine-tuned weights (``init_weights``), else a new model on the data's elements."""
    if cfg.init_weights:
        model = _initial_model(cfg, records).to(device)
        log(f"fine-tuning from {cfg.init_weights} (version {model.metadata.get('init_version')})")
        return model
    elements = cfg.elements or sorted({s.specie.symbol for r in records for s in r.structure})
    table, ecut = build_table(elements, records, out)
    overrides = dict(cfg.model)
    if cfg.record_magmom:
        overrides.setdefault("starting_magnetization", median_starting_magnetization(records, table))
    else:
        from mlcharge_workflows.engines.qe.sets import QEProtocol

        start = QEProtocol().starting_magnetization
        overrides.setdefault("starting_magnetization", {el: v for el, v in start.items() if el in elements})
    model_cfg = ModelConfig(elements=elements, ecutrho_ry=ecut, **overrides)
    return DensityModel(model_cfg, table).to(device)


def _prepare_samples(model: DensityModel, splits: dict, cfg: TrainConfig, log) -> dict[str, list[Sample]]:
    """Training and validation samples; records whose reference cannot be built are skipped
    (logged), test records alike (``splits['test']`` is filtered in place)."""
    samples: dict[str, list[Sample]] = {}
    refs: dict = {}
    for name in ("train", "val"):
        samples[name] = []
        for rec in splits[name]:
            try:
                ref = record_reference(model.table, rec, refs)
                samples[name].append(prepare_sample(model, rec, cfg.q_core, ref))
            except ValueError as exc:
                log(f"skipping {rec.id}: {exc}")
    splits["test"] = [r for r in splits["test"] if usable(model, r, refs, log)]
    return samples


def _exact_losses(model: DensityModel, fit: list[Sample], cfg: TrainConfig, device, log) -> dict:
    """The quadratic forms of ``loss_mode: quadratic`` (``{}`` otherwise)."""
    own = sorted(s.id for s in fit if s.cell.table is not None)
    if own:
        log(f"{len(own)} records fitted against their own pseudopotentials' atomic densities")
    if cfg.loss_mode != "quadratic":
        return {}
    if own:
        raise ValueError(
            f"loss_mode 'quadratic' fits against the training table only; records {own[:3]} "
            "use other pseudopotentials: use loss_mode 'sampled'"
        )
    return quadratic_losses(model, fit, cfg, device, log)


def _phase_cache_plan(fit: list[Sample]) -> dict[str, bool]:
    """Which samples keep their core-row phases in memory (first come, within the budget)."""
    budget = PHASE_CACHE_BYTES
    cache_ok = {}
    for s in fit:
        need = len(s.core) * len(s.cell.species) * 8 * 2
        cache_ok[s.id] = need <= budget
        budget -= need if cache_ok[s.id] else 0
    return cache_ok


def _resume(ckpt: Path, model, opt, sched, device, log) -> dict:
    """The loop state of ``checkpoint.pt`` (model, optimiser and scheduler restored in place)."""
    saved = torch.load(ckpt, map_location=device, weights_only=True)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    state = json.loads(saved["state"])
    log(f"resumed from {ckpt} at epoch {state['epoch']}")
    return state


def _save_checkpoint(ckpt: Path, model, opt, sched, state: dict) -> None:
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
         "state": json.dumps(state)},
        ckpt.with_suffix(".tmp"),
    )
    ckpt.with_suffix(".tmp").replace(ckpt)


def _cosine_lr(cfg: TrainConfig, state: dict, epoch: int) -> float:
    n_cos = state.get("cosine_epochs") or cfg.epochs
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(epoch / max(n_cos - 1, 1), 1.0)))


def _train_epoch(model, fit: list[Sample], cfg: TrainConfig, epoch: int, opt, quad: dict, cache_ok: dict) -> list[float]:
    """One pass over the shuffled training samples; the batch losses."""
    model.train()
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(fit))
    losses = []
    for start in range(0, len(order), cfg.batch_size):
        batch = [fit[i] for i in order[start : start + cfg.batch_size]]
        coeffs = model.orbital_coefficients([s.cell for s in batch])
        rng = np.random.default_rng([cfg.seed, epoch, start])
        if quad:
            loss = sum(cfg.loss_g2 * quad[s.id](c, cfg.magnetization_weight) for s, c in zip(batch, coeffs)) / len(batch)
        else:
            loss = sum(
                sample_loss(model, s, c, cfg, cache_ok[s.id], rng) for s, c in zip(batch, coeffs)
            ) / len(batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite training loss at epoch {epoch} ({[s.id for s in batch]})")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


class _Clock:
    """Wall time of the run and of the loop (for the cosine schedule under ``max_minutes``)."""

    def __init__(self, first_epoch: int = 0):
        self.start = self.loop = time.perf_counter()
        self.first_epoch = first_epoch

    def minutes(self) -> float:
        return (time.perf_counter() - self.start) / 60


def _improves(value: float, best: float, select_by: str) -> bool:
    """NMAPE (%) must drop by 1e-6 points; the SCF error (Ry/atom) by a factor 1 - 1e-6."""
    return value < (best - 1e-6 if select_by == "nmape" else best * (1 - 1e-6))


def _validate(model, val: list[Sample], cfg: TrainConfig, epoch: int, train_loss: float,
              state: dict, sched, clock: _Clock, best_path: Path, log) -> tuple[dict, bool]:
    """Validation scores of this epoch; steps the plateau schedule, keeps the best model.

    Both scores are computed; ``cfg.select_by`` picks the one that decides. Without
    validation records the training loss stands in. Returns the scores (history entry
    keys) and whether the model improved.
    """
    scores = aggregate_validation([validation_scores(model, s) for s in val]) if val else {"val_nmape": train_loss}
    value = scores.get(f"val_{cfg.select_by}", train_loss)
    if cfg.lr_schedule == "plateau":
        sched.step(train_loss if cfg.train_on_val else value)
    elif "cosine_epochs" not in state:  # first validated epoch of a timed run: how many fit the budget
        per_epoch = (time.perf_counter() - clock.loop) / (epoch + 1 - clock.first_epoch)
        left = cfg.max_minutes * 60 - (time.perf_counter() - clock.start)
        fit_epochs = epoch + 1 + int(0.95 * left / max(per_epoch, 1e-3))
        state["cosine_epochs"] = max(2, min(cfg.epochs, fit_epochs))
        log(f"cosine schedule over {state['cosine_epochs']} epochs ({per_epoch:.1f} s per epoch with validation)")
    improved = _improves(value, state["best_val"], cfg.select_by)
    kept = {"epoch": epoch, **{k: v for k, v in scores.items() if k in ("val_nmape", "val_scf_error")}}
    if cfg.train_on_val:  # the validation split is fitted: keep the last epoch
        state["best_val"], state["bad_epochs"] = min(value, state["best_val"]), 0
        state["best"] = {**kept, "selected_by": "last epoch (train_on_val)"}
        save_model(model, best_path, {"epoch": epoch, "selected_by": "last epoch (train_on_val)",
                                      **{f"{k}_in_training_set": v for k, v in kept.items() if k != "epoch"}})
    elif improved:
        state["best_val"], state["bad_epochs"] = value, 0
        state["best"] = {**kept, "selected_by": cfg.select_by}
        save_model(model, best_path, {**kept, "selected_by": cfg.select_by})
    else:
        state["bad_epochs"] += 1
    return scores, improved


def _check_resumed_criterion(state: dict, cfg: TrainConfig) -> None:
    """A checkpoint keeps the criterion its best model was picked by (runs before
    ``select_by`` existed picked by NMAPE); another one would compare different scores."""
    saved = state.setdefault("select_by", "nmape" if state["epoch"] else cfg.select_by)
    if saved != cfg.select_by:
        raise ValueError(
            f"the checkpoint in {cfg.output} picked its best model by {saved!r}, the config says "
            f"select_by: {cfg.select_by!r}: set select_by: {saved} to resume, or train into a new output"
        )


def _scores_text(scores: dict) -> str:
    parts = []
    if scores.get("val_nmape") is not None:
        parts.append(f"validation NMAPE {scores['val_nmape']:.3f}%")
    if scores.get("val_scf_error") is not None:
        parts.append(f"SCF error {scores['val_scf_error']:.3e} Ry/atom")
    return ", ".join(parts) or "no validation scores"


def _stop_reason(cfg: TrainConfig, state: dict, clock: _Clock) -> str | None:
    n_cos = state.get("cosine_epochs", cfg.epochs)
    if cfg.lr_schedule == "cosine" and state["epoch"] >= n_cos:
        return f"cosine schedule complete ({n_cos} epochs)"
    if state["bad_epochs"] >= cfg.patience:
        return f"early stopping ({cfg.patience} epochs without improvement)"
    if cfg.max_minutes and clock.minutes() > cfg.max_minutes:
        return f"time budget of {cfg.max_minutes} min"
    return None


def _finish(cfg: TrainConfig, model, state: dict, splits: dict, samples: dict, fit: list[Sample],
            stop_reason: str, clock: _Clock, out: Path, log) -> dict:
    """Test metrics of the best model; ``model.pt`` (with the model card's training record),
    ``model_last.pt`` (the last epoch's weights, the same record), ``metrics.json`` and
    ``history.json``."""
    from mlcharge_workflows.model.io import load_weights

    best_path = out / "model.pt"
    best = load_weights(best_path)
    test = evaluate(best, splits["test"]) if splits["test"] else {"nmape": {"count": 0}}
    chosen = state.get("best", {})
    metrics = {
        "select_by": chosen.get("selected_by", state.get("select_by", cfg.select_by)),
        "best_epoch": chosen.get("epoch"),
        "best_val_nmape": chosen.get("val_nmape", state["best_val"]),
        "best_val_scf_error": chosen.get("val_scf_error"),
        "epochs_run": state["epoch"],
        "stop_reason": stop_reason,
        "test": test,
        "n_train": len(fit),
        "n_val": len(samples["val"]),
        "train_on_val": cfg.train_on_val,
        "record_ids": {name: sorted(f"{Path(r.metadata['_dataset']).name}/{r.id}" for r in recs)
                       for name, recs in splits.items()},
        "n_test": len(splits["test"]),
        "elements": list(model.config.elements),
        "train_config": json.loads(cfg.model_dump_json()),
        "cosine_epochs": state.get("cosine_epochs"),
        "minutes": clock.minutes(),
    }
    init = {k: v for k, v in model.metadata.items() if k.startswith("init_")}
    training = {k: v for k, v in metrics.items() if k != "test"}
    save_model(best, best_path, {**best.metadata, **init, "training": training,
                                 "test_nmape": test["nmape"], "test_sad_nmape": test.get("sad_nmape"),
                                 "test_scf_error": test.get("scf_error")})
    # the last epoch's weights too (the end of a cosine schedule is often the better SCF start)
    last = evaluate(model, splits["test"]) if splits["test"] else {"nmape": {"count": 0}}
    scored = [h for h in state["history"] if "val_nmape" in h]
    final = {"epoch": state["epoch"] - 1, "selected_by": "last epoch",  # epochs counted from 0, as kept ones
             **{k: v for k, v in (scored[-1] if scored else {}).items() if k in ("val_nmape", "val_scf_error")}}
    save_model(model, out / "model_last.pt", {**{k: v for k, v in best.metadata.items()
                                                 if k not in ("val_nmape", "val_scf_error")}, **final, **init,
                                              "training": {**training, "kept": "last epoch",
                                                           "kept_epoch": state["epoch"]},
                                              "test_nmape": last["nmape"], "test_sad_nmape": last.get("sad_nmape"),
                                              "test_scf_error": last.get("scf_error")})
    metrics["last_epoch_test"] = last
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "history.json").write_text(json.dumps(state["history"], indent=1))
    if test["nmape"].get("count"):
        log(f"test NMAPE: mean {test['nmape']['mean']:.3f}%  median {test['nmape']['median']:.3f}%  "
            f"(SAD alone: mean {test['sad_nmape']['mean']:.3f}%) on {test['nmape']['count']} structures")
    return metrics


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) as configured; returns the final metrics. Writes into ``cfg.output``.

    Files: ``checkpoint.pt`` (every epoch, for resume), ``model.pt`` (best validation
    weights, loadable with ``load_model``), ``model_last.pt`` (the last epoch's), ``metrics.json`` and ``history.json``.
    """
    clock = _Clock()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)

    splits = load_splits(cfg, log)
    model = _build_model(cfg, splits["train"] + splits["val"] + splits["test"], out, device, log)
    log(
        f"data: {len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test "
        f"records; elements {', '.join(model.config.elements)}; {sum(p.numel() for p in model.parameters())} "
        f"parameters; device {device}"
    )
    samples = _prepare_samples(model, splits, cfg, log)
    fit = samples["train"] + (samples["val"] if cfg.train_on_val else [])
    quad = _exact_losses(model, fit, cfg, device, log)
    cache_ok = _phase_cache_plan(fit)

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(cfg.patience // 4, 2), min_lr=cfg.lr_min)
    state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": [], "select_by": cfg.select_by}
    ckpt, best_path = out / "checkpoint.pt", out / "model.pt"
    if cfg.resume and ckpt.is_file():
        state = _resume(ckpt, model, opt, sched, device, log)
        _check_resumed_criterion(state, cfg)
    if cfg.lr_schedule == "cosine" and not cfg.max_minutes:
        state.setdefault("cosine_epochs", cfg.epochs)

    stop_reason = "epochs"
    clock.loop, clock.first_epoch = time.perf_counter(), state["epoch"]
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        if cfg.lr_schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = _cosine_lr(cfg, state, epoch)
        losses = _train_epoch(model, fit, cfg, epoch, opt, quad, cache_ok)
        model.eval()
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        improved = False
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:  # else: no early-stopping decision
            scores, improved = _validate(model, samples["val"], cfg, epoch, float(np.mean(losses)),
                                         state, sched, clock, best_path, log)
            entry.update(scores)
        state["epoch"] = epoch + 1
        entry.update(lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        state["history"].append(entry)
        _save_checkpoint(ckpt, model, opt, sched, state)
        val_text = ""
        if "val_nmape" in entry:  # '*': the kept model improved (by select_by)
            scf = f"  val_SCF {entry['val_scf_error']:.3e} Ry/atom" if "val_scf_error" in entry else ""
            val_text = f"val_NMAPE {entry['val_nmape']:.3f}%{scf}{' *' if improved else ''}  "
        log(
            f"epoch {epoch + 1:4d}/{cfg.epochs}  train_loss {np.mean(losses):.4e}  {val_text}"
            f"lr {opt.param_groups[0]['lr']:.1e}  {time.perf_counter() - t0:.1f}s"
        )
        reason = _stop_reason(cfg, state, clock)
        if reason:
            stop_reason = reason
            break
    best = state.get("best", {})
    log(f"stopped: {stop_reason}; kept epoch {best.get('epoch', '-')} (by {best.get('selected_by', cfg.select_by)}): "
        + _scores_text(best))
    return _finish(cfg, model, state, splits, samples, fit, stop_reason, clock, out, log)
