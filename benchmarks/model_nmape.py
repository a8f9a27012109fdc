"""Density error of several weights on the test records none of them was trained or validated on.

Usage::

    .venv/bin/python benchmarks/model_nmape.py [--dataset /work/datasets/main] [--split test]
        --model LABEL=PATH [--model LABEL=PATH ...]   (``shipped`` as PATH: the packaged weights)

Each structure is stripped of its ``magmom`` site property (each model then uses its own
default starting moments, as in its training) and predicted with ``spin="model"`` on the
record's own grid through ``training.train.evaluate``: NMAPE median/mean, the same for the
atomic superposition, the Hartree metric model/SAD, and the moment error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="/work/datasets/main")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", action="append", required=True, help="LABEL=PATH (PATH 'shipped': packaged)")
    args = ap.parse_args(argv)

    import torch
    from model_scf import _family, _fitted

    from mlcharge_workflows.model import load_model
    from mlcharge_workflows.training.dataset import DensityDataset
    from mlcharge_workflows.training.train import evaluate

    torch.set_num_threads(1)
    ds = DensityDataset(args.dataset)
    models = {}
    for spec in args.model:
        label, _, path = spec.partition("=")
        models[label] = load_model(None if path in ("", "shipped") else path)
    fitted = set().union(*(_fitted(m) for m in models.values()))
    families = {_family(i) for i in fitted}
    ids = [i for i in ds.split(args.split) if i not in fitted and _family(i) not in families]
    print(f"{len(ids)} {args.split} records none of the models was fitted on; families "
          f"{sorted({_family(i) for i in ids})}")
    print("| model | NMAPE median | NMAPE mean | SAD median | Hartree model/SAD median | moment error median (μB/cell) |")
    print("|---|---|---|---|---|---|")
    for label, model in models.items():
        recs = [ds[i] for i in ids]
        for r in recs:
            if "magmom" in r.structure.site_properties:
                r.structure = r.structure.copy()
                r.structure.remove_site_property("magmom")
        res = evaluate(model, recs)
        dm = [abs(x["magnetization_pred"] - x["magnetization_true"]) for x in res["records"] if "magnetization_true" in x]
        print(f"| {label} | {res['nmape']['median']:.2f} % | {res['nmape']['mean']:.2f} % | "
              f"{res['sad_nmape']['median']:.2f} % | {res['hartree_ratio']['median']:.3f} | "
              f"{np.median(dm) if dm else float('nan'):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
