"""Training losses of one sample (``loss_mode: sampled``) and the exact quadratic forms
(``loss_mode: quadratic``). With ``N`` the electron count:

* ``loss_g2``: ``V * sum_G |c_pred - c_true|² / N`` over the record's G sphere, which by
  Parseval is ``∫ |rho_pred - rho_true|² dr / N`` (``m3 >= 0`` half, doubled weights);
* ``loss_r1``: ``sum |rho_pred - rho_true| / sum |rho_true|`` on the engine's grid (NMAPE/100);
* ``loss_hartree``: ``4π V * sum_{G≠0, |G| <= q_core} w |c_pred - c_true|² / |G|² / N``, the
  Hartree energy of the error (the charge part of pw.x's "estimated scf accuracy",
  :func:`mlcharge_workflows.training.metrics.scf_error`); the magnetisation has no Hartree term;
* magnetisation terms alike, scaled by ``magnetization_weight``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from mlcharge_workflows.model.core import DensityModel
from mlcharge_workflows.training.config import TrainConfig
from mlcharge_workflows.training.samples import Sample, half_to_grid


def g_space_errors(model, s: Sample, coeffs, cfg: TrainConfig, rows: np.ndarray, cache: bool, hartree: bool):
    """``(V sum_rows w |Δc|² / N`` with the magnetisation, ``4π V sum_rows,G≠0 w |Δc|²/|G|² / N``)."""
    tot, mag = model.fourier(s.cell, coeffs, cache=cache, rows=rows)
    rows_t = torch.as_tensor(rows, device=s.weight.device)
    w = s.weight[rows_t]
    d2 = (tot - s.target[rows_t]).abs() ** 2
    err = (w * d2).sum()
    if mag is not None and s.target_mag is not None:
        err = err + cfg.magnetization_weight * (w * (mag - s.target_mag[rows_t]).abs() ** 2).sum()
    scale = s.cell.volume / s.cell.n_electrons
    if not hartree:
        return scale * err, None
    q = torch.as_tensor(s.cell.geom.q_np[rows], dtype=w.dtype, device=w.device)
    inv_q2 = torch.where(q > 1e-8, 1.0 / q.clamp_min(1e-8) ** 2, torch.zeros_like(q))
    return scale * err, 4 * math.pi * scale * (w * inv_q2 * d2).sum()


def sample_loss(
    model: DensityModel, s: Sample, coeffs, cfg: TrainConfig, cache: bool, rng: np.random.Generator
) -> torch.Tensor:
    """The configured loss of one sample.

    The G-space terms take every G with ``|G| <= q_core`` (where nearly all the correction
    lives); the L2 term adds ``n_extra`` random others, reweighted so the estimate stays
    unbiased. The Hartree term stays on the core rows (its 1/G² weight makes the rest negligible).
    """
    loss = torch.zeros((), dtype=s.weight.dtype, device=s.weight.device)
    if cfg.loss_g2 or cfg.loss_hartree:
        g2, hartree = g_space_errors(model, s, coeffs, cfg, s.core, cache, bool(cfg.loss_hartree))
        loss = loss + cfg.loss_g2 * g2
        if hartree is not None:
            loss = loss + cfg.loss_hartree * hartree
    if cfg.loss_g2 and len(s.rest) and cfg.n_extra:
        pick = np.sort(rng.choice(s.rest, size=min(cfg.n_extra, len(s.rest)), replace=False))
        g2, _ = g_space_errors(model, s, coeffs, cfg, pick, False, False)
        loss = loss + cfg.loss_g2 * g2 * (len(s.rest) / len(pick))
    if cfg.loss_r1:
        tot, _ = model.fourier(s.cell, coeffs)
        rho = half_to_grid(tot, s.cell.mill, s.grid_shape)
        loss = loss + cfg.loss_r1 * (rho - s.true_grid).abs().sum() / s.true_abs
    return loss


def quadratic_losses(model: DensityModel, fit: list[Sample], cfg: TrainConfig, device, log) -> dict:
    """The exact per-record losses of ``loss_mode: quadratic`` (cached on disk)."""
    from mlcharge_workflows.training.quadratic import cached_quadratic_loss, check_model, float64_copy

    check_model(model)
    if cfg.loss_r1 or cfg.loss_hartree:
        raise ValueError("loss_mode 'quadratic' is the exact loss_g2: set loss_r1 and loss_hartree to 0")
    m64 = float64_copy(model)  # once: copying the network costs ~1 s
    cache = Path(cfg.quadratic_cache) if cfg.quadratic_cache else Path(cfg.output) / "quadratic"
    t0 = time.perf_counter()
    out = {}
    for i, s in enumerate(fit):
        rec = s.record
        half = rec.mill[:, 2] >= 0
        mag = None if rec.magnetization is None else rec.magnetization[half]
        out[s.id] = cached_quadratic_loss(m64, rec, rec.mill[half], rec.total[half], mag, cache).to(device)
        if (i + 1) % 100 == 0 or i + 1 == len(fit):
            log(f"quadratic loss forms: {i + 1}/{len(fit)} records ({time.perf_counter() - t0:.0f} s)")
    return out
