"""Submit comparisons to FireWorks, run a worker, and write the savings report (Python API).

Usage::

    python workflows/fireworks_submit.py                     # Si, SiC, C; embedded project
    python workflows/fireworks_submit.py my_cifs/ --fast --project my_project
    python workflows/fireworks_submit.py my_cifs/ --launchpad my_launchpad.yaml --submit-only

The same as the three commands ``mlcharge submit``, ``mlcharge worker`` and
``mlcharge report``. Without ``--launchpad`` everything lives in the project folder
(FireWorks' file-backed LaunchPad and a montydb jobflow store); with a
``my_launchpad.yaml`` the workflows go to MongoDB and workers use jobflow's configured
store (``JOBFLOW_CONFIG_FILE``), see docs/concepts.md. ``--ml-fworker gpu`` sends the
density predictions to a worker named ``gpu`` only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlcharge_workflows.savings.report import (
    load_records_from_store,
    summarize,
    summary_lines,
    write_report,
)
from mlcharge_workflows.submit import load_job_store, project_paths, run_worker, submit_structures

HERE = Path(__file__).parent
DEFAULT = [HERE / "structures" / f"{name}.cif" for name in ("Si", "SiC", "C")]
FAST = {"ecutwfc_ry": 20, "ecutrho_ry": 160, "kspacing": 0.5, "conv_thr_per_atom": 1e-8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structures", nargs="*", type=Path, default=DEFAULT,
                        help="structure files or folders")
    parser.add_argument("--project", type=Path, default=Path("fireworks_example_project"))
    parser.add_argument("--launchpad", type=Path, default=None, help="my_launchpad.yaml")
    parser.add_argument("--fast", action="store_true", help="low cutoffs (smoke test)")
    parser.add_argument("--ml-fworker", default=None, help="FireWorks worker for predictions")
    parser.add_argument("--submit-only", action="store_true", help="leave running to workers")
    args = parser.parse_args()

    options = {"oracle": True, "nscf": True}
    if args.fast:
        options["protocol"] = FAST
    if args.ml_fworker:
        options["ml_fworker"] = args.ml_fworker
    result = submit_structures(args.structures, engine="qe", flow="compare",
                               launchpad_file=args.launchpad, project=args.project,
                               flow_options=options)
    print(f"submitted {len(result.workflows)} workflows to {result.description}")
    for label, fw_id in result.workflows.items():
        print(f"  {label}: first firework {fw_id}")
    if args.submit_only:
        return

    summary = run_worker(project=args.project, launchpad_file=args.launchpad)
    print(f"worker: {len(summary.completed)} completed, {len(summary.fizzled)} fizzled")

    # embedded: the project's store; MongoDB: jobflow's configured store
    if args.launchpad is None:
        store = load_job_store(project_paths(args.project).root)
    else:
        from jobflow import SETTINGS

        store = SETTINGS.JOB_STORE
    records = load_records_from_store(store)
    for line in summary_lines(summarize(records)):
        print(line)
    for name in ("report.html", "report.png"):
        print("wrote", write_report(records, args.project.parent / f"fireworks_{name}"))


if __name__ == "__main__":
    main()
