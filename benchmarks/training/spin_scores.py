"""The magnetisation starts of trained weights in pw.x's SCF error, on magnetic records.

Usage::

    .venv/bin/python benchmarks/training/spin_scores.py CONFIG.yaml MODEL.pt [SPLIT]

For every spin-polarised record of CONFIG's SPLIT (default ``test``; drawn as ``mlcharge
train`` draws it, ``magmom`` stripped, so the model sees the QE protocol's starting
moments), pw.x's SCF error per atom (Ry; ``training.metrics.scf_error_coefficients``, charge
and magnetisation terms) of three starts against the converged density:

* ``atomic``: the atomic superposition with pw.x's starting magnetisation (its own start),
* ``charge``: the learned total density with the atomic magnetisation (the shipped default),
* ``learned``: the learned total density and magnetisation.

The coefficients are scored as the model gives them (no clipping at zero), so this ranks
starts, it does not reproduce the written files to the last digit. Prints each record and
the geometric means; the magnetisation term is where the starts of magnetic cells differ.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from mlcharge_workflows.model.io import load_weights
from mlcharge_workflows.training.evaluate import pwx_ecut_ry
from mlcharge_workflows.training.metrics import geometric_mean, scf_error_coefficients
from mlcharge_workflows.training.train import TrainConfig, load_splits, prepare_sample, record_reference

STARTS = ("atomic", "charge", "learned")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    cfg, model = TrainConfig.from_yaml(argv[0]), load_weights(argv[1])
    split = argv[2] if len(argv) > 2 else "test"
    rows, moments = [], []
    for rec in load_splits(cfg, log=lambda _: None)[split]:
        ref = record_reference(model.table, rec, {})
        s = prepare_sample(model, rec, cfg.q_core, ref)
        if s.target_mag is None or not s.cell.spin:
            continue
        sad: list = []
        with torch.no_grad():
            tot, mag = model.fourier(s.cell, sad_out=sad)
        sad_tot, sad_mag = sad
        sad_tot = sad_tot.clone()
        zero = np.flatnonzero((s.cell.mill == 0).all(axis=1))
        sad_tot[zero] = s.cell.n_electrons / s.cell.volume
        starts = {"atomic": (sad_tot, sad_mag), "charge": (tot, sad_mag), "learned": (tot, mag)}
        target, target_mag = s.target.numpy(), s.target_mag.numpy()
        row = []
        for name in STARTS:
            t, m = (x.detach().numpy() for x in starts[name])
            charge, magn = scf_error_coefficients(
                t - target, m - target_mag, s.cell.mill, rec.structure.lattice.matrix,
                pwx_ecut_ry(rec), s.weight.numpy())
            row += [charge / len(rec.structure), magn / len(rec.structure)]
        def moment(c) -> float:  # the cell's total moment (μB): the G = 0 coefficient times V
            c = c.detach().numpy() if hasattr(c, "detach") else c
            return float(c[zero[0]].real * s.cell.volume) if zero.size else float("nan")

        rows.append(row)
        moments.append([moment(target_mag), moment(sad_mag), moment(mag)])
        print(f"{rec.id[:40]:40s} M {moments[-1][0]:6.2f} atomic {moments[-1][1]:6.2f} "
              f"learned {moments[-1][2]:6.2f}  " + "  ".join(
            f"{n} {row[2 * i]:.1e}+{row[2 * i + 1]:.1e}" for i, n in enumerate(STARTS)), flush=True)
    r = np.array(rows)
    print(f"{len(rows)} spin-polarised records of the {split} split; geometric means, Ry/atom:")
    for i, name in enumerate(STARTS):
        print(f"  {name:8s} charge {geometric_mean(r[:, 2 * i]):.2e}  magnetisation "
              f"{geometric_mean(r[:, 2 * i + 1]):.2e}  total {geometric_mean(r[:, 2 * i] + r[:, 2 * i + 1]):.2e}")
    mm = np.array(moments)
    print(f"  total moment |M_start - M| (μB/cell), median: atomic {np.median(abs(mm[:, 1] - mm[:, 0])):.2f}, "
          f"learned {np.median(abs(mm[:, 2] - mm[:, 0])):.2f}; start below the converged |M|: "
          f"atomic {int((abs(mm[:, 1]) < abs(mm[:, 0])).sum())}, learned {int((abs(mm[:, 2]) < abs(mm[:, 0])).sum())}")
    best = np.argmin(np.stack([r[:, 2 * i] + r[:, 2 * i + 1] for i in range(len(STARTS))], 1), 1)
    print("  records best with each start: " + ", ".join(
        f"{n} {int((best == i).sum())}" for i, n in enumerate(STARTS)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
