"""Shard storage: size against measured error for several error targets.

    python benchmarks/data_shard_storage.py src/mlcharge_workflows/data/sample

For every record of a generation folder, ``training.shards.encode_record`` at targets
0.01-0.1 % NMAPE; prints kB per record (coefficients, Miller runs and the LZMA-compressed
metadata), the share of the source files and the measured NMAPE of the total density
and the magnetisation against the records' own (full-sphere) densities.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np

from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.shards import _lzma, encode_record, record_head


def main(root: str) -> None:
    warnings.simplefilter("ignore")
    ds = DensityDataset(root)
    ids = ds.ids
    src = sum(ds.path(r).stat().st_size for r in ids)
    print(f"{len(ids)} records, source {src / len(ids) / 1e3:.1f} kB per record")
    print("| target NMAPE (%) | kB per record | % of the source | NMAPE mean / max (%) | "
          "magnetisation NMAPE mean / max (%) |")
    print("|---|---|---|---|---|")
    for target in (0.01, 0.02, 0.05, 0.1):
        size, errs, merrs = 0, [], []
        for rid in ids:
            rec = ds[rid]
            arrays, st = encode_record(rec, target)
            head = _lzma(np.frombuffer(json.dumps(record_head(rec, st)).encode(), np.uint8))
            size += sum(a.nbytes for a in arrays.values()) + head.nbytes
            errs.append(st["nmape_total_percent"])
            if "nmape_magnetization_own_percent" in st:
                merrs.append(st["nmape_magnetization_own_percent"])
        mag = f"{np.mean(merrs):.4f} / {np.max(merrs):.4f}" if merrs else "-"
        print(f"| {target} | {size / len(ids) / 1e3:.1f} | {100 * size / src:.1f} | "
              f"{np.mean(errs):.4f} / {np.max(errs):.4f} | {mag} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "src/mlcharge_workflows/data/sample")
