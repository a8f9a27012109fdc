"""``mlcharge report``: what the ML start saved, from a jobflow store or a JSON file of records.

>>> from mlcharge_workflows.common.schemas import SavingsRecord
>>> recs = [SavingsRecord(structure="a", engine="qe",
...                       scf_iterations={"baseline": 10, "ml": 6, "oracle": 4})]
>>> s = summarize(recs)
>>> s["iterations_saved_pct"]["median"], s["fraction_improved"]
(40.0, 1.0)
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlcharge_workflows.common.schemas import SavingsDocument, SavingsRecord
from mlcharge_workflows.convergence import THRESHOLDS, savings_summary
from mlcharge_workflows.common.store import document_from_dict, savings_documents

REPORT_SUFFIXES = (".html", ".png", ".csv", ".json")


#: Every savings document in a store (one per job, the latest run): the one store reader.
load_records_from_store = savings_documents


def load_records_from_json(path: str | Path) -> list[SavingsDocument]:
    """Records from a JSON file: a list, ``{"records": [...]}``, one record, or JSON lines."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"records file {path} does not exist")
    text = path.read_text()
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is neither JSON nor JSON lines: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("records", [data])
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError(f"{path} does not hold savings records (a list of objects)")
    try:
        return [document_from_dict(d) for d in data]
    except Exception as exc:  # pydantic.ValidationError names the field
        raise ValueError(f"{path}: not a savings record: {exc}") from exc


def _stats(values: Iterable[float]) -> dict[str, float | int | None]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"n": 0, "median": None, "p25": None, "p75": None, "min": None, "max": None,
                "mean": None}
    p25, med, p75 = np.percentile(arr, [25, 50, 75])
    return {"n": int(arr.size), "median": round(float(med), 4), "p25": round(float(p25), 4),
            "p75": round(float(p75), 4), "min": round(float(arr.min()), 4),
            "max": round(float(arr.max()), 4), "mean": round(float(arr.mean()), 4)}


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def record_row(rec: SavingsRecord) -> dict[str, Any]:
    """One row of the per-structure table (derived columns included)."""
    it, w, g = rec.scf_iterations, rec.wall_s, rec.band_gap_eV
    de = rec.energy_difference_eV
    per_atom = None if de is None or not rec.n_atoms else 1000.0 * de / rec.n_atoms
    return {
        "structure": rec.structure, "formula": rec.formula, "n_atoms": rec.n_atoms,
        "engine": rec.engine,
        "iter_baseline": it.baseline, "iter_ml": it.ml, "iter_oracle": it.oracle,
        "iter_saved_pct": _round(_pct(rec.iteration_saving), 1),
        "oracle_saved_pct": _round(_pct(rec.oracle_saving), 1),
        "wall_baseline_s": _round(w.baseline, 2), "wall_ml_s": _round(w.ml, 2),
        "wall_predict_s": _round(w.predict, 2),
        "net_wall_saved_pct": _round(_pct(rec.wall_saving), 1),
        "dE_meV_per_atom": _round(per_atom, 3),
        "gap_scf_eV": _round(g.scf, 3), "gap_nscf_ml_eV": _round(g.nscf_ml, 3),
        "gap_nscf_atomic_eV": _round(g.nscf_atomic, 3),
        "ml_density_used": rec.ml_density_used, "fallback": rec.fallback, "error": rec.error,
        **{f"iter_{name}_{arm}": getattr(rec.scf_iterations_by_threshold.get(name), arm, None)
           for name in ("mp", "qe_default") for arm in ("baseline", "ml")},
    }


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(float(x), nd)


def _cpu_totals(records: Sequence[SavingsRecord]) -> dict[str, float | None]:
    """pw.x CPU time summed over structures with both arms timed, prediction included."""
    base = ml = 0.0
    for r in records:
        cpu = getattr(getattr(r, "details", None), "cpu_s", None) or {}
        if cpu.get("baseline") is not None and cpu.get("ml") is not None:
            base += cpu["baseline"]
            ml += cpu["ml"] + (cpu.get("predict") or 0.0)
    return {"baseline": round(base, 2), "ml_plus_predict": round(ml, 2),
            "net_saved_pct": round(100 * (1 - ml / base), 2) if base > 0 else None}


def summarize(records: Sequence[SavingsRecord]) -> dict[str, Any]:
    """Summary numbers of a set of records (percentages in %, energies in meV/atom)."""
    paired = [r for r in records if r.iteration_saving is not None]
    improved = [r for r in paired if r.scf_iterations.ml < r.scf_iterations.baseline]
    timed = [r for r in records if r.wall_saving is not None]
    base_wall = sum(r.wall_s.baseline for r in timed)
    ml_wall = sum(r.wall_s.ml + (r.wall_s.predict or 0.0) for r in timed)
    gaps_ml = [abs(r.band_gap_eV.nscf_ml - r.band_gap_eV.scf) for r in records
               if r.band_gap_eV.nscf_ml is not None and r.band_gap_eV.scf is not None]
    gaps_at = [abs(r.band_gap_eV.nscf_atomic - r.band_gap_eV.scf) for r in records
               if r.band_gap_eV.nscf_atomic is not None and r.band_gap_eV.scf is not None]
    de = [abs(1000.0 * r.energy_difference_eV / r.n_atoms) for r in records
          if r.energy_difference_eV is not None and r.n_atoms]
    return {
        "n_records": len(records),
        "n_compared": len(paired),
        "n_errors": sum(r.error is not None for r in records),
        # fell back = the ML arm really ran from atoms (not: every run of the structure errored)
        "n_fallback": sum(r.fallback is not None and r.scf_iterations.ml is not None
                          for r in records),
        "n_ml_density_used": sum(bool(r.ml_density_used) for r in records),
        # statistics of unrounded values (the table's columns are rounded for display)
        "iterations_saved_pct": _stats(_pct(r.iteration_saving) for r in records),
        "fraction_improved": round(len(improved) / len(paired), 4) if paired else None,
        "oracle_saved_pct": _stats(_pct(r.oracle_saving) for r in records),
        "net_wall_saved_pct": _stats(_pct(r.wall_saving) for r in records),
        "total_wall_s": {"baseline": round(base_wall, 2), "ml_plus_predict": round(ml_wall, 2),
                         "net_saved_pct": round(100 * (1 - ml_wall / base_wall), 2)
                         if base_wall > 0 else None},
        "abs_energy_diff_meV_per_atom": _stats(de),
        "gap_abs_error_eV": {"nscf_ml": _stats(gaps_ml), "nscf_atomic": _stats(gaps_at)},
        "total_cpu_s": _cpu_totals(records),
        "thresholds": threshold_table(records),
        "energy_disagreements": _energy_disagreements(records),
    }


def _energy_disagreements(records: Sequence[SavingsRecord]) -> list[dict[str, Any]]:
    """Structures whose arms ended at different energies (``details.energy_check``)."""
    out = []
    for r in records:
        check = getattr(getattr(r, "details", None), "energy_check", None) or {}
        if check.get("verdict") not in (None, "agree"):
            diffs = {arm: _round(1000.0 * d / r.n_atoms, 3) if r.n_atoms else None
                     for arm, d in check.get("differences_eV", {}).items()}
            out.append({"structure": r.structure, "verdict": check["verdict"],
                        "minus_baseline_meV_per_atom": diffs})
    return out


def _spin_polarized(rec: SavingsRecord) -> bool | None:
    """Was the baseline spin-polarised (a magnetisation was reported)? None if unknown."""
    if not isinstance(rec, SavingsDocument):
        return None
    mag = rec.details.total_magnetization
    return mag.get("baseline") is not None if mag else None


def _pct_or_none(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def threshold_table(records: Sequence[SavingsRecord]) -> list[dict[str, Any]]:
    """Savings at every threshold of ``THRESHOLDS``, both definitions, by spin, with the oracle.

    One row per threshold and group ("all", "non-magnetic", "magnetic": whether the baseline
    run was spin-polarised). ``median_saving_pct`` is the median of per-structure savings,
    ``drop_of_median_pct`` is ``1 - median(ml)/median(baseline)`` (ChargE3Net's definition).
    Records without a history at that threshold are left out of its row.
    """
    groups = {"all": lambda r: True, "non-magnetic": lambda r: _spin_polarized(r) is False,
              "magnetic": lambda r: _spin_polarized(r) is True}
    rows = []
    for t in THRESHOLDS:
        for group, keep in groups.items():
            cells = [r.scf_iterations_by_threshold.get(t.name) for r in records
                     if keep(r) and r.error is None]
            cells = [c for c in cells if c is not None]
            ml = savings_summary([c.baseline for c in cells], [c.ml for c in cells])
            orc = savings_summary([c.baseline for c in cells], [c.oracle for c in cells])
            if not ml["n"]:
                continue
            rows.append({
                "threshold": t.name, "value": f"{t.value:g} {t.unit}/{t.per}", "group": group,
                "n": ml["n"], "median_baseline": ml["median_baseline"],
                "median_ml": ml["median_ml"],
                "median_saving_pct": _pct_or_none(ml["median_saving"]),
                "drop_of_median_pct": _pct_or_none(ml["drop_of_median"]),
                "faster_pct": _pct_or_none(ml["faster"]), "slower_pct": _pct_or_none(ml["slower"]),
                "worst_slowdown_pct": _pct_or_none(ml["worst_slowdown"]),
                "oracle_median_saving_pct": _pct_or_none(orc["median_saving"]),
                "oracle_drop_of_median_pct": _pct_or_none(orc["drop_of_median"]),
            })
    return rows


def _fmt(x: Any, unit: str = "", nd: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{nd}f}{unit}" if isinstance(x, float) else f"{x}{unit}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as short human-readable lines (terminal and HTML)."""
    it, orc = summary["iterations_saved_pct"], summary["oracle_saved_pct"]
    wall, de = summary["total_wall_s"], summary["abs_energy_diff_meV_per_atom"]
    gml, gat = summary["gap_abs_error_eV"]["nscf_ml"], summary["gap_abs_error_eV"]["nscf_atomic"]
    frac = summary["fraction_improved"]
    return [
        f"structures: {summary['n_records']} ({summary['n_compared']} with baseline and ML arm, "
        f"{summary['n_errors']} with errors, {summary['n_fallback']} fell back to atoms)",
        f"SCF iterations saved: median {_fmt(it['median'], '%')} "
        f"(IQR {_fmt(it['p25'], '%')} to {_fmt(it['p75'], '%')}, "
        f"range {_fmt(it['min'], '%')} to {_fmt(it['max'], '%')})",
        f"improved (fewer iterations than baseline): "
        f"{'n/a' if frac is None else f'{100 * frac:.0f}%'} of compared structures",
        f"oracle ceiling (start from the converged density): median {_fmt(orc['median'], '%')}",
        f"net wall time, prediction included: {_fmt(wall['baseline'], ' s')} baseline vs "
        f"{_fmt(wall['ml_plus_predict'], ' s')} ML -> {_fmt(wall['net_saved_pct'], '%')} saved",
        f"net CPU time, prediction included: {_fmt(summary['total_cpu_s']['baseline'], ' s')} "
        f"baseline vs {_fmt(summary['total_cpu_s']['ml_plus_predict'], ' s')} ML -> "
        f"{_fmt(summary['total_cpu_s']['net_saved_pct'], '%')} saved",
        f"energy agreement |E_ML - E_baseline|: median {_fmt(de['median'], ' meV/atom', 3)}, "
        f"max {_fmt(de['max'], ' meV/atom', 3)}",
        f"NSCF band gap error vs SCF density: ML start MAE {_fmt(gml['mean'], ' eV', 3)}, "
        f"atomic start MAE {_fmt(gat['mean'], ' eV', 3)} "
        f"({gml['n']} and {gat['n']} structures)",
    ] + [
        f"energies differ ({d['verdict']}): {d['structure']}: "
        + ", ".join(f"E_{arm} - E_baseline = {_fmt(v, ' meV/atom', 3)}"
                    for arm, v in d["minus_baseline_meV_per_atom"].items())
        + (" (the run from atoms converged to a higher-energy SCF solution; its iteration "
           "count is not that of the ground state)" if d["verdict"] == "baseline_higher" else "")
        for d in summary.get("energy_disagreements", [])
    ]


def write_csv(records: Sequence[SavingsRecord], path: str | Path) -> Path:
    """The per-structure table as CSV."""
    path = Path(path)
    rows = [record_row(r) for r in records]
    fields = list(record_row(SavingsRecord(structure="", engine="qe")))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_png(records: Sequence[SavingsRecord], path: str | Path) -> Path:
    """The three plots side by side as one PNG."""
    from mlcharge_workflows.savings.plots import figure_png, summary_figure

    path = Path(path)
    path.write_bytes(figure_png(summary_figure(records, title=_title(records))))
    return path


def _title(records: Sequence[SavingsRecord]) -> str:
    engines = sorted({r.engine for r in records})
    return f"ML-initialised SCF: {len(records)} structures ({', '.join(engines) or 'no engine'})"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0;position:sticky;top:0}td.num{text-align:right}
tr.err td{background:#fff1f0}img{max-width:100%;display:block;margin:0.5em 0}
.fig{display:flex;flex-wrap:wrap;gap:1em}.fig img{width:32%;min-width:300px}"""


def _threshold_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No run kept an SCF accuracy history (VASP runs, or records of older versions).</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('n/a' if row[c] is None else str(row[c]))}</td>"
                         for c in cols) + "</tr>" for row in rows)
    return (f"<p>Iterations to each threshold read from each run's own accuracy history; "
            f"median_saving = median of per-structure 1 - ml/baseline; drop_of_median = "
            f"1 - median(ml)/median(baseline) (ChargE3Net's definition).</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def write_html(records: Sequence[SavingsRecord], path: str | Path) -> Path:
    """A self-contained HTML report: summary, plots (embedded PNGs), per-structure table."""
    from mlcharge_workflows.savings.plots import PLOTS, figure_png, single_figure

    path = Path(path)
    summary = summarize(records)
    imgs = "".join(
        f'<img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(figure_png(single_figure(records, name))).decode()}">'
        for name in PLOTS
    )
    rows = [record_row(r) for r in records]
    cols = list(record_row(SavingsRecord(structure="", engine="qe")))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in sorted(rows, key=lambda r: str(r["structure"])):
        cells = "".join(
            f'<td class="num">{v}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row.values()
        )
        body.append(f'<tr class="{"err" if row["error"] else ""}">{cells}</tr>')
    summary_html = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(summary))
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(_title(records))}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(_title(records))}</h1>
<p>Generated {datetime.now().isoformat(timespec="seconds")} by <code>mlcharge report</code>.</p>
<h2>Summary</h2><ul>{summary_html}</ul>
<h2>Savings by convergence threshold</h2>{_threshold_html(summary["thresholds"])}
<h2>Plots</h2><div class="fig">{imgs}</div>
<h2>Per structure</h2><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<h2>Summary (JSON)</h2><pre>{html.escape(json.dumps(summary, indent=1))}</pre>
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
    return path


def write_report(records: Sequence[SavingsRecord], output: str | Path) -> Path:
    """Write ``output`` in the format its suffix names (.html, .png, .csv, .json)."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in REPORT_SUFFIXES:
        raise ValueError(f"report output {output}: suffix must be one of {REPORT_SUFFIXES}")
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        return write_html(records, output)
    if suffix == ".png":
        return write_png(records, output)
    if suffix == ".csv":
        return write_csv(records, output)
    output.write_text(json.dumps({"summary": summarize(records),
                                  "records": [r.record() for r in records]}, indent=1))
    return output
