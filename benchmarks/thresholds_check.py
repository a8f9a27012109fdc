"""Check that iterations read from one accuracy history equal runs made at that threshold.

Usage::

    .venv/bin/python benchmarks/thresholds_check.py workflows/structures/Si.cif \
        workflows/structures/SiC.cif workflows/structures/Ni.cif

For each structure: one pw.x SCF from atoms at the protocol's threshold (5e-10 Ry/atom),
whose "estimated scf accuracy" history gives the iterations to every threshold of
``mlcharge_workflows.convergence.THRESHOLDS``; then one run at each looser threshold
(``--names``) and the iterations pw.x itself reports. Prints a Markdown table; writes
``runs/thresholds_check.json``. Every run uses 1 MPI process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from pymatgen.core import Structure

from mlcharge_workflows.convergence import THRESHOLDS, iterations_by_threshold
from mlcharge_workflows.engines.qe import QEProtocol, run_qe_scf

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structures", nargs="+")
    parser.add_argument("--names", nargs="+", default=["qe_default", "mp", "quacc"])
    args = parser.parse_args()
    by_name = {t.name: t for t in THRESHOLDS}
    rows = []
    for path in args.structures:
        structure = Structure.from_file(path)
        n = len(structure)
        with tempfile.TemporaryDirectory() as tmp:
            ref = run_qe_scf(structure, Path(tmp) / "ref", protocol=QEProtocol(), nprocs=1)
            table = iterations_by_threshold(ref.scf_accuracy_Ry, n)
            for name in args.names:
                per_atom = by_name[name].cell_ry(n) / n
                protocol = QEProtocol(conv_thr_per_atom=per_atom)
                run = run_qe_scf(structure, Path(tmp) / name, protocol=protocol, nprocs=1)
                rows.append(
                    {
                        "structure": Path(path).name,
                        "threshold": name,
                        "conv_thr_Ry": per_atom * n,
                        "from_history": table[name],
                        "run": run.scf_iterations,
                        "protocol_run": ref.scf_iterations,
                    }
                )
                print(rows[-1], flush=True)
    print("\n| structure | threshold | conv_thr (Ry/cell) | from the 5e-10 history | run at it |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['structure']} | {r['threshold']} | {r['conv_thr_Ry']:.2e} | "
              f"{r['from_history']} | {r['run']} |")
    out = REPO / "runs" / "thresholds_check.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
