"""Size against accuracy of a dataset's stored density sphere (docs/dataset.md, "Storage cutoff").

For every record of a dataset stored with pw.x's full sphere, keep only ``|G|² <= cut``
for each cutoff, measure the truncation NMAPE (total and magnetisation) on pw.x's grid and
the size of the record file it would make.

    python benchmarks/data_storage_cutoff.py src/mlcharge_workflows/data/sample
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from mlcharge_workflows.training.dataset import DensityDataset, DensityRecord
from mlcharge_workflows.training.storage import stored_coefficients

CUTS = (80, 120, 160, 200, 250, 300, None)


def main(root: str) -> None:
    ds = DensityDataset(root)
    rows = {c: {"nmape": [], "mag": [], "bytes": 0, "truncated": 0} for c in CUTS}
    tmp = Path(tempfile.mkdtemp())
    for rid in ds.ids:
        rec = ds[rid]
        full = rec.metadata["ecutrho_ry"]
        grid = rec.to_grid()
        for c in CUTS:
            cut = None if c is None or c >= full else c
            mill, tot, mag, st = stored_coefficients(grid, cut, full)
            trial = DensityRecord(rid, rec.structure, rec.grid_shape, mill, tot, mag)
            path = trial.save(tmp / "r.npz")
            row = rows[c]
            row["bytes"] += path.stat().st_size
            if cut is not None:
                row["truncated"] += 1
                row["nmape"].append(st["truncation_nmape_total_percent"])
                if st["truncation_nmape_magnetization_percent"] is not None:
                    row["mag"].append(st["truncation_nmape_magnetization_percent"])
    print("| stored cutoff (Ry) | records truncated | mean NMAPE (%) | max NMAPE (%) "
          "| mean magnetisation NMAPE (%) | size (kB) |")
    print("|---|---|---|---|---|---|")
    for c, r in rows.items():
        n, m = r["nmape"], r["mag"]
        print(f"| {c or 'full sphere'} | {r['truncated']} | {np.mean(n) if n else 0:.3g} | "
              f"{max(n) if n else 0:.3g} | {np.mean(m) if m else 0:.3g} | {r['bytes'] // 1000} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "src/mlcharge_workflows/data/sample")
