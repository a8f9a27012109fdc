"""``mlcharge report``: summary numbers, store/JSON loading, HTML/PNG/CSV outputs."""

from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np
import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore
from typer.testing import CliRunner

from mlcharge_workflows.cli.main import app
from mlcharge_workflows.savings.report import (
    load_records_from_json,
    load_records_from_store,
    summarize,
    summary_lines,
    write_report,
)
from mlcharge_workflows.common.schemas import SavingsDocument

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rec(name, base, ml, oracle=None, *, gap=None, de=0.0, n_atoms=2, error=None):
    return SavingsDocument(
        structure=name, formula="Si", n_atoms=n_atoms, engine="qe",
        scf_iterations={"baseline": base, "ml": ml, "oracle": oracle},
        energy_eV={"baseline": -100.0, "ml": -100.0 + de},
        wall_s={"baseline": base * 1.0, "ml": ml * 1.0 if ml is not None else None,
                "predict": 0.5},
        band_gap_eV={"scf": gap, "nscf_ml": None if gap is None else gap + 0.1,
                     "nscf_atomic": None if gap is None else gap - 0.5},
        ml_density_used=ml is not None, error=error,
    )


@pytest.fixture
def records():
    return [
        _rec("a", 10, 5, 2, gap=1.0, de=0.002),   # 50 % saved
        _rec("b", 20, 15, 4, gap=2.0, de=-0.004),  # 25 %
        _rec("c", 10, 12, 3),                      # -20 % (worse)
        _rec("d", 8, None, error="ML arm crashed"),
    ]


def test_summary_numbers(records):
    s = summarize(records)
    assert s["n_records"] == 4 and s["n_compared"] == 3 and s["n_errors"] == 1
    it = s["iterations_saved_pct"]
    assert it["median"] == pytest.approx(25.0)
    assert (it["min"], it["max"]) == (pytest.approx(-20.0), pytest.approx(50.0))
    assert it["p25"] == pytest.approx(np.percentile([50, 25, -20], 25))
    assert s["fraction_improved"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["oracle_saved_pct"]["median"] == pytest.approx(80.0)  # 80, 80, 70
    # wall: baseline 10+20+10 = 40 s; ML 5+15+12 + 3 x 0.5 s prediction = 33.5 s
    assert s["total_wall_s"]["baseline"] == pytest.approx(40.0)
    assert s["total_wall_s"]["ml_plus_predict"] == pytest.approx(33.5)
    assert s["total_wall_s"]["net_saved_pct"] == pytest.approx(100 * (1 - 33.5 / 40))
    assert s["abs_energy_diff_meV_per_atom"]["max"] == pytest.approx(2.0)  # 4 meV / 2 atoms
    assert s["gap_abs_error_eV"]["nscf_ml"]["mean"] == pytest.approx(0.1)
    assert s["gap_abs_error_eV"]["nscf_atomic"]["mean"] == pytest.approx(0.5)
    text = "\n".join(summary_lines(s))
    assert "median 25.0%" in text and "67% of compared" in text


def test_summary_without_data():
    s = summarize([_rec("x", 10, None, error="boom")])
    assert s["iterations_saved_pct"]["n"] == 0 and s["fraction_improved"] is None
    assert "n/a" in "\n".join(summary_lines(s))


def test_outputs(records, tmp_path):
    html = write_report(records, tmp_path / "r.html").read_text()
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) == 3
    assert all(base64.b64decode(i).startswith(PNG_MAGIC) for i in imgs)
    assert "http" not in html.split("<body>")[1]  # self-contained: no external resources
    assert "ML arm crashed" in html
    png = write_report(records, tmp_path / "r.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "r.png")
    assert img.shape[1] > 1500 and img[..., :3].std() > 0.05  # wide, not blank
    rows = list(csv.DictReader(open(write_report(records, tmp_path / "r.csv"))))
    assert [r["structure"] for r in rows] == ["a", "b", "c", "d"]
    assert float(rows[0]["iter_saved_pct"]) == 50.0
    data = json.loads(write_report(records, tmp_path / "r.json").read_text())
    assert len(data["records"]) == 4 and data["summary"]["n_compared"] == 3
    with pytest.raises(ValueError, match="suffix"):
        write_report(records, tmp_path / "r.pdf")


def test_load_json_formats(records, tmp_path):
    plain = [r.record() for r in records]
    (tmp_path / "list.json").write_text(json.dumps(plain))
    (tmp_path / "wrapped.json").write_text(json.dumps({"records": plain}))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in plain))
    for name in ("list.json", "wrapped.json", "lines.jsonl"):
        loaded = load_records_from_json(tmp_path / name)
        assert [r.structure for r in loaded] == ["a", "b", "c", "d"]
    (tmp_path / "bad.json").write_text(json.dumps([{"structure": "x", "engine": "abinit"}]))
    with pytest.raises(ValueError, match="not a savings record"):
        load_records_from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_records_from_json(tmp_path / "missing.json")


def test_store_dedupes_reruns(records):
    """A job rerun under a new index must not count twice; other job outputs are ignored."""
    store = JobStore(MemoryStore())
    store.connect()
    for i, rec in enumerate(records):
        doc = rec.model_dump(mode="json") | {"@module": "mlcharge_workflows.savings.schemas",
                                             "@class": "SavingsDocument"}
        store.update({"uuid": f"u{i}", "index": 1, "output": doc, "metadata": {}})
    newer = records[0].model_copy(update={"structure": "a-rerun"}).model_dump(mode="json")
    newer["@class"] = "SavingsDocument"
    store.update({"uuid": "u0", "index": 2, "output": newer, "metadata": {}})
    store.update({"uuid": "other", "index": 1, "output": {"energy": 1.0}, "metadata": {}})
    # an ML static's output has scf_iterations too: not a savings document
    store.update({"uuid": "mls", "index": 1, "name": "qe ml static", "metadata": {},
                  "output": {"scf_iterations": 5, "engine": "qe", "@class": "MLStaticDocument"}})
    loaded = load_records_from_store(store, progress=False)
    assert sorted(r.structure for r in loaded) == ["a-rerun", "b", "c", "d"]


def test_report_cli(records, tmp_path):
    f = tmp_path / "recs.json"
    f.write_text(json.dumps([r.record() for r in records]))
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--json", str(f), "-o", str(tmp_path / "o.html"),
                              "-o", str(tmp_path / "o.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o.html").exists() and (tmp_path / "o.png").exists()
    assert "SCF iterations saved: median 25.0%" in res.output
    res = runner.invoke(app, ["report", "--store", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["report", "--json", str(f), "-o", "x.pdf"])
    assert res.exit_code == 2 and "suffix" in res.output


def test_threshold_table_gives_both_definitions_by_spin_with_the_oracle(tmp_path) -> None:
    from mlcharge_workflows.common.schemas import SavingsDocument
    from mlcharge_workflows.savings.report import summarize, threshold_table, write_report

    def doc(name, base, ml, orc, mag):
        return SavingsDocument(
            structure=name, engine="qe", scf_iterations={"baseline": base, "ml": ml, "oracle": orc},
            scf_iterations_by_threshold={"mp": {"baseline": base - 2, "ml": ml - 2, "oracle": 1},
                                         "protocol": {"baseline": base, "ml": ml, "oracle": orc}},
            details={"total_magnetization": {"baseline": mag}, "cpu_s": {
                "baseline": 10.0, "ml": 6.0, "predict": 1.0}})

    recs = [doc("a", 12, 6, 2, None), doc("b", 10, 9, 2, None), doc("c", 20, 22, 3, 2.0)]
    rows = {(r["threshold"], r["group"]): r for r in threshold_table(recs)}
    all_p = rows[("protocol", "all")]
    # per structure 0.5, 0.1, -0.1 -> median 10 %; medians 12 -> 9 -> drop 25 %
    assert all_p["median_saving_pct"] == 10.0 and all_p["drop_of_median_pct"] == 25.0
    assert all_p["faster_pct"] == pytest.approx(66.67) and all_p["slower_pct"] == pytest.approx(33.33)
    assert all_p["worst_slowdown_pct"] == 10.0
    assert rows[("protocol", "magnetic")]["n"] == 1 and rows[("protocol", "non-magnetic")]["n"] == 2
    assert rows[("mp", "all")]["median_baseline"] == 10 and rows[("mp", "all")]["median_ml"] == 7
    assert rows[("protocol", "all")]["oracle_median_saving_pct"] == pytest.approx(83.33)
    # thresholds no record reached are left out rather than shown as zeros
    assert ("quacc", "all") not in rows
    summary = summarize(recs)
    assert summary["total_cpu_s"]["net_saved_pct"] == pytest.approx(30.0)
    html = write_report(recs, tmp_path / "r.html").read_text()
    assert "Savings by convergence threshold" in html and "drop_of_median_pct" in html


def test_arms_at_different_energies_are_named_in_the_summary() -> None:
    """A run from atoms that converged to a higher-energy solution (README's SiC, session 10:
    the ML and oracle starts ended 0.31 meV/atom lower) is reported, not averaged away."""
    from mlcharge_workflows.convergence import energy_agreement, energy_tolerance_eV

    tol = energy_tolerance_eV({"conv_thr_per_atom": 5e-10}, 2)
    assert tol == pytest.approx(2e-5)  # the 1e-5 eV/atom floor; 10 thresholds are 6.8e-8 eV/cell
    assert energy_tolerance_eV({"EDIFF": 1e-4}, 2) == pytest.approx(1e-3)
    sic = energy_agreement({"baseline": -262.4168, "ml": -262.41742, "oracle": -262.41742}, tol)
    assert sic["verdict"] == "baseline_higher" and sic["differences_eV"]["ml"] == pytest.approx(-6.2e-4)
    same = energy_agreement({"baseline": -1.0, "ml": -1.0 + 1e-6, "oracle": None}, tol)
    assert same["verdict"] == "agree" and set(same["differences_eV"]) == {"ml"}
    assert energy_agreement({"baseline": -1.0, "ml": -0.9, "oracle": -1.1}, tol)["verdict"] == "mixed"
    assert energy_agreement({"baseline": None, "ml": -1.0}, tol)["verdict"] is None

    rec = _rec("SiC", 9, 8, 2, de=-6.2e-4)
    rec.details.energy_check = sic
    s = summarize([rec, _rec("Si", 8, 5, 1)])
    assert [d["structure"] for d in s["energy_disagreements"]] == ["SiC"]
    assert s["energy_disagreements"][0]["minus_baseline_meV_per_atom"]["ml"] == pytest.approx(-0.31)
    text = "\n".join(summary_lines(s))
    assert "energies differ (baseline_higher): SiC" in text and "higher-energy SCF solution" in text
    assert "energies differ" not in "\n".join(summary_lines(summarize([_rec("Si", 8, 5, 1)])))
