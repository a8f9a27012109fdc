"""How far a network's loss is above the floor of its own basis, per record, from the cached quadratic forms.

Usage::

    .venv/bin/python benchmarks/loss_excess.py CONFIG.yaml WEIGHTS.pt [--every 10] [--split train]

``CONFIG.yaml``: a ``loss_mode: quadratic`` training config (its datasets, splits and
``quadratic_cache``; forms missing from the cache are computed). For every ``--every``-th
record of the split: the loss ``(V/N)(x^T P x - 2 q^T x + r)`` of the total density and of the
magnetisation at the network's coefficients, at the best coefficients of the same orbitals
(the least-squares floor: eigen-solve of ``P``, eigenvalues below 1e-10 of the largest
dropped) and with no orbitals at all (the atomic superposition), then the means.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("weights")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--split", default="train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mlcharge_workflows.model.io import load_weights
    from mlcharge_workflows.training.quadratic import cached_quadratic_loss, float64_copy
    from mlcharge_workflows.training.train import TrainConfig, load_records

    cfg = TrainConfig.from_yaml(args.config)
    model = load_weights(args.weights).eval()
    m64 = float64_copy(model)
    cache = Path(cfg.quadratic_cache) if cfg.quadratic_cache else Path(cfg.output) / "quadratic"
    rows = []
    print("record | total: network floor SAD | magnetisation: network floor SAD")
    for rec in load_records(cfg, lambda *_: None)[args.split][:: args.every]:
        if "magmom" in rec.structure.site_properties:
            rec.structure = rec.structure.copy()
            rec.structure.remove_site_property("magmom")
        half = rec.mill[:, 2] >= 0
        mag = None if rec.magnetization is None else rec.magnetization[half]
        ql = cached_quadratic_loss(m64, rec, rec.mill[half], rec.total[half], mag, cache)
        with torch.no_grad():
            coeffs = model.orbital_coefficients([model.prepare(rec.structure, spin=mag is not None)])[0]
        out = []
        for block, c in ((ql.total, coeffs[0]), (ql.magnetization, coeffs[1])):
            if block is None:
                out += [0.0, 0.0, 0.0]
                continue
            net = float(block.value(ql.flatten(c).double())) * ql.scale
            w, u = np.linalg.eigh(block.P.numpy())
            keep = w > w.max() * 1e-10
            proj = u[:, keep].T @ block.q.numpy()
            floor = (block.r - float(proj @ (proj / w[keep]))) * ql.scale
            out += [net, floor, block.r * ql.scale]
        rows.append(out)
        print(rec.id, " ".join(f"{v:.2e}" for v in out), flush=True)
    a = np.array(rows)
    print(f"mean total: network {a[:, 0].mean():.2e}  floor {a[:, 1].mean():.2e}  SAD {a[:, 2].mean():.2e}")
    print(f"mean magnetisation: network {a[:, 3].mean():.2e}  floor {a[:, 4].mean():.2e}  SAD {a[:, 5].mean():.2e}")


if __name__ == "__main__":
    main()
