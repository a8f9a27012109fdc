"""SCF iterations saved by the model's start densities on a dataset's test split (real pw.x).

Usage::

    .venv/bin/python benchmarks/model_scf.py DATASET [--split test] [--limit 12]
        [--model [LABEL=]PATH ...] [--spin atomic|model|both] [--stratify N] [--jobs 2]
        [--conv-thr-per-atom RY] [--nprocs 1] [--workdir /tmp/model_scf] [--json out.json]

For each structure, pw.x SCF runs under the same QE protocol (by default the one the record
was made with, so the record is the exact converged density) and MPI layout: from atoms
(pw.x's own superposition), from each model's prediction ("arms": every ``--model`` times
every ``--spin`` mode; the spin mode only matters for magnetic cells), and from the
converged density of the record (the "oracle" restart, the ceiling of any start). Reports
iterations, the relative reduction, and the energy differences to the atomic start (which
must stay within the convergence threshold). All arms run in the same process, side by side.

``--structures FILE ...`` runs structure files instead of a dataset's records (e.g. the
realistic unseen set of ``compare_unseen.py --realistic``, its ``structures/`` folder): the
structure is kept as given (its ``magmom``, FM or AFM, is the start of every arm, as in
``mlcharge compare``), the protocol is ``QEProtocol()`` with ``--protocol`` overrides, and
there is no oracle arm. An ML start the workflows' fallback would rerun (not converged or
stalled, another magnetic state or energy than the atomic start's: ``FallbackPolicy``)
counts with its iterations plus the atomic start's, and every arm's total
magnetisation is compared with the atomic start's (``state_changed``). ML starts are
stopped when they stall, as the workflows stop them (``FallbackPolicy``'s default
``StallRule``; ``stalled_at`` in the row); ``--no-stall-stop`` runs them to
``electron_maxstep`` (the behaviour before session 11).

``--stratify N`` takes up to N magnetic and N non-magnetic structures, one family after
another (round robin over the families in id order), instead of the first ``--limit`` ids.
Records or families any of the models was trained or validated on are skipped. Each
structure is stripped of the record's ``magmom`` (the generator's initial moments) before
prediction: the model gets the structure alone and uses its default starting moments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RY_TO_EV = 13.605691930242388
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _family(record_id: str) -> str:
    from compare_unseen import _family_of_id  # the same id -> chemical system rule

    return _family_of_id(record_id) or record_id


def _fitted(model) -> set[str]:
    ids = model.metadata.get("training", {}).get("record_ids", {})
    return {i.split("/", 1)[-1] for k in ("train", "val") for i in (ids.get(k) or [])}


def pick_ids(ds, ids: list[str], stratify: int | None, limit: int | None) -> list[str]:
    """The first ``limit`` ids, or up to ``stratify`` magnetic and non-magnetic ones, families in turn."""
    if not stratify:
        return ids[:limit] if limit else ids
    picked = []
    for magnetic in (False, True):
        by_family: dict[str, list[str]] = {}
        for rid in ids:
            if _is_magnetic(ds, rid) == magnetic:
                by_family.setdefault(_family(rid), []).append(rid)
        queues = [list(v) for _, v in sorted(by_family.items())]
        chosen: list[str] = []
        while len(chosen) < stratify and any(queues):
            for q in queues:
                if q and len(chosen) < stratify:
                    chosen.append(q.pop(0))
        picked += chosen
    return picked


def _is_magnetic(ds, rid: str) -> bool:
    return ds[rid].magnetization is not None


def _magnetic_structure(s, protocol) -> bool:
    """A magnetic start: a non-zero ``magmom``, else an element with a protocol starting moment."""
    magmom = s.site_properties.get("magmom")
    if magmom is not None:
        return any(abs(float(m)) > 0 for m in magmom)
    return any(el.symbol in (protocol.starting_magnetization or {}) for el in s.composition.elements)


def run_structures(paths: list[Path], models: dict[str, str | None], nprocs: int, workdir: Path,
                   protocol_overrides: dict | None = None, jobs: int = 1,
                   spins: tuple[str | None, ...] = (None,), model_spins: dict[str, str] | None = None,
                   stall_stop: bool = True) -> dict:
    """Atomic start vs each model's start (its default spin) on structure files, side by side.

    ``model_spins`` gives a model its own spin start (one arm, named by the label), in place of ``spins``.
    ``stall_stop``: stop a stalled ML start early, as the workflows' fallback policy does.
    """
    from mlcharge_workflows.common.fallback import FallbackPolicy
    from pymatgen.core import Structure

    from mlcharge_workflows.engines.qe.core import run_qe_scf
    from mlcharge_workflows.engines.qe.sets import QEProtocol
    from mlcharge_workflows.model import load_model, predict_density

    protocol = QEProtocol(**(protocol_overrides or {}))
    loaded = {label: load_model(path) for label, path in models.items()}

    def one(path: Path) -> dict:
        rid = path.stem
        s = Structure.from_file(path)
        row = {"id": rid, "formula": s.composition.reduced_formula, "n_atoms": len(s),
               "magnetic": _magnetic_structure(s, protocol), "kspacing": protocol.kspacing,
               "conv_thr_eV": protocol.conv_thr(s) * RY_TO_EV, "runs": {}}
        starts: dict[str, object] = {"atomic": "atomic"}
        for label, model in loaded.items():
            try:
                model.species_of(s)
            except ValueError as exc:
                row.setdefault("skipped_arms", {})[label] = str(exc)
                continue
            own = (model_spins or {}).get(label)
            mine = (own,) if own else spins
            for spin in mine if row["magnetic"] else mine[:1]:
                arm = label if len(mine) == 1 else f"{label}+{spin}spin"
                t0 = time.perf_counter()
                starts[arm] = predict_density(s, model=model, ecutrho_ry=protocol.cutoffs(s)[1], spin=spin,
                                              threads=1)
                row.setdefault("predict", {})[arm] = {"seconds": time.perf_counter() - t0,
                                                      "spin_start": starts[arm].metadata.get("spin_start")}
        for name, start in starts.items():
            try:
                stall = FallbackPolicy().stall_rule() if stall_stop and name != "atomic" else None
                doc = run_qe_scf(s, workdir / rid / name, start=start, protocol=protocol, nprocs=nprocs,
                                 expect_density_read=name != "atomic", allow_unconverged=True,
                                 stall=stall)
            except Exception as exc:  # recorded, the other arms and structures go on
                row["runs"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            iterations = doc.scf_iterations if doc.scf_iterations is not None else len(doc.scf_accuracy_Ry)
            row["runs"][name] = {"iterations": iterations, "energy_eV": doc.energy_eV,
                                 "wall_s": doc.wall_time_s, "converged": doc.converged,
                                 "total_magnetization": doc.total_magnetization,
                                 "spin_start": getattr(start, "metadata", {}).get("spin_start"),
                                 "stalled_at": doc.stalled_at}
        if not row["magnetic"] and len(spins) > 1:  # one prediction per model: every spin arm is it
            for label in (lb for lb in loaded if lb not in (model_spins or {})):
                first = f"{label}+{spins[0]}spin"
                for spin in spins[1:]:
                    if first in row["runs"]:
                        row["runs"][f"{label}+{spin}spin"] = row["runs"][first]
        ref = row["runs"].get("atomic", {})
        if "iterations" not in ref or not ref.get("converged"):
            row["skipped"] = f"the atomic start did not finish: {ref.get('error') or 'not converged'}"
            print(json.dumps(row), flush=True)
            return row
        settle(row)
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        rows = list(pool.map(one, paths))
    return summarize_structures(rows, protocol.model_dump(mode="json"))


def settle(row: dict) -> dict:
    """What each arm of a finished row pays: its iterations, plus the atomic start's when the
    workflows' fallback would rerun it (``FallbackPolicy`` against the atomic run: not
    converged or stalled, another magnetic state, another energy); recorded as ``fallback``."""
    from mlcharge_workflows.common.fallback import FallbackPolicy, RunSummary

    ref = row["runs"]["atomic"]
    for name, out in row["runs"].items():
        if "iterations" not in out:
            continue
        reason = None if name == "atomic" else FallbackPolicy().check(
            RunSummary(converged=out["converged"], scf_iterations=out["iterations"],
                       energy_eV=out["energy_eV"], total_magnetization=out.get("total_magnetization"),
                       stall_reason=f"stopped at {out['stalled_at']}" if out.get("stalled_at") else None),
            row["n_atoms"], reference_energy_eV=ref["energy_eV"],
            reference_magnetization=ref.get("total_magnetization"))
        out["fallback"] = reason
        paid = out["iterations"] + (ref["iterations"] if reason else 0)  # the fallback's rerun
        out["paid_iterations"] = paid
        out["reduction"] = 1 - paid / ref["iterations"]
        out["dE_eV"] = out["energy_eV"] - ref["energy_eV"] if out["converged"] else None
        out["wall_reduction"] = 1 - out["wall_s"] / ref["wall_s"]
        m0, m1 = ref.get("total_magnetization"), out.get("total_magnetization")
        out["state_changed"] = (out["converged"] and m0 is not None and m1 is not None
                                and abs(m1 - m0) > 0.1)
    return row


def _atomic_spin_start(run: dict, row: dict) -> bool:
    """An arm that wrote pw.x's own atomic start for a magnetic cell: a run from atoms, not ML."""
    return bool(row["magnetic"]) and run.get("spin_start") == "atomic"


def summarize_structures(rows: list[dict], protocol: dict | None = None) -> dict:
    """Summary of ``run_structures`` rows (also of the rows a run printed so far: ``--summarize``)."""
    done = [r for r in rows if "skipped" not in r]

    def med(values):
        return float(np.median(values)) if values else None

    names = list(dict.fromkeys(n for r in done for n in r["runs"]))
    summary = {"structures": len(done), "skipped": len(rows) - len(done),
               "magnetic": sum(r["magnetic"] for r in done), "protocol": protocol,
               "reference": "atomic",
               "median_reference_iterations": med([r["runs"]["atomic"]["iterations"] for r in done]),
               "runs": {}}
    for name in names:
        sel = [r for r in done if "reduction" in r["runs"].get(name, {})]
        excluded = sum(_atomic_spin_start(r["runs"][name], r) for r in sel) if name != "atomic" else 0
        if name != "atomic":
            sel = [r for r in sel if not _atomic_spin_start(r["runs"][name], r)]
        out = [r["runs"][name] for r in sel]
        base = [r["runs"]["atomic"]["iterations"] for r in sel]
        paid = [o["paid_iterations"] for o in out]
        summary["runs"][name] = {
            "structures": len(sel),
            "atomic_spin_start_rows": excluded,
            "median_iterations": med(paid),
            "median_reduction": med([o["reduction"] for o in out]),
            "drop_of_median": (1 - med(paid) / med(base)) if sel else None,
            "median_reduction_nonmagnetic": med([o["reduction"] for o, r in zip(out, sel) if not r["magnetic"]]),
            "median_reduction_magnetic": med([o["reduction"] for o, r in zip(out, sel) if r["magnetic"]]),
            "median_wall_reduction": med([o["wall_reduction"] for o in out]),
            "faster": sum(o["reduction"] > 0 for o in out), "slower": sum(o["reduction"] < 0 for o in out),
            "worse_than_20pct": sum(o["reduction"] < -0.2 for o in out),
            "not_converged": sum(not o["converged"] for o in out),
            "fallback_reruns": sum(bool(o.get("fallback")) for o in out),
            "stalled_stopped": sum(o.get("stalled_at") is not None for o in out),
            "state_changed": sum(bool(o["state_changed"]) for o in out),
            "max_abs_dE_eV": max((abs(o["dE_eV"]) for o in out if o["dE_eV"] is not None), default=None),
            "all_within_conv_thr": all(o["dE_eV"] is None or abs(o["dE_eV"]) <= r["conv_thr_eV"]
                                       for o, r in zip(out, sel)),
        }
    return {"summary": summary, "rows": rows}


def run(dataset: str, split: str, limit: int | None, models: dict[str, str | None], nprocs: int,
        workdir: Path, record_protocol: bool = True, spins: tuple[str, ...] = ("atomic",),
        stratify: int | None = None, jobs: int = 1, conv_thr_per_atom: float | None = None,
        diago_thr_inits: list[float] | None = None) -> dict:
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
    loaded = {label: load_model(path) for label, path in models.items()}
    # never a record (or family) any model was trained or validated on (a dataset's splits can
    # be rebuilt by `data finalize` as it grows; the weights keep the ids they were fitted on)
    fitted = set().union(*(_fitted(m) for m in loaded.values()))
    fitted_families = {_family(i) for i in fitted}
    ids = [i for i in ids if i not in fitted and _family(i) not in fitted_families]
    ids = pick_ids(ds, ids, stratify, limit)

    def one(rid: str) -> dict:
        rec = ds[rid]
        s = rec.structure.copy()
        if "magmom" in s.site_properties:  # the generator's moments: the model's defaults apply
            s.remove_site_property("magmom")
        for m in loaded.values():
            try:
                m.species_of(s)
            except ValueError as exc:
                return {"id": rid, "skipped": str(exc)}
        saved = (rec.metadata or {}).get("protocol")
        base = QEProtocol(**saved) if record_protocol and saved else QEProtocol()
        if conv_thr_per_atom:
            base = base.model_copy(update={"conv_thr_per_atom": conv_thr_per_atom})
        magnetic = rec.magnetization is not None
        row = {"id": rid, "formula": s.composition.reduced_formula, "n_atoms": len(s), "magnetic": magnetic,
               "kspacing": base.kspacing, "conv_thr_eV": base.conv_thr(s) * RY_TO_EV, "runs": {}}
        preds: dict[str, object] = {}
        alias: dict[str, str] = {}  # arm -> the prediction it shares (non-magnetic cells: one per model)
        for label, model in loaded.items():
            for spin in spins:
                arm = label if len(spins) == 1 else f"{label}+{spin}spin"
                if not magnetic and spin != spins[0]:
                    alias[arm] = label if len(spins) == 1 else f"{label}+{spins[0]}spin"
                    continue
                t0 = time.perf_counter()
                preds[arm] = predict_density(s, model=model, ecutrho_ry=base.cutoffs(s)[1], spin=spin, threads=1)
                row.setdefault("predict", {})[arm] = {"seconds": time.perf_counter() - t0,
                                                      "spin_start": preds[arm].metadata.get("spin_start")}
        thrs = diago_thr_inits or [base.diago_thr_init]
        for thr in thrs:
            protocol = base.model_copy(update={"diago_thr_init": thr})
            tag = "" if len(thrs) == 1 else f"@{thr:g}"
            starts: dict[str, object] = {"atomic": "atomic", "oracle": rec.to_grid(), **preds}
            for name, start in starts.items():
                doc = run_qe_scf(s, workdir / rid / (name + tag).replace("+", "_"), start=start,
                                 protocol=protocol, nprocs=nprocs, expect_density_read=name != "atomic")
                row["runs"][name + tag] = {"iterations": doc.scf_iterations, "energy_eV": doc.energy_eV,
                                           "wall_s": doc.wall_time_s, "converged": doc.converged}
            for arm, same in alias.items():
                row["runs"][arm + tag] = row["runs"][same + tag]
        ref = row["runs"]["atomic" + ("" if len(thrs) == 1 else f"@{thrs[0]:g}")]
        for out in row["runs"].values():  # against pw.x from atoms under the first threshold
            out["reduction"] = 1 - out["iterations"] / ref["iterations"]
            out["dE_eV"] = out["energy_eV"] - ref["energy_eV"]
            out["wall_reduction"] = 1 - out["wall_s"] / ref["wall_s"]
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        rows = list(pool.map(one, ids))
    done = [r for r in rows if "skipped" not in r]

    def med(values):
        return float(np.median(values)) if values else None

    names = list(dict.fromkeys(n for r in done for n in r["runs"]))
    ref_name = names[0] if names else "atomic"
    summary = {
        "dataset": dataset, "split": split, "structures": len(done), "skipped": len(rows) - len(done),
        "magnetic": sum(r["magnetic"] for r in done),
        "conv_thr_per_atom_ry": conv_thr_per_atom or "record protocol",
        "reference": ref_name,
        "median_reference_iterations": med([r["runs"][ref_name]["iterations"] for r in done]),
        "runs": {},
    }
    for name in names:
        sel = [r for r in done if name in r["runs"]]
        out = [r["runs"][name] for r in sel]
        summary["runs"][name] = {
            "structures": len(sel),
            "median_iterations": med([o["iterations"] for o in out]),
            "median_reduction": med([o["reduction"] for o in out]),
            "median_reduction_nonmagnetic": med([o["reduction"] for o, r in zip(out, sel) if not r["magnetic"]]),
            "median_reduction_magnetic": med([o["reduction"] for o, r in zip(out, sel) if r["magnetic"]]),
            "median_wall_reduction": med([o["wall_reduction"] for o in out]),
            "max_abs_dE_eV": max(abs(o["dE_eV"]) for o in out) if out else None,
            "all_within_conv_thr": all(abs(o["dE_eV"]) <= r["conv_thr_eV"] for o, r in zip(out, sel)),
            "all_converged": all(o["converged"] for o in out),
        }
    return {"summary": summary, "rows": rows}


def _cell(out: dict | None, not_ml: bool = False) -> str:
    """Iterations of one run, and what it paid with the fallback's rerun from atoms;
    ``not_ml``: the run started from pw.x's own atomic start (an ``atomic`` arm of a magnetic cell)."""
    if not out:
        return ""
    if "iterations" not in out:
        return "error"
    text = str(out["iterations"])
    if not_ml:
        return text + " (atomic spin start: not ML)"
    if out.get("paid_iterations", out["iterations"]) != out["iterations"]:
        why = (out.get("fallback") or "not converged").split(":")[0]
        text += f" ({why}, paid {out['paid_iterations']})"
    return text + (" (other state)" if out.get("state_changed") else "")


def markdown(result: dict) -> str:
    """Per-structure table of SCF iterations, one column per run (start @ diago_thr_init)."""
    done = [r for r in result["rows"] if "skipped" not in r]
    names = list(result["summary"]["runs"])
    lines = ["| structure | atoms | magnetic | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
    for r in done:
        cells = [_cell(r["runs"].get(n), n != "atomic" and _atomic_spin_start(r["runs"].get(n) or {}, r))
                 for n in names]
        lines.append(f"| {r['id']} | {r['n_atoms']} | {'yes' if r['magnetic'] else ''} | " + " | ".join(cells) + " |")
    runs = result["summary"]["runs"]
    for key, label in (("median_reduction", "median saved (iterations)"),
                       ("median_reduction_nonmagnetic", "non-magnetic"),
                       ("median_reduction_magnetic", "magnetic"),
                       ("median_wall_reduction", "median saved (pw.x wall)")):
        cells = [f"{100 * runs[n][key]:.1f}%" if runs[n][key] is not None else "" for n in names]
        lines.append(f"| **{label}** | | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default=None)
    ap.add_argument("--structures", type=Path, nargs="+", default=None,
                    help="structure files instead of a dataset (no oracle arm; QEProtocol() + --protocol)")
    ap.add_argument("--protocol", default=None, help="with --structures: JSON of QEProtocol overrides")
    ap.add_argument("--summarize", type=Path, default=None,
                    help="the log of a --structures run: summary and table of the rows it holds")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", action="append", default=None,
                    help="[LABEL=]PATH of a weights file (repeatable; default: the shipped model)")
    ap.add_argument("--spin", choices=["atomic", "model", "both", "charge", "all", "default"], default=None,
                    help="magnetic cells: pw.x's atomic spin start, the learned one, both, the learned charge "
                    "with the atomic magnetisation (charge), all three, or the weights' recorded default "
                    "('default', --structures only). Default: 'default' with --structures, 'atomic' with a "
                    "DATASET. An 'atomic' arm of a magnetic cell is pw.x's own start written to a file, not an "
                    "ML start: summaries leave it out of the ML figures (atomic_spin_start_rows)")
    ap.add_argument("--model-spin", action="append", default=None, metavar="LABEL=MODE",
                    help="with --structures: this model's own spin start (atomic, model, charge), one arm")
    ap.add_argument("--stratify", type=int, default=None, help="up to N magnetic and N non-magnetic structures")
    ap.add_argument("--jobs", type=int, default=1, help="structures at a time (one pw.x each)")
    ap.add_argument("--conv-thr-per-atom", type=float, default=None, help="override the protocol's (Ry)")
    ap.add_argument("--diago-thr-init", type=float, nargs="+", default=None,
                    help="first-diagonalisation threshold(s) for every run (default: the protocol's); "
                    "several values run every start under each, side by side")
    ap.add_argument("--no-stall-stop", action="store_true",
                    help="with --structures: run stalled ML starts to electron_maxstep")
    ap.add_argument("--nprocs", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/model_scf"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--default-protocol", action="store_true",
                    help="Use QEProtocol() instead of the protocol the record was made with "
                    "(then the record is only an approximate oracle).")
    args = ap.parse_args()
    models: dict[str, str | None] = {}
    for spec in args.model or ["shipped"]:
        label, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).stem, "", spec)
        models[label] = None if path == "shipped" else path
    if args.spin is None:
        args.spin = "default" if args.structures else "atomic"
    spins = ("atomic", "model") if args.spin == "both" else (args.spin,)
    if args.summarize:  # the rows a --structures run printed (one JSON line each), finished or not
        rows = [json.loads(line) for line in args.summarize.read_text().splitlines() if line.startswith('{"id"')]
        rows = [r if "skipped" in r else settle(r) for r in rows]  # the fallback rule of this version
        result = summarize_structures(rows)
        print(json.dumps(result["summary"], indent=1))
        print(markdown(result))
        return
    if args.structures:
        spins = {"atomic": ("atomic",), "model": ("model",), "both": ("atomic", "model"),
                 "charge": ("charge",), "all": ("model", "charge", "atomic"),
                 "default": (None,)}[args.spin]
        model_spins = dict(spec.split("=", 1) for spec in args.model_spin or [])
        unknown = set(model_spins) - set(models)
        from mlcharge_workflows.model.predict import SPIN_STARTS

        bad = set(model_spins.values()) - set(SPIN_STARTS)
        if unknown or bad:
            ap.error(f"--model-spin: no --model labelled {sorted(unknown)}" if unknown
                     else f"--model-spin: unknown spin start(s) {sorted(bad)}")
        result = run_structures(args.structures, models, args.nprocs, args.workdir,
                                json.loads(args.protocol) if args.protocol else None, args.jobs, spins,
                                model_spins, not args.no_stall_stop)
        print(json.dumps(result["summary"], indent=1))
        print(markdown(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return
    if args.dataset is None:
        ap.error("give a DATASET or --structures")
    result = run(args.dataset, args.split, args.limit, models, args.nprocs, args.workdir,
                 not args.default_protocol, spins, args.stratify, args.jobs, args.conv_thr_per_atom,
                 args.diago_thr_init)
    print(json.dumps(result["summary"], indent=1))
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
