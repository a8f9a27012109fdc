"""Unsupported elements: partial ML start vs the start from atoms (QE, real pw.x).

Cells holding one element the model does not know (Mg, Al, Ti) and one it knows (O, N, C).
With ``QEPredictDensityMaker(unsupported="partial")`` (the default) the known atoms get the
learned density and the others their ``PP_RHOATOM``; with ``"atoms"`` the ML arm starts from
atoms, i.e. costs exactly the baseline's iterations. So partial is the better default when
its ML arm needs fewer iterations than the baseline::

    python benchmarks/partial_start.py --out partial_start

writes ``partial_start/records.json`` and prints the table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pymatgen.core import Lattice, Structure


def structures() -> dict[str, Structure]:
    sg = Structure.from_spacegroup
    rs = [[0, 0, 0], [0.5, 0.5, 0.5]]
    zb = [[0, 0, 0], [0.25, 0.25, 0.25]]
    return {
        "MgO-rocksalt": sg("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], rs).get_primitive_structure(),
        "AlN-zincblende": sg("F-43m", Lattice.cubic(4.38), ["Al", "N"], zb).get_primitive_structure(),
        "TiC-rocksalt": sg("Fm-3m", Lattice.cubic(4.33), ["Ti", "C"], rs).get_primitive_structure(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("partial_start"))
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    from mlcharge_workflows.compare import run_compare

    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, s in structures().items():
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(s.as_dict()))
        paths.append(str(path))
    target = args.out / "records.json"
    run_compare(paths, "qe", workdir=args.out / "runs", jobs=args.jobs, nprocs=1, progress=False,
                output=target, resume=target.exists())
    print("| structure | unknown | atoms (= 'atoms' default) | partial ML start | ML density read "
          "| energy ML - atoms (meV) |")
    print("|---|---|---|---|---|---|")
    savings = []
    jsonl = target.with_suffix(".jsonl")  # the documents (record + details), latest last
    docs = {r["structure"]: r for r in map(json.loads, filter(str.strip, jsonl.read_text().splitlines()))}
    for r in docs.values():
        it, e = r["scf_iterations"], r["energy_eV"]
        part = (r.get("details") or {}).get("partial_start")
        de = "-" if None in (e["ml"], e["baseline"]) else f"{1000 * (e['ml'] - e['baseline']):+.3f}"
        print(f"| {Path(r['structure']).stem} | {', '.join(part or [])} | {it['baseline']} | {it['ml']} "
              f"| {r['ml_density_used']} | {de} |"
              + (f" fallback: {r['fallback']}" if r.get("fallback") else ""))
        if it["baseline"] and it["ml"]:
            savings.append(1 - it["ml"] / it["baseline"])
    if savings:
        print(f"\nmedian saving of the partial start: {100 * statistics.median(savings):.1f} %")


if __name__ == "__main__":
    main()
