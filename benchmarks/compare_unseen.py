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

Writes (``--workdir``, default ``runs/compare_unseen``, git-ignored) ``WORKDIR/records.json`` (the records), ``WORKDIR/summary.json`` (the medians) and
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
EXIT_STRUCTURE_ERRORS = 3  # mlcharge compare: every structure finished, some with an error record
GAP_MIN = 0.05  # eV: gap errors are summarised over structures whose reference gap is larger


def _family_of_id(record_id: str) -> str | None:
    """Chemical system from a record id (``main/b2-FeCo-0-00000`` or ``ds/FeSi_1_007``)."""
    from pymatgen.core import Composition

    rest = record_id.split("/", 1)[-1]
    parts = rest.split("-")
    formula = parts[-3] if len(parts) >= 4 else rest.split("_")[0]
    try:
        return Composition(formula).chemical_system
    except Exception:  # noqa: BLE001 - an id that names no formula
        return None


def pick_structures(
    args, model
) -> tuple[list[tuple[str, object]], str, dict]:
    """``[(id, structure)]``, a description of the source, and the dataset's protocol (or {}).

    Unseen means: never in the model's training or validation records (the ids stored in
    the weights). The dataset's test split (and the model's own test ids) come first;
    when fewer than ``--n`` are usable, generated structures (``--seed``) fill up, skipping
    every family (chemical system) the model was trained or validated on.
    """
    from mlcharge_workflows.training.structures import StructureGenerator, family_of

    elements = set(model.supported_elements)
    ids = (model.metadata.get("training") or {}).get("record_ids") or {}
    trained = set(ids.get("train", [])) | set(ids.get("val", []))
    seen_families = {f for f in map(_family_of_id, trained) if f}
    picked: list[tuple[str, object]] = []
    protocol: dict = {}
    sources = []
    ds_root = Path(args.dataset)
    if (ds_root / "manifest.json").is_file():
        from mlcharge_workflows.training.dataset import DensityDataset

        ds = DensityDataset(ds_root)
        protocol = (ds.manifest.get("definition") or {}).get("protocol") or {}
        try:
            test_ids = set(ds.split("test"))
        except KeyError:
            test_ids = set()
        prefix = ds_root.name + "/"
        test_ids |= {i[len(prefix):] for i in ids.get("test", []) if i.startswith(prefix)}
        for rid in sorted(test_ids):
            if prefix + rid in trained or rid not in ds:
                continue
            s = ds[rid].structure
            if len(s) <= args.max_atoms and {x.specie.symbol for x in s} <= elements:
                picked.append((rid, s))
        if getattr(args, "stratify", False) and picked:
            from model_scf import (
                pick_ids,  # up to n/2 non-magnetic and n/2 magnetic, families in turn
            )

            keep = pick_ids(ds, [rid for rid, _ in picked], (args.n + 1) // 2, None)
            picked = sorted((p for p in picked if p[0] in keep), key=lambda p: keep.index(p[0]))
        picked = picked[: args.n]
        sources.append(f"{len(picked)} from the test split of {ds_root}"
                       + (" (stratified: magnetic and non-magnetic, families in turn)" if getattr(args, "stratify", False) else ""))
    if getattr(args, "realistic", False):
        picked, text = realistic_structures(args, elements, trained)
        return picked, text, protocol
    if len(picked) < args.n:
        gen = StructureGenerator(seed=args.seed, elements=sorted(elements), max_atoms=args.max_atoms)
        n_gen, index = 0, 0
        while len(picked) < args.n and index < 50 * args.n:
            g = gen(index)
            index += 1
            if g.family in seen_families or family_of(g.structure) in seen_families:
                continue
            picked.append((g.id, g.structure))
            n_gen += 1
        sources.append(f"{n_gen} generated by training/structures.py (seed {args.seed}, <= "
                       f"{args.max_atoms} atoms, chemical systems the model was not trained on)")
    return picked, "; ".join(sources), protocol


def _repository_families() -> set[str]:
    """``prototype/chemical system`` of every record in the repository's shards (data/qe/*)."""
    from mlcharge_workflows.training.pack import parse_generated_id
    from mlcharge_workflows.training.shards import ShardDataset

    from pymatgen.core import Composition

    out = set()
    for root in sorted((REPO / "data" / "qe").glob("*")):
        if ShardDataset.is_shard_dataset(root):
            for rid in ShardDataset(root).entries:
                if parsed := parse_generated_id(rid):
                    out.add(f"{parsed['prototype']}/{Composition(parsed['formula']).chemical_system}")
    return out


def realistic_structures(args, elements: set[str], trained: set[str]) -> tuple[list, str]:
    """``--realistic``: the first ``--n`` structures of the realistic generator (v2, ``--seed``)
    on the model's elements, half with a magnetic start (FM or AFM), whose prototype the model
    never trained on and whose prototype/chemical system no repository shard holds."""
    from pymatgen.core import Composition
    from realistic_set import magnetic_start, pick

    trained_protos = {(parse or {}).get("prototype") for parse in
                      map(_parse_id, trained)} - {None}
    seen = _repository_families()

    def skip(g, proto: str) -> bool:
        fam = f"{proto}/{Composition(g.structure.composition).chemical_system}"
        return proto in trained_protos or fam in seen

    picked = [(g.id, g.structure) for g in pick(args.n, args.seed, args.max_atoms, sorted(elements), skip)]
    n_mag = sum(magnetic_start(s) for _, s in picked)
    return picked, (f"{len(picked)} realistic structures (training/realistic.py, seed {args.seed}, "
                    f"<= {args.max_atoms} atoms, {n_mag} with a magnetic start; prototypes the "
                    f"model never trained on, prototype/chemical systems in no repository shard)")


def _parse_id(record_id: str) -> dict | None:
    from mlcharge_workflows.training.pack import parse_generated_id

    return parse_generated_id(record_id.split("/", 1)[-1])


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
        "median_iteration_saving_ml_started": median([r.iteration_saving for r in used
                                                      if r.iteration_saving is not None]),
        "median_oracle_saving_ml_started": median([r.oracle_saving for r in used
                                                   if r.oracle_saving is not None]),
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


def section(summary: dict, records: list[dict], meta: dict, docs: list | None = None) -> str:
    """The Markdown of the Savings section."""
    s = summary
    lines = [
        meta.get("section") or SECTION, "",
        f"`mlcharge compare --oracle --nscf` on {s['n_structures']} structures the model never saw "
        f"({meta['source']}); QE 6.7, every run with 1 MPI process, {meta['jobs']} structures at a "
        f"time on {meta['machine']}; model `{meta['model']}`; {meta['date']}.", "",
        "```bash", meta["command"], "```", "",
        "| median over finished structures | value |", "|---|---|",
        f"| SCF iterations saved by the ML start (1 − ml/baseline) | **{_pct(s['median_iteration_saving'])}** |",
        f"| … by the converged density (oracle ceiling) | {_pct(s['median_oracle_saving'])} |",
        f"| … by the ML start, only the {s['n_ml_density_used']} structures pw.x started from the "
        f"ML density (oracle on those) | {_pct(s.get('median_iteration_saving_ml_started'))} "
        f"({_pct(s.get('median_oracle_saving_ml_started'))}) |",
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
    lines += ["", *threshold_lines(records, docs)]
    lines += [
        "",
        "Savings are per structure, then the median. The wall time of the ML arm includes "
        "placing the density in pw.x's G order; `predict` excludes the "
        "one-off model loading (in `details.model_load_s`). Wall times were taken on a machine "
        "shared with other jobs, so the CPU-time saving (pw.x's own CPU seconds, inference CPU "
        "included) is the steadier measure of cost. A structure with a fallback counts with "
        "the iterations its ML arm paid for (for `atomic_spin_start`, the magnetic cells the "
        "shipped model hands back to pw.x's own start, that is the baseline again: 0%). "
        "Record format: [compare.md](compare.md).",
        "",
    ]
    return "\n".join(lines)


def threshold_lines(records: list[dict], docs: list | None = None) -> list[str]:
    """The report's threshold table (both definitions, by spin, oracle beside) as Markdown.

    ``docs``: the stored savings documents of the same run (they know which baselines were
    spin-polarised, so the table splits magnetic and non-magnetic cells); else ``records``.
    """
    from mlcharge_workflows.savings.report import threshold_table
    from mlcharge_workflows.savings.schemas import SavingsRecord

    rows = threshold_table(docs or [SavingsRecord.model_validate(r) for r in records])
    if not rows:
        return []
    out = [
        "Iterations to each threshold, read from each run's own pw.x accuracy history "
        "(`mlcharge report` shows the same table); median of per-structure savings and the "
        "drop of the median (ChargE3Net's definition), oracle beside:", "",
        "| threshold | cells | n | median iterations atoms -> ML | median saving | drop of the "
        "median | faster / slower | worst slowdown | oracle: median saving / drop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['threshold']} ({r['value']}) | {r['group']} | {r['n']} | "
            f"{_num(r['median_baseline'], '{:g}')} -> {_num(r['median_ml'], '{:g}')} | "
            f"{_num(r['median_saving_pct'], '{:.1f}')} % | {_num(r['drop_of_median_pct'], '{:.1f}')} % | "
            f"{_num(r['faster_pct'], '{:.0f}')} / {_num(r['slower_pct'], '{:.0f}')} % | "
            f"{_num(r['worst_slowdown_pct'], '{:.0f}')} % | "
            f"{_num(r['oracle_median_saving_pct'], '{:.1f}')} / "
            f"{_num(r['oracle_drop_of_median_pct'], '{:.1f}')} % |")
    return out


def write_section(docs: Path, text: str, heading: str = SECTION) -> None:
    """Replace (or append) the Savings section of ``docs``; other sections are untouched."""
    old = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
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
    p.add_argument("--realistic", action="store_true",
                   help="draw from the realistic generator (v2) instead: half magnetic, prototypes "
                   "and chemical systems disjoint from training and from the repository's shards")
    p.add_argument("--stratify", action="store_true",
                   help="take up to n/2 non-magnetic and n/2 magnetic test structures, families in turn")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--model", default=None)
    p.add_argument("--protocol", default=None, help="JSON of QEProtocol fields (overrides)")
    p.add_argument("--line-density", type=int, default=8,
                   help="band-path points per Å⁻¹ of the three NSCF runs (same in all)")
    p.add_argument("--workdir", default=str(REPO / "runs" / "compare_unseen"))
    p.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--section", default=SECTION, help="heading of the docs section written")
    p.add_argument("--render", action="store_true",
                   help="no runs: rebuild the section from WORKDIR/records.json and summary.json")
    args = p.parse_args(argv)
    if args.render:
        return _render(args)

    from mlcharge_workflows.model import load_model

    model = load_model(args.model)
    picked, source, protocol = pick_structures(args, model)
    if not picked:
        raise SystemExit(f"no structures to compare from {source}")
    protocol = {**protocol, "line_density": args.line_density, **json.loads(args.protocol or "{}")}
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
    done = subprocess.run(cmd)
    if done.returncode not in (0, EXIT_STRUCTURE_ERRORS):  # 3: finished, some error records
        raise SystemExit(f"mlcharge compare failed (exit status {done.returncode})")
    elapsed = time.time() - t0
    records = json.loads(records_file.read_text())
    from mlcharge_workflows.common.store import savings_documents
    from mlcharge_workflows.submit.config import project_job_store

    docs = savings_documents(project_job_store(work / "project"))
    summary = summarize(records, docs)
    shown = ["mlcharge compare STRUCTURES --engine qe --oracle --nscf", f"--jobs {args.jobs}",
             "--nprocs 1"] + ([f"--protocol '{json.dumps(protocol)}'"] if protocol else [])
    meta = {
        "section": args.section,
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
    text = section(summary, records, meta, docs)
    print(text)
    if not args.no_docs:
        write_section(Path(args.docs), text, args.section)
        print(f"updated the section {args.section!r} of {args.docs}")
    return 0


def _render(args) -> int:
    """Rebuild the section from a finished run's files (the command line shown is the run's)."""
    from mlcharge_workflows.common.store import savings_documents
    from mlcharge_workflows.submit.config import project_job_store

    work = Path(args.workdir).resolve()
    records = json.loads((work / "records.json").read_text())
    old = json.loads((work / "summary.json").read_text())
    docs = savings_documents(project_job_store(work / "project"))
    summary = summarize(records, docs)
    summary["elapsed_min"] = old["summary"].get("elapsed_min")
    (work / "summary.json").write_text(json.dumps({"summary": summary, "meta": old["meta"]}, indent=2))
    old["meta"]["section"] = args.section
    text = section(summary, records, old["meta"], docs)
    print(text)
    if not args.no_docs:
        write_section(Path(args.docs), text, args.section)
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    raise SystemExit(main())
