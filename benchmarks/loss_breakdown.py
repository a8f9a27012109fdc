"""Where a model's training loss goes: per record, the total-density and magnetisation parts.

Usage::

    .venv/bin/python benchmarks/loss_breakdown.py [--dataset /work/datasets/main] [--split train]
        [--model path/to/model.pt] [--top 25]

For every record of the split (the dataset manifest's), the training loss of
`mlcharge train` over the record's whole G sphere, ``∫|Δρ|² dr / N`` and ``∫|Δm|² dr / N``
(N: valence electrons), with the part of the first beyond |G| = 10 Å⁻¹; then the shares of
non-spin-polarised cells, of spin-polarised cells that converged (nearly) non-magnetic
(|M| < 0.1 μB per atom) and of magnetic ones. Input moments as in training
(`record_magmom: false`: the QE protocol's).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

torch.set_num_threads(1)

from mlcharge_workflows.model import load_model
from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.train import prepare_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="/work/datasets/main")
    ap.add_argument("--split", default="train")
    ap.add_argument("--model", default=None)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    m = load_model(args.model) if args.model else load_model()
    ds = DensityDataset(args.dataset)
    rows = []
    for rid in ds.split(args.split):
        rec = ds[rid]
        if "magmom" in rec.structure.site_properties:
            rec.structure = rec.structure.copy()
            rec.structure.remove_site_property("magmom")
        s = prepare_sample(m, rec, 1e9)
        with torch.no_grad():
            tot, mag = m.fourier(s.cell)
        w = s.weight.numpy()
        sc = s.cell.volume / s.cell.n_electrons
        d2 = w * np.abs((tot - s.target).numpy()) ** 2
        lt, lt_hi = sc * float(d2.sum()), sc * float(d2[s.cell.geom.q_np > 10].sum())
        lm = 0.0
        if mag is not None and s.target_mag is not None:
            lm = sc * float(np.sum(w * np.abs((mag - s.target_mag).numpy()) ** 2))
        moment = rec.metadata.get("total_magnetization") if rec.magnetization is not None else None
        rows.append((rid, lt, lm, lt_hi, moment, len(rec.structure)))
    total = sum(r[1] + r[2] for r in rows)
    n = len(rows)
    print(f"{n} {args.split} records, model {m.metadata.get('version', m.weights_path)}")
    print(f"mean loss {total / n:.3e}: total density {sum(r[1] for r in rows) / n:.3e} "
          f"(of which |G| > 10 Å⁻¹ {sum(r[3] for r in rows) / n:.3e}), magnetisation {sum(r[2] for r in rows) / n:.3e}")
    groups = {
        "not spin-polarised": [r for r in rows if r[4] is None],
        "spin-polarised, converged |M| < 0.1 uB/atom": [r for r in rows if r[4] is not None and abs(r[4]) < 0.1 * r[5]],
        "spin-polarised, magnetic": [r for r in rows if r[4] is not None and abs(r[4]) >= 0.1 * r[5]],
    }
    for name, sub in groups.items():
        if sub:
            print(f"  {name}: {len(sub)} records, {sum(r[1] + r[2] for r in sub) / total:.0%} of the loss; median "
                  f"total-density part {np.median([r[1] for r in sub]):.1e}, magnetisation part {np.median([r[2] for r in sub]):.1e}")
    for r in sorted(rows, key=lambda r: -(r[1] + r[2]))[: args.top]:
        print(f"  {r[0]:40s} total {r[1]:.2e} (|G|>10: {r[3]:.2e})  magnetisation {r[2]:.2e}  M {r[4]}")


if __name__ == "__main__":
    main()
