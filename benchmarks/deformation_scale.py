"""Is the learned deformation shrunk? Scores SAD + α (ML − SAD) against the converged density.

A regression trained on a squared error shrinks its prediction towards the mean when it is
unsure; if the shipped model did that, a start with α > 1 would be closer to the answer (and
the non-SCF band gaps, too large from both starts, would move the right way). This scores
α in ALPHAS on a split of a training config's records, as ``mlcharge train`` draws it
(``magmom`` stripped), in NMAPE and pw.x's SCF error (charge term, Ry per atom):

    .venv/bin/python benchmarks/deformation_scale.py benchmarks/training/repo_all.yaml \
        src/mlcharge_workflows/model/weights/default.pt test

The density is clipped at zero and renormalised to the electron count, as the writers do.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from mlcharge_workflows.model.io import load_weights
from mlcharge_workflows.training.evaluate import _written_density, pwx_ecut_ry, sad_grid
from mlcharge_workflows.training.metrics import geometric_mean, nmape, scf_error_terms
from mlcharge_workflows.training.train import TrainConfig, load_splits, prepare_sample, record_reference

ALPHAS = (0.8, 1.0, 1.1, 1.2, 1.3, 1.5, 1.7)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    cfg, model, split = TrainConfig.from_yaml(argv[0]), load_weights(argv[1]), argv[2]
    errors_l1, errors_scf = [], []
    for rec in load_splits(cfg, log=lambda _: None)[split]:
        ref = record_reference(model.table, rec, {})
        sample = prepare_sample(model, rec, cfg.q_core, ref)
        ml, _ = _written_density(model, sample, spin=False)
        sad, true = sad_grid(model, rec, ref), rec.to_grid().total
        row_l1, row_scf = [], []
        for a in ALPHAS:
            rho = np.maximum(sad + a * (ml - sad), 0.0)
            rho *= sample.cell.n_electrons / (rho.mean() * sample.cell.volume)
            row_l1.append(nmape(rho, true))
            charge, _ = scf_error_terms(rho - true, None, rec.structure.lattice.matrix, pwx_ecut_ry(rec))
            row_scf.append(charge / len(rec.structure))
        errors_l1.append(row_l1)
        errors_scf.append(row_scf)
        print(f"{rec.id[:40]:40s} NMAPE " + " ".join(f"{x:5.2f}" for x in row_l1), flush=True)
    l1, scf = np.array(errors_l1), np.array(errors_scf)
    print(f"{len(l1)} records of the {split} split")
    print("alpha                         " + " ".join(f"{a:8.2f}" for a in ALPHAS))
    print("mean NMAPE (%)                " + " ".join(f"{x:8.3f}" for x in l1.mean(0)))
    print("median NMAPE (%)              " + " ".join(f"{x:8.3f}" for x in np.median(l1, 0)))
    print("SCF error, geometric mean     " + " ".join(f"{geometric_mean(scf[:, i]):8.2e}" for i in range(len(ALPHAS))))
    print("records best at each alpha    " + " ".join(f"{n:8d}" for n in np.bincount(scf.argmin(1), minlength=len(ALPHAS))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
