"""Start-density error of the model and of the atomic superposition, in L1 and Hartree metrics.

Usage::

    .venv/bin/python benchmarks/start_error_metrics.py [--dataset /work/datasets/main] [--out FILE]

For every record the model covers, on the record's own pw.x grid, against its converged
density: NMAPE (L1, %) and the Hartree metric ``4π V Σ_{G≠0} |Δρ(G)|² / G²`` (e²/Å, the
quantity behind pw.x's "estimated scf accuracy"), for the model (learned ρ, unclipped) and for
the superposition of atomic densities (SAD). Prints the median ratios model/SAD for
non-magnetic and magnetic cells; per-record values go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def hartree_and_l1(delta: np.ndarray, true: np.ndarray, lattice: np.ndarray) -> tuple[float, float]:
    """(Hartree metric, NMAPE %) of a density error ``delta`` (e/Å³ on a periodic grid)."""
    from mlcharge_workflows.training.metrics import hartree_metric

    return hartree_metric(delta, lattice), float(100 * np.abs(delta).sum() / np.abs(true).sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="/work/datasets/main")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    from mlcharge_workflows.model import load_model
    from mlcharge_workflows.model.predict import _to_grid, predict_fourier
    from mlcharge_workflows.training.dataset import DensityDataset

    torch.set_num_threads(1)
    ds = DensityDataset(args.dataset)
    model = load_model(args.model)
    rows = []
    for rid in ds.ids:
        rec = ds[rid]
        try:
            model.species_of(rec.structure)
        except ValueError:
            continue
        shape = tuple(rec.grid_shape)
        f = predict_fourier(rec.structure, shape, model)
        true = rec.to_grid().total
        row = {"id": rid, "n_atoms": len(rec.structure), "magnetic": rec.magnetization is not None}
        for name in ("total", "sad_total"):
            pred = _to_grid(f[name], f["mill"], shape)
            h, l1 = hartree_and_l1(pred - true, true, rec.structure.lattice.matrix)
            row["model" if name == "total" else "sad"] = {"hartree": h, "nmape": l1}
        rows.append(row)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    print("| cells | model / SAD, NMAPE (median) | model / SAD, Hartree metric (median) | "
          "Hartree worse than SAD |")
    print("|---|---|---|---|")
    for magnetic in (False, True):
        sel = [r for r in rows if r["magnetic"] == magnetic]
        if not sel:
            continue
        hm = np.array([r["model"]["hartree"] / r["sad"]["hartree"] for r in sel])
        nm = np.array([r["model"]["nmape"] / r["sad"]["nmape"] for r in sel])
        label = "magnetic" if magnetic else "non-magnetic"
        print(f"| {label} ({len(sel)}) | {np.median(nm):.2f} | {np.median(hm):.2f} | {(hm > 1).sum()} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
