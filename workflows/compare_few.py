"""Baseline vs ML-started SCF on a few structures, run locally (no FireWorks), with a report.

Usage::

    python workflows/compare_few.py                      # Si, SiC, C from workflows/structures
    python workflows/compare_few.py my.cif other.cif --fast --out compare_out

Each structure runs the comparison flow (baseline SCF from atoms, density prediction,
SCF from the prediction, oracle restart from the converged density, NSCF band gaps on
the converged, predicted and atomic densities) with jobflow's ``run_locally``. The
records go to ``OUT/records.json``; ``OUT/report.html`` and ``OUT/report.png`` show
the savings. ``--fast`` uses low cutoffs and a coarse k-mesh: a smoke test, not
converged numbers. The same comparison as a command: ``mlcharge compare``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pymatgen.core import Structure

from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.common.store import run_flow_collect
from mlcharge_workflows.engines.qe.flows import QEComparisonMaker
from mlcharge_workflows.savings.report import summarize, summary_lines, write_report
from mlcharge_workflows.common.schemas import SavingsDocument

HERE = Path(__file__).parent
DEFAULT = [HERE / "structures" / f"{name}.cif" for name in ("Si", "SiC", "C")]
FAST = QEProtocol(ecutwfc_ry=20, ecutrho_ry=160, kspacing=0.5, conv_thr_per_atom=1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structures", nargs="*", type=Path, default=DEFAULT)
    parser.add_argument("--fast", action="store_true", help="low cutoffs (smoke test)")
    parser.add_argument("--nprocs", type=int, default=None, help="MPI processes per pw.x run")
    parser.add_argument("--out", type=Path, default=Path("compare_few_out"))
    args = parser.parse_args()

    maker = QEComparisonMaker(oracle=True, nscf=True, nprocs=args.nprocs,
                              protocol=FAST if args.fast else QEProtocol())
    records = []
    for path in args.structures:
        structure = Structure.from_file(path)
        flow = maker.make(structure, label=str(path))
        workdir = args.out / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)
        result = run_flow_collect(flow, workdir)  # one folder per job under workdir
        record = SavingsDocument.model_validate(result["record"])
        it = record.scf_iterations
        print(f"{path}: iterations baseline {it.baseline}, ML {it.ml}, oracle {it.oracle}"
              + (f"; error: {record.error}" if record.error else ""))
        records.append(record)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "records.json").write_text(json.dumps([r.record() for r in records], indent=1))
    for line in summary_lines(summarize(records)):
        print(line)
    for name in ("report.html", "report.png"):
        print("wrote", write_report(records, args.out / name))


if __name__ == "__main__":
    main()
