"""Calibrate the stall rule (``mlcharge_workflows.convergence.StallRule``) on real SCF histories.

An ML-started pw.x SCF that stalls (its "estimated scf accuracy" stops improving) used to
run to ``electron_maxstep`` (100) before the fallback reran it from atoms: 100 + the atomic
count. The rule stops it early. This script replays candidate rules on the accuracy
histories of the side-by-side benchmark runs (``model_scf.py`` work folders:
``<workdir>/<structure>/<arm>/pw.out``, arm ``atomic`` or a model label) and reports, per
rule, which runs it stops and what every ML arm then pays (iterations, the fallback's rerun
from atoms included), and every run it stops that would have converged (false alarms; the
atomic-start runs are replayed too, to see how the rule treats long plateaus).

Usage::

    # collect the histories of benchmark work folders into a JSON file (kept in git)
    python benchmarks/stall_rule.py --collect /tmp/bench10 /tmp/bench10_charge2 \
        --out benchmarks/data/scf_histories_20261207.json
    # replay the rules on it
    python benchmarks/stall_rule.py benchmarks/data/scf_histories_20261207.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from mlcharge_workflows.convergence import StallRule
from mlcharge_workflows.engines.qe.parse import parse_pw_output

#: (window, factor, min_iterations) replayed; the first is the package default.
RULES = [
    (StallRule.window, StallRule.factor, StallRule.min_iterations),
    (10, 2.0, 20), (15, 2.0, 20), (20, 2.0, 20), (20, 3.0, 30), (25, 2.0, 25), (40, 2.0, 40),
]


def collect(workdirs: list[Path]) -> list[dict]:
    """One entry per pw.x SCF run found under ``workdirs`` that ended (``JOB DONE``)."""
    runs = []
    for workdir in workdirs:
        for out in sorted(workdir.glob("*/*/pw.out")):
            parsed = parse_pw_output(out)
            if not parsed.scf_accuracy_Ry or not parsed.job_done:  # a run killed half-way
                continue
            text = out.read_text(errors="replace")
            n_atoms = re.search(r"number of atoms/cell\s+=\s+(\d+)", text)
            runs.append({
                "source": workdir.name, "structure": out.parent.parent.name, "arm": out.parent.name,
                "n_atoms": int(n_atoms.group(1)) if n_atoms else None,
                "spin_polarized": parsed.total_magnetization is not None,
                "converged": parsed.converged, "history_Ry": parsed.scf_accuracy_Ry,
            })
    return runs


def replay(runs: list[dict], rule: StallRule) -> dict:
    """What ``rule`` would have done to every run, and the ML arms' cost with and without it."""
    atomic = {(r["source"], r["structure"]): len(r["history_Ry"]) for r in runs
              if r["arm"] == "atomic" and r["converged"]}
    stopped, false_alarms, atomic_alarms = [], [], []
    paid_before = paid_after = 0
    for r in runs:
        h, conv = r["history_Ry"], r["converged"]
        at = rule.stalled_at(h)
        fires = at is not None and (not conv or at < len(h))
        name = f"{r['structure'].split('-')[1]} {r['arm']} ({r['source']})"
        if r["arm"] == "atomic":
            if fires:
                atomic_alarms.append(f"{name}: stopped at {at}, converges at {len(h)}" if conv
                                     else f"{name}: stopped at {at}, never converges")
            continue
        base = atomic.get((r["source"], r["structure"]))
        if base is None:  # no converged atomic run beside it: nothing to compare with
            continue
        before = len(h) + (0 if conv else base)
        after = at + base if fires else before
        paid_before += before
        paid_after += after
        if fires and conv:
            false_alarms.append(f"{name}: stopped at {at}, converges at {len(h)} ({before} -> {after})")
        elif fires:
            stopped.append(f"{name}: stopped at {at} ({before} -> {after}; atoms {base})")
    return {"rule": {"window": rule.window, "factor": rule.factor, "min_iterations": rule.min_iterations},
            "ml_paid_iterations": [paid_before, paid_after], "stopped_unconverged": stopped,
            "false_alarms_ml": false_alarms, "atomic_runs_it_would_stop": atomic_alarms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="a histories JSON, or work folders with --collect")
    parser.add_argument("--collect", action="store_true", help="read pw.out files of work folders")
    parser.add_argument("--out", type=Path, help="with --collect: write the histories here")
    args = parser.parse_args()
    if args.collect:
        runs = collect(args.paths)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"runs": runs}, separators=(",", ":")))
            print(f"{len(runs)} runs -> {args.out}")
    else:
        runs = [r for p in args.paths for r in json.loads(p.read_text())["runs"]]
    n_ml = sum(r["arm"] != "atomic" for r in runs)
    print(f"{len(runs)} runs ({n_ml} ML-started, {len(runs) - n_ml} from atoms; "
          f"{sum(not r['converged'] for r in runs)} not converged)")
    for window, factor, first in RULES:
        print(json.dumps(replay(runs, StallRule(window, factor, first)), indent=1))


if __name__ == "__main__":
    main()
