"""Validation scores of trained weights beside the atomic superposition, record by record.

Usage::

    .venv/bin/python benchmarks/training/val_scores.py CONFIG.yaml [MODEL.pt]

The records of CONFIG's validation split (as ``mlcharge train`` draws it, ``magmom``
stripped), each scored as the training scores it (``training.evaluate.validation_scores``:
NMAPE and pw.x's SCF error per atom, charge and magnetisation terms) and the model's atomic
superposition alone beside it (NMAPE and the charge term; its magnetisation is pw.x's
starting moment, which this does not rebuild). MODEL defaults to CONFIG's output model.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mlcharge_workflows.model.io import load_weights
from mlcharge_workflows.training.evaluate import pwx_ecut_ry, validation_scores
from mlcharge_workflows.training.metrics import geometric_mean, nmape, scf_error_terms
from mlcharge_workflows.training.train import TrainConfig, load_splits, prepare_sample, record_reference, sad_grid


def main(argv: list[str]) -> int:
    cfg = TrainConfig.from_yaml(argv[0])
    model = load_weights(argv[1] if len(argv) > 1 else Path(cfg.output) / "model.pt")
    rows = []
    for rec in load_splits(cfg, log=lambda _: None)["val"]:
        ref = record_reference(model.table, rec, {})
        scores = validation_scores(model, prepare_sample(model, rec, cfg.q_core, ref))
        true, sad = rec.to_grid(), sad_grid(model, rec, ref)
        sad_charge, _ = scf_error_terms(sad - true.total, None, rec.structure.lattice.matrix, pwx_ecut_ry(rec))
        n = len(rec.structure)
        rows.append([scores["nmape"], nmape(sad, true.total), scores["scf_error_charge"], sad_charge / n,
                     scores["scf_error_magnetization"]])
        print(f"{rec.id:40s} {rec.structure.composition.reduced_formula:9s} NMAPE model {rows[-1][0]:6.2f}% "
              f"SAD {rows[-1][1]:6.2f}%  SCF charge model {rows[-1][2]:.2e} SAD {rows[-1][3]:.2e}  "
              f"magnetisation {rows[-1][4]:.2e} Ry/atom")
    r = np.array(rows)
    print(f"{len(rows)} records: mean NMAPE model {r[:, 0].mean():.3f}% SAD {r[:, 1].mean():.3f}%; "
          f"geometric-mean SCF charge term model {geometric_mean(r[:, 2]):.3e} SAD {geometric_mean(r[:, 3]):.3e} Ry/atom")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
