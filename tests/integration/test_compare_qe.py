"""Comparison flows and ``mlcharge compare`` on real pw.x with the shipped density model.

Small cells and a cheap protocol (Si, 15/60 Ry, 4x4x4 k); every arm uses nprocs=1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.common.schemas import RECORD_KEYS
from mlcharge_workflows.units import RY_TO_EV

pytestmark = pytest.mark.pwx

PROTOCOL = {"ecutwfc_ry": 15.0, "ecutrho_ry": 60.0, "kspacing": 0.6, "line_density": 3}


@pytest.fixture
def si(si_primitive) -> Structure:
    return si_primitive


@pytest.fixture(autouse=True)
def _serial(monkeypatch):
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")


def test_si_baseline_ml_oracle_and_nscf(tmp_path, si) -> None:
    from mlcharge_workflows.common.store import run_flow_collect
    from mlcharge_workflows.engines.qe.flows import QEComparisonMaker

    protocol = QEProtocol(**PROTOCOL)
    flow = QEComparisonMaker(protocol=protocol, nprocs=1, oracle=True, nscf=True).make(
        si, label="Si"
    )
    out = run_flow_collect(flow, tmp_path)
    doc, rec = out["record"], {k: out["record"][k] for k in RECORD_KEYS}
    assert rec["error"] is None, rec["error"]
    it, e, gap = rec["scf_iterations"], rec["energy_eV"], rec["band_gap_eV"]

    # the ML arm really started from the predicted density, and was trusted
    assert rec["ml_density_used"] is True and rec["fallback"] is None
    (attempt,) = doc["details"]["ml_attempts"]
    assert attempt["start"] == "ml" and attempt["density_read_from_file"] is True
    pw_out = (Path(attempt["dir_name"]) / "pw.out").read_text()
    assert "The initial density is read from file" in pw_out
    assert "Initial potential from superposition of free atoms" not in pw_out

    # same state: energies agree within the SCF convergence threshold
    conv_thr_eV = protocol.conv_thr(si) * RY_TO_EV
    assert abs(e["ml"] - e["baseline"]) < 10 * conv_thr_eV
    check = doc["details"]["energy_check"]  # the oracle too, recorded
    assert check["verdict"] == "agree" and set(check["differences_eV"]) == {"ml", "oracle"}
    assert doc["details"]["energy_oracle_eV"] == pytest.approx(e["baseline"], abs=check["tolerance_eV"])
    # the converged density is the ceiling; the ML start costs no more than atoms
    assert it["oracle"] <= 2 < it["baseline"]
    assert it["oracle"] <= it["ml"] <= it["baseline"]
    assert rec["wall_s"]["predict"] > 0 and rec["wall_s"]["ml"] > 0

    # NSCF check: atoms give a visibly wrong gap; the predicted density does better
    assert abs(gap["nscf_atomic"] - gap["scf"]) > 0.1
    assert abs(gap["nscf_ml"] - gap["scf"]) < abs(gap["nscf_atomic"] - gap["scf"])

    # the grid went to the data store, not the main document
    (pred_doc,) = [d for d in out["docs"] if d["name"] == "predict density"]
    assert "blob_uuid" in pred_doc["output"]["density"]
    assert len(json.dumps(pred_doc["output"])) < 20_000
    assert out["data"]["data"] and Path(pred_doc["output"]["path"]).is_file()

    # the prediction was placed for pw.x once: the ML run took its file byte for byte
    (ml_doc,) = [d for d in out["docs"] if d["name"] == "ml static"]
    task = ml_doc["output"]["task"]
    assert task["start_file_as_is"] is True and task["density_read_from_file"] is True
    start = Path(task["start_density_file"]).read_bytes()
    assert start == Path(pred_doc["output"]["path"]).read_bytes()


def test_untrusted_ml_run_is_rerun_from_atoms(tmp_path, si, monkeypatch) -> None:
    """An ML start that lands on an unexpected energy is rerun; both runs are kept."""
    from jobflow import Flow, run_locally

    from mlcharge_workflows.engines.qe.jobs import MLQEStaticMaker, QEPredictDensityMaker

    monkeypatch.chdir(tmp_path)
    protocol = QEProtocol(**PROTOCOL)
    predict = QEPredictDensityMaker(protocol=protocol).make(si)
    expected = {"energy_eV": -200.0, "total_magnetization": None}  # far from Si's -214 eV
    ml = MLQEStaticMaker(protocol=protocol, nprocs=1).make(si, predict.output, expected)
    resp = run_locally(Flow([predict, ml]), create_folders=True, log=False, ensure_success=True)
    doc = resp[ml.uuid][1].output
    assert doc.fallback.startswith("energy_mismatch")
    assert [a.start for a in doc.attempts] == ["ml", "atomic"]
    assert doc.attempts[0].density_read_from_file and doc.attempts[0].rejected == doc.fallback
    assert doc.ml_density_used is False and doc.task.start == "atomic"
    assert doc.scf_iterations_total == sum(a.scf_iterations for a in doc.attempts)
    assert abs(doc.attempts[0].energy_eV - doc.energy_eV) < 1e-5  # no result lost


def _restricted_model(path: Path, elements: list[str]) -> Path:
    """An untrained model that knows only ``elements`` (weights are not needed to fall back)."""
    from mlcharge_workflows.model import DensityModel, ModelConfig, save_model
    from mlcharge_workflows.training.train import build_table

    table, ecut = build_table(elements, [], path.parent)
    model = DensityModel(ModelConfig(elements=elements, ecutrho_ry=ecut), table)
    return save_model(model, path, metadata={"version": "test-restricted"})


def test_compare_cli_fallback_for_unknown_element_and_error_record(tmp_path, si) -> None:
    from typer.testing import CliRunner

    from mlcharge_workflows.cli.main import app
    from mlcharge_workflows.common.store import savings_documents
    from mlcharge_workflows.submit.config import project_job_store

    si.to(filename=str(tmp_path / "Si.cif"))
    close = Structure(Lattice.cubic(4.0), ["C", "C"], [[0, 0, 0], [0.05, 0, 0]])  # 0.2 Å apart
    close.to(filename=str(tmp_path / "C2_close.cif"))
    (tmp_path / "garbage.cif").write_text("not a structure\n")
    model = _restricted_model(tmp_path / "c_only.pt", ["C"])  # Si unknown to this model
    output = tmp_path / "records.json"
    args = [
        "compare", str(tmp_path / "Si.cif"), str(tmp_path / "C2_close.cif"),
        str(tmp_path / "garbage.cif"), "--engine", "qe", "--model", str(model),
        "--workdir", str(tmp_path / "runs"), "--store", str(tmp_path / "project"),
        "--output", str(output), "--protocol", json.dumps(PROTOCOL), "--jobs", "2",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output  # finished; some structures have errors
    records = json.loads(output.read_text())
    assert [r["structure"] for r in records] == [str(tmp_path / n) for n in
                                                 ("Si.cif", "C2_close.cif", "garbage.cif")]
    assert all(tuple(r) == RECORD_KEYS for r in records)
    si_rec, close_rec, garbage_rec = records

    # unknown element: the ML arm ran from atoms, and the record says so
    assert si_rec["error"] is None
    assert si_rec["fallback"] == "unsupported_elements: Si"
    assert si_rec["ml_density_used"] is False and si_rec["wall_s"]["predict"] is None
    assert si_rec["scf_iterations"]["ml"] == si_rec["scf_iterations"]["baseline"]
    assert abs(si_rec["energy_eV"]["ml"] - si_rec["energy_eV"]["baseline"]) < 1e-6

    # failing structures get an error record; the others still ran
    assert "0.200 Å apart" in close_rec["error"] and "StructureError" in close_rec["error"]
    assert "cannot read structure file" in garbage_rec["error"]
    assert garbage_rec["scf_iterations"] == {"baseline": None, "ml": None, "oracle": None}

    # every record is in the file-backed store for `mlcharge report`
    stored = {d.structure: d.record() for d in savings_documents(project_job_store(tmp_path / "project"))}
    assert stored == {r["structure"]: r for r in records}


def test_dos_mesh_straight_from_the_predicted_density(tmp_path, si, monkeypatch) -> None:
    """Uniform-mesh non-SCF (for a DOS) without any SCF: the prediction is the density."""
    from jobflow import run_locally

    from mlcharge_workflows.engines.qe.flows import MLQEBandStructureMaker

    monkeypatch.chdir(tmp_path)
    protocol = QEProtocol(**{**PROTOCOL, "nscf_kspacing": 0.5})
    flow = MLQEBandStructureMaker(bandstructure_type="uniform", protocol=protocol, nprocs=1).make(si)
    resp = run_locally(flow, create_folders=True, log=False, ensure_success=True)
    nscf = resp[flow.jobs[1].uuid][1].output
    assert [j.name for j in flow.jobs] == ["predict density", "ml non-scf"]
    assert nscf.calculation == "nscf" and nscf.density_read_from_file
    inputs = list(tmp_path.glob("**/pw.in"))  # the only full pw.x run: no SCF anywhere
    assert len(inputs) == 1 and "'nscf'" in inputs[0].read_text()
    n_occ = 4  # Si2: 8 valence electrons
    assert len(nscf.eigenvalues_eV[0][0]) > n_occ and 0.2 < nscf.band_gap_eV < 1.5
