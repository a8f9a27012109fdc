"""Savings at every SCF threshold of the field, read from the side-by-side runs' own histories.

pw.x stops at the first iteration whose "estimated scf accuracy" is below ``conv_thr``, so
one tightly converged history gives the count at any looser threshold
(``mlcharge_workflows.convergence``; checked in ``benchmarks/thresholds_check.py``). This
replays the histories of ``model_scf.py --structures`` work folders, collected into a JSON
file by ``benchmarks/stall_rule.py --collect``, at each threshold of ``THRESHOLDS``: per
structure the atomic start and one ML arm of the same run, the ML arm paying what the
workflows pay (a run that never reaches the threshold: its iterations plus the atomic
start's, the fallback's rerun; a run stopped by the stall rule likewise). Both
definitions (median of per-structure savings, drop of the median), magnetic and not.

Usage::

    python benchmarks/threshold_savings.py HISTORIES.json --use SOURCE:ARM[:magnetic|nonmagnetic] ...

``--use`` picks the ML arm ``ARM`` of the work folder ``SOURCE`` (its atomic arm is the
reference), for its magnetic or non-magnetic structures only if asked; several ``--use``
merge structures (a structure named twice keeps the first).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlcharge_workflows.convergence import THRESHOLDS, drop_of_median, iterations_to, median_saving


def rows(runs: list[dict], source: str, arm: str, kind: str = "all") -> list[dict]:
    """Per structure of ``source``: the atomic and ``arm`` histories, if both ended."""
    by = {(r["structure"], r["arm"]): r for r in runs if r["source"] == source}
    out = []
    for (structure, name), ml in sorted(by.items()):
        atomic = by.get((structure, "atomic"))
        if name != arm or atomic is None or not atomic["converged"]:
            continue
        magnetic = atomic["spin_polarized"]
        if kind == "magnetic" and not magnetic or kind == "nonmagnetic" and magnetic:
            continue
        out.append({"structure": structure, "n_atoms": atomic["n_atoms"], "magnetic": magnetic,
                    "atomic": atomic["history_Ry"], "ml": ml["history_Ry"], "ml_converged": ml["converged"]})
    return out


def counts(row: dict, threshold, conv_thr_per_atom: float) -> tuple[int | None, int | None]:
    """(atomic, ML paid) iterations to ``threshold`` for one structure; (None, None) when the
    threshold is tighter than the runs' own ``conv_thr`` (they stopped before it)."""
    limit = threshold.cell_ry(row["n_atoms"])
    if limit < conv_thr_per_atom * row["n_atoms"] * (1 - 1e-9):
        return None, None
    base = iterations_to(row["atomic"], limit, converged=True)
    ml = iterations_to(row["ml"], limit, converged=row["ml_converged"])
    if base is not None and ml is None and not row["ml_converged"]:
        ml = len(row["ml"]) + base  # never got there: the fallback reruns it from atoms
    return base, ml


def table(selected: list[dict], conv_thr_per_atom: float) -> list[dict]:
    """Both definitions at each threshold no tighter than the runs' own ``conv_thr``."""
    out = []
    for t in THRESHOLDS:
        entry = {"threshold": t.name, "value": f"{t.value:g} {t.unit}/{t.per}"}
        for kind, sel in (("all", selected), ("nonmagnetic", [r for r in selected if not r["magnetic"]]),
                          ("magnetic", [r for r in selected if r["magnetic"]])):
            pairs = [counts(r, t, conv_thr_per_atom) for r in sel]
            pairs = [(b, m) for b, m in pairs if b]
            base, ml = [b for b, _ in pairs], [m for _, m in pairs]
            entry[kind] = {"n": len(pairs), "median_saving": median_saving(base, ml),
                           "drop_of_median": drop_of_median(base, ml)}
        if entry["all"]["n"]:
            out.append(entry)
    return out


def markdown(result: list[dict]) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f} %"

    lines = ["| threshold | structures | median per-structure saving (non-mag / mag) | drop of the median (non-mag / mag) |",
             "|---|---|---|---|"]
    for e in result:
        a, n, m = e["all"], e["nonmagnetic"], e["magnetic"]
        lines.append(f"| {e['threshold']} ({e['value']}) | {a['n']} | {pct(a['median_saving'])} "
                     f"({pct(n['median_saving'])} / {pct(m['median_saving'])}) | {pct(a['drop_of_median'])} "
                     f"({pct(n['drop_of_median'])} / {pct(m['drop_of_median'])}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("histories", type=Path, nargs="+")
    parser.add_argument("--use", action="append", required=True, metavar="SOURCE:ARM[:KIND]")
    parser.add_argument("--set", type=Path, default=None,
                        help="keep only the structures of this folder of structure files (by file stem)")
    parser.add_argument("--conv-thr-per-atom", type=float, default=5e-10,
                        help="the runs' conv_thr (Ry/atom): tighter thresholds are not measurable")
    args = parser.parse_args()
    runs = [r for p in args.histories for r in json.loads(p.read_text())["runs"]]
    keep = None if args.set is None else {p.stem for p in args.set.glob("*.json")}
    selected, seen = [], set()
    for spec in args.use:
        source, arm, *kind = spec.split(":")
        for row in rows(runs, source, arm, kind[0] if kind else "all"):
            if row["structure"] not in seen and (keep is None or row["structure"] in keep):
                seen.add(row["structure"])
                selected.append(row)
    result = table(selected, args.conv_thr_per_atom)
    print(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
