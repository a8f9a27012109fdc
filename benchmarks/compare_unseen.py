"""What the ML start saves on structures the model never saw: `mlcharge compare --oracle --nscf`.

Usage::

    .venv/bin/python benchmarks/compare_unseen.py                      # 8 structures
    .venv/bin/python benchmarks/compare_unseen.py --n 12 --jobs 2 --max-atoms 8
    .venv/bin/python benchmarks/compare_unseen.py --no-docs            # print, leave docs alone

Structures: the test split of the dataset at ``--dataset`` (default
``/work/datasets/main``; families there never occur in training) when it exists, else
``training/structures.py`` with ``--seed`` (not a training seed), restricted to the
model's elements and ``--max-atoms``. The QE protocol is the dataset's (the one the model
was trained on) unless ``--protocol`` overrides it. Every DFT run uses 1 MPI process.

Writes ``WORKDIR/records.json`` (the records), ``WORKDIR/summary.json`` (the medians) and
the "Savings" section of ``docs/benchmarks.md`` (other sections are left untouched).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHARGE3NET_MEDIAN_SAVING = 0.267  # Koker et al. 2024: median SCF steps saved on unseen MP (VASP)
SECTION = "## Savings"
GAP_MIN = 0.05  # eV: gap errors are summarised over structures whose reference gap is larger


def pick_structures(args, elements: list[str]) -> tuple[list[tuple[str, object]], str, dict]:
    """``[(id, structure)]``, a description of the source, and the dataset's protocol (or {})."""
    ds_root = Path(args.dataset)
    if (ds_root / "manifest.json").is_file():
        from mlcharge_workflows.training.dataset import DensityDataset

        ds = DensityDataset(ds_root)
        try:
            ids = sorted(ds.split("test"))
        except KeyError:
            ids = []
        if ids:
            picked = []
            for rid in ids:
                s = ds[rid].structure
                if len(s) <= args.max_atoms and {x.specie.symbol for x in s} <= set(elements):
                    picked.append((rid, s))
            protocol = (ds.manifest.get("definition") or {}).get("protocol") or {}
            return picked[: args.n], f"test split of {ds_root} ({len(ids)} records)", protocol
    from mlcharge_workflows.training.structures import StructureGenerator

    gen = StructureGenerator(seed=args.seed, elements=elements, max_atoms=args.max_atoms)
    picked = [(g.id, g.structure) for g in gen.generate(args.n)]
    return picked, f"training/structures.py, seed {args.seed}, max {args.max_atoms} atoms", {}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _cpu_saving(doc) -> float | None:
    """``1 - (cpu_ml + cpu_predict) / cpu_baseline`` from the stored details (None if unknown)."""
    cpu = (doc.details.model_extra or {}).get("cpu_s") or {}
    base, ml = cpu.get("baseline"), cpu.get("ml")
    if not base or ml is None:
        return None
    return 1.0 - (ml + (cpu.get("predict") or 0.0)) / base


def summarize(records: list[dict], docs: list | None = None) -> dict:
    """Medians over the records that finished (``error`` null); ``docs``: stored documents."""
    from mlcharge_workflows.savings.schemas import SavingsRecord

    ok = [SavingsRecord.model_validate(r) for r in records if r["error"] is None]
    used = [r for r in ok if r.ml_density_used]
    gap = [r.band_gap_eV for r in ok if r.band_gap_eV.scf is not None and r.band_gap_eV.scf > GAP_MIN]
    finished = {r.structure for r in ok}
    cpu = [_cpu_saving(d) for d in docs or [] if d.structure in finished]
    de = [abs(r.energy_difference_eV) / r.n_atoms * 1000 for r in ok
          if r.energy_difference_eV is not None]
    return {
        "n_structures": len(records),
        "n_finished": len(ok),
        "n_ml_density_used": len(used),
        "n_fallback": sum(r.fallback is not None for r in ok),
        "median_iterations": {k: median([getattr(r.scf_iterations, k) for r in ok
                                         if getattr(r.scf_iterations, k) is not None])
                              for k in ("baseline", "ml", "oracle")},
        "median_iteration_saving": median([r.iteration_saving for r in ok
                                           if r.iteration_saving is not None]),
        "median_oracle_saving": median([r.oracle_saving for r in ok if r.oracle_saving is not None]),
        "median_wall_saving": median([r.wall_saving for r in ok if r.wall_saving is not None]),
        "median_cpu_saving": median([c for c in cpu if c is not None]),
        "n_gapped": len(gap),
        "median_wall_s": {k: median([getattr(r.wall_s, k) for r in ok
                                     if getattr(r.wall_s, k) is not None])
                          for k in ("baseline", "ml", "predict")},
        "median_abs_dE_meV_per_atom": median(de),
        "max_abs_dE_meV_per_atom": max(de) if de else None,
        "median_gap_error_ml_eV": median([abs(g.nscf_ml - g.scf) for g in gap
                                          if g.nscf_ml is not None]),
        "median_gap_error_atomic_eV": median([abs(g.nscf_atomic - g.scf) for g in gap
                                              if g.nscf_atomic is not None]),
        "chargE3net_median_saving": CHARGE3NET_MEDIAN_SAVING,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = "{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def section(summary: dict, records: list[dict], meta: dict) -> str:
    """The Markdown of the Savings section."""
    s = summary
    lines = [
        SECTION, "",
        f"`mlcharge compare --oracle --nscf` on {s['n_structures']} structures the model never saw "
        f"({meta['source']}); QE 6.7, every run with 1 MPI process, {meta['jobs']} structures at a "
        f"time on {meta['machine']}; model `{meta['model']}`; {meta['date']}.", "",
        "```bash", meta["command"], "```", "",
        "| median over finished structures | value |", "|---|---|",
        f"| SCF iterations saved by the ML start (1 − ml/baseline) | **{_pct(s['median_iteration_saving'])}** |",
        f"| … by the converged density (oracle ceiling) | {_pct(s['median_oracle_saving'])} |",
        f"| … ChargE3Net, unseen MP materials (VASP, true PAW occupancies) | {_pct(s['chargE3net_median_saving'])} |",
        f"| wall time saved, prediction included (1 − (ml + predict)/baseline) | {_pct(s['median_wall_saving'])} |",
        f"| CPU time saved, prediction included (pw.x and inference CPU seconds) | {_pct(s['median_cpu_saving'])} |",
        f"| iterations baseline / ml / oracle | {_num(s['median_iterations']['baseline'], '{:g}')} / "
        f"{_num(s['median_iterations']['ml'], '{:g}')} / {_num(s['median_iterations']['oracle'], '{:g}')} |",
        f"| wall s baseline / ml / predict | {_num(s['median_wall_s']['baseline'], '{:.2f}')} / "
        f"{_num(s['median_wall_s']['ml'], '{:.2f}')} / {_num(s['median_wall_s']['predict'], '{:.2f}')} |",
        f"| \\|E_ml − E_baseline\\| (meV/atom), median / max | {_num(s['median_abs_dE_meV_per_atom'], '{:.2g}')} / "
        f"{_num(s['max_abs_dE_meV_per_atom'], '{:.2g}')} |",
        f"| NSCF gap error, predicted density (eV; {s['n_gapped']} structures with a gap > {GAP_MIN} eV) | "
        f"{_num(s['median_gap_error_ml_eV'])} |",
        f"| NSCF gap error, atomic density (control, eV; same structures) | {_num(s['median_gap_error_atomic_eV'])} |",
        f"| ML density read by pw.x / fell back / finished | {s['n_ml_density_used']} / {s['n_fallback']} / "
        f"{s['n_finished']} of {s['n_structures']} |",
        "",
        "| structure | atoms | iterations base / ml / oracle | saved | wall s base / ml / predict | "
        "ΔE meV/atom | gap scf / ml / atomic (eV) | fallback / error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    from mlcharge_workflows.savings.schemas import SavingsRecord

    for raw in records:
        r = SavingsRecord.model_validate(raw)
        it, w, g = r.scf_iterations, r.wall_s, r.band_gap_eV
        de = r.energy_difference_eV
        note = r.error.splitlines()[0][:80] if r.error else (r.fallback or "")
        lines.append(
            f"| {Path(r.structure).stem} | {r.n_atoms or '–'} | {it.baseline} / {it.ml} / {it.oracle} | "
            f"{_pct(r.iteration_saving)} | {_num(w.baseline, '{:.1f}')} / {_num(w.ml, '{:.1f}')} / "
            f"{_num(w.predict, '{:.2f}')} | "
            f"{_num(None if de is None else 1000 * abs(de) / r.n_atoms, '{:.1e}')} | "
            f"{_num(g.scf)} / {_num(g.nscf_ml)} / {_num(g.nscf_atomic)} | {note} |"
        )
    lines += [
        "",
        "Savings are per structure, then the median. The wall time of the ML arm includes the "
        "zero-step pw.x run that writes the density in pw.x's G order; `predict` excludes the "
        "one-off model loading (in `details.model_load_s`). Wall times were taken on a machine "
        "shared with other jobs, so the CPU-time saving (pw.x's own CPU seconds, inference CPU "
        "included) is the steadier measure of cost. Record format: [compare.md](compare.md).",
        "",
    ]
    return "\n".join(lines)


def write_section(docs: Path, text: str) -> None:
    """Replace (or append) the Savings section of ``docs``; other sections are untouched."""
    old = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    docs.write_text(new.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="/work/datasets/main")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=20261121, help="generator seed (not a training seed)")
    p.add_argument("--max-atoms", type=int, default=6)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--model", default=None)
    p.add_argument("--protocol", default=None, help="JSON of QEProtocol fields (overrides)")
    p.add_argument("--workdir", default="benchmark_runs/compare_unseen")
    p.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)

    from mlcharge_workflows.model import load_model

    model = load_model(args.model)
    picked, source, protocol = pick_structures(args, model.supported_elements)
    if not picked:
        raise SystemExit(f"no structures to compare from {source}")
    protocol = {**protocol, **json.loads(args.protocol or "{}")}
    work = Path(args.workdir).resolve()
    (work / "structures").mkdir(parents=True, exist_ok=True)
    files = []
    for sid, s in picked:
        f = work / "structures" / f"{sid}.json"
        f.write_text(json.dumps(s.as_dict()))
        files.append(str(f))
    records_file = work / "records.json"
    cmd = [sys.executable, "-m", "mlcharge_workflows.cli.main", "compare", *files,
           "--engine", "qe", "--oracle", "--nscf", "--jobs", str(args.jobs), "--nprocs", "1",
           "--workdir", str(work / "runs"), "--store", str(work / "project"),
           "--output", str(records_file)]
    if protocol:
        cmd += ["--protocol", json.dumps(protocol)]
    if args.model:
        cmd += ["--model", args.model]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    elapsed = time.time() - t0
    records = json.loads(records_file.read_text())
    from mlcharge_workflows.savings.flows import project_job_store, savings_documents

    summary = summarize(records, savings_documents(project_job_store(work / "project")))
    shown = ["mlcharge compare STRUCTURES --engine qe --oracle --nscf", f"--jobs {args.jobs}",
             "--nprocs 1"] + ([f"--protocol '{json.dumps(protocol)}'"] if protocol else [])
    meta = {
        "source": source,
        "jobs": args.jobs,
        "machine": f"{platform.machine()}, {_cores()} cores",
        "model": Path(getattr(model, "weights_path", None) or "shipped").name
        + (f", val NMAPE {model.metadata['val_nmape']:.2f}%" if "val_nmape" in model.metadata else ""),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python benchmarks/compare_unseen.py", *(shlex.quote(a) for a in
                                                                   (argv or sys.argv[1:]))])
        + "\n# runs: " + " ".join(shown) + f"   ({elapsed / 60:.1f} min)",
    }
    summary["elapsed_min"] = elapsed / 60
    (work / "summary.json").write_text(json.dumps({"summary": summary, "meta": meta}, indent=2))
    text = section(summary, records, meta)
    print(text)
    if not args.no_docs:
        write_section(Path(args.docs), text)
        print(f"updated the Savings section of {args.docs}")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    raise SystemExit(main())
