"""SCF iterations saved by the model's start densities on a dataset's test split (real pw.x).

Usage::

    .venv/bin/python benchmarks/model_scf.py DATASET [--split test] [--limit 12] [--model PATH]
        [--nprocs 1] [--workdir /tmp/model_scf] [--json out.json]

For each structure, three pw.x SCF runs under the same QE protocol (by default the one
the record was made with, so the record is the exact converged density) and MPI layout:
from atoms (pw.x's own superposition), from the model's prediction, and from the
converged density of the record (the "oracle" restart, the ceiling of any start).
Reports iterations, the relative reduction, and the energy differences to the atomic
start (which must stay within the convergence threshold).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def run(dataset: str, split: str, limit: int | None, model_path: str | None, nprocs: int, workdir: Path,
        record_protocol: bool = True) -> dict:
    from mlcharge_workflows.engines.qe.core import run_qe_scf
    from mlcharge_workflows.engines.qe.sets import QEProtocol
    from mlcharge_workflows.model import load_model, predict_density
    from mlcharge_workflows.training.dataset import DensityDataset

    ds = DensityDataset(dataset)
    try:
        ids = ds.split(split)
    except KeyError:
        from mlcharge_workflows.training.train import hash_split

        ids = [i for i in ds.ids if hash_split(i, 0, 0.1, 0.1) == split]
    model = load_model(model_path)
    # never a record the model was trained or validated on (a dataset's splits can be
    # rebuilt by `data finalize` as it grows; the weights keep the ids they were fitted on)
    fitted = {i.split("/", 1)[-1] for k in ("train", "val")
              for i in (model.metadata.get("training", {}).get("record_ids", {}).get(k) or [])}
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_unseen import _family_of_id  # the same id -> chemical system rule

    def family(record_id: str) -> str:
        return _family_of_id(record_id) or record_id

    fitted_families = {family(i) for i in fitted}
    ids = [i for i in ids if i not in fitted and family(i) not in fitted_families]
    ids = ids[:limit] if limit else ids
    rows = []
    for rid in ids:
        rec = ds[rid]
        s = rec.structure
        try:
            model.species_of(s)
        except ValueError as exc:
            rows.append({"id": rid, "skipped": str(exc)})
            continue
        saved = (rec.metadata or {}).get("protocol")
        protocol = QEProtocol(**saved) if record_protocol and saved else QEProtocol()
        row = {"id": rid, "formula": s.composition.reduced_formula, "n_atoms": len(s), "kspacing": protocol.kspacing}
        t0 = time.perf_counter()
        pred = predict_density(s, model=model, ecutrho_ry=protocol.cutoffs(s)[1])
        row["predict_s"] = time.perf_counter() - t0
        starts = {"atomic": "atomic", "model": pred, "oracle": rec.to_grid()}
        for name, start in starts.items():
            doc = run_qe_scf(s, workdir / rid / name, start=start, protocol=protocol, nprocs=nprocs,
                             expect_density_read=name != "atomic")
            row[f"{name}_iterations"] = doc.scf_iterations
            row[f"{name}_energy_eV"] = doc.energy_eV
            row[f"{name}_wall_s"] = doc.wall_time_s
            row[f"{name}_converged"] = doc.converged
        row["conv_thr_eV"] = protocol.conv_thr(s) * 13.605691930242388
        for name in ("model", "oracle"):
            row[f"{name}_reduction"] = 1 - row[f"{name}_iterations"] / row["atomic_iterations"]
            row[f"{name}_dE_eV"] = row[f"{name}_energy_eV"] - row["atomic_energy_eV"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    done = [r for r in rows if "skipped" not in r]
    summary = {
        "dataset": dataset,
        "split": split,
        "structures": len(done),
        "skipped": len(rows) - len(done),
        "median_model_reduction": float(np.median([r["model_reduction"] for r in done])) if done else None,
        "median_oracle_reduction": float(np.median([r["oracle_reduction"] for r in done])) if done else None,
        "median_atomic_iterations": float(np.median([r["atomic_iterations"] for r in done])) if done else None,
        "max_abs_model_dE_eV": float(max(abs(r["model_dE_eV"]) for r in done)) if done else None,
    }
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--nprocs", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/model_scf"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--default-protocol", action="store_true",
                    help="Use QEProtocol() instead of the protocol the record was made with "
                    "(then the record is only an approximate oracle).")
    args = ap.parse_args()
    result = run(args.dataset, args.split, args.limit, args.model, args.nprocs, args.workdir,
                 not args.default_protocol)
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
