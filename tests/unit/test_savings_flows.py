"""Comparison flow wiring, savings-document assembly and the file-backed store (no pw.x)."""

from __future__ import annotations

import json

import pytest
from jobflow import OnMissing

from mlcharge_workflows.catalogue import comparison_flow
from mlcharge_workflows.common.documents import SAVINGS_JOB_NAME, savings_document
from mlcharge_workflows.common.schemas import RECORD_KEYS, SavingsDocument
from mlcharge_workflows.common.store import save_record_only, savings_documents
from mlcharge_workflows.engines.qe.density import grid_from_data, grid_to_data
from mlcharge_workflows.engines.qe.flows import (
    MLQEBandStructureMaker,
    QEArmReader,
    QEComparisonMaker,
)
from mlcharge_workflows.engines.qe.jobs import QEPredictDensityMaker
from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.submit.config import project_job_store


def test_comparison_flow_arms_and_configuration(si) -> None:
    flow = QEComparisonMaker(
        oracle=True, nscf=True, nprocs=1, predict_manager_config={"_fworker": "gpu"}
    ).make(si, label="Si.cif")
    by_name = {j.name: j for j in flow.jobs}
    assert list(by_name) == [
        "baseline static", "predict density", "ml static", "oracle static",
        "nscf converged", "nscf ml", "nscf atomic", SAVINGS_JOB_NAME,
    ]
    assert by_name["predict density"].config.manager_config == {"_fworker": "gpu"}
    assert by_name["baseline static"].config.manager_config == {}
    # the ML arm and the document still run when another arm failed
    assert by_name["ml static"].config.on_missing_references == OnMissing.NONE
    assert by_name[SAVINGS_JOB_NAME].config.on_missing_references == OnMissing.NONE
    # identical inputs in every DFT arm
    makers = [j.maker for j in flow.jobs if j.maker is not None and hasattr(j.maker, "nprocs")]
    assert {m.protocol.model_dump_json() for m in makers} == {makers[0].protocol.model_dump_json()}
    assert {m.nprocs for m in makers} == {1}
    assert flow.output.uuid == by_name[SAVINGS_JOB_NAME].uuid


def test_optional_arms_are_left_out(si) -> None:
    names = [j.name for j in comparison_flow(si, label="Si").jobs]
    assert names == ["baseline static", "predict density", "ml static", SAVINGS_JOB_NAME]
    with pytest.raises(ValueError, match="unknown engine"):
        comparison_flow(si, engine="castep")
    with pytest.raises(ValueError, match="bandstructure_type"):
        MLQEBandStructureMaker(bandstructure_type="circle").make(si)
    assert [j.name for j in MLQEBandStructureMaker().make(si).jobs] == [
        "predict density", "ml non-scf", "ml non-scf"]


def _task(**kw):
    return {"converged": True, "scf_iterations": 9, "energy_eV": -214.1, "elapsed_s": 3.0,
            "total_magnetization": None, "dir_name": "/runs/x", **kw}


def test_savings_document_from_arm_outputs(si) -> None:
    ml = {"fallback": None, "ml_density_used": True, "scf_iterations": 5,
          "scf_iterations_total": 5, "wall_s_total": 2.2, "energy_eV": -214.1,
          "converged": True, "attempts": [{"start": "ml", "scf_iterations": 5}], "task": None}
    pred = {"path": "/runs/p/x.dat", "predict_wall_s": 0.4, "model_version": "m:1",
            "total_magnetization": None, "fallback": None}
    doc = savings_document.original(
        "Si.cif", si, QEArmReader(), _task(), pred, ml, oracle=_task(scf_iterations=1, prep_wall_time_s=0.2),
        nscf_scf={"band_gap_eV": 0.59}, nscf_ml={"band_gap_eV": 0.6},
        nscf_atomic={"band_gap_eV": 0.89},
        requested={"baseline": True, "predict": True, "ml": True, "oracle": True,
                   "nscf_scf": True, "nscf_ml": True, "nscf_atomic": True},
    )
    rec = doc.record()
    assert rec["scf_iterations"] == {"baseline": 9, "ml": 5, "oracle": 1}
    assert rec["wall_s"] == {"baseline": 3.0, "ml": 2.2, "predict": 0.4}
    assert rec["band_gap_eV"] == {"scf": 0.59, "nscf_ml": 0.6, "nscf_atomic": 0.89}
    assert rec["ml_density_used"] is True and rec["error"] is None
    assert rec["formula"] == "Si" and rec["n_atoms"] == 2 and rec["engine"] == "qe"
    assert doc.details.wall_s_oracle == pytest.approx(3.2)


def test_savings_document_names_failed_arms_but_not_skipped_ones(si) -> None:
    pred = {"path": None, "fallback": "unsupported_elements: Si"}
    ml = {"fallback": "unsupported_elements: Si", "ml_density_used": False,
          "scf_iterations_total": 9, "attempts": [], "energy_eV": -214.1}
    doc = savings_document.original(
        "Si", si, QEArmReader(), None, pred, ml, requested={"baseline": True, "predict": True, "ml": True,
                                             "nscf_ml": True, "nscf_scf": True},
    )
    assert doc.error == "arm(s) did not finish: baseline, nscf_scf"  # nscf_ml skipped on purpose
    assert doc.fallback == "unsupported_elements: Si" and doc.ml_density_used is False


def test_store_round_trip_is_read_by_the_report(tmp_path, si) -> None:
    from mlcharge_workflows.savings.report import load_records_from_store

    rec = SavingsDocument(structure="bad.cif", engine="qe", error="ValueError: x")
    save_record_only(project_job_store(tmp_path), rec.model_dump(mode="json"))
    docs = savings_documents(project_job_store(tmp_path))
    assert [d.record() for d in docs] == [rec.record()]
    assert [d.structure for d in load_records_from_store(project_job_store(tmp_path),
                                                         progress=False)] == ["bad.cif"]
    assert tuple(docs[0].record()) == RECORD_KEYS


def test_grid_data_round_trip(si) -> None:
    import numpy as np

    from mlcharge_workflows.density.grid import DensityGrid

    g = DensityGrid(si, np.random.default_rng(0).random((4, 5, 6)), None, {"a": 1})
    back = grid_from_data(grid_to_data(g))
    assert np.array_equal(back.total, g.total) and back.structure == si


def test_density_grid_is_msonable_and_reads_old_documents(si) -> None:
    """The grid goes to the data store as an object (base64 grids); old float lists still read."""
    import json

    import numpy as np
    from monty.json import MontyDecoder, MontyEncoder

    from mlcharge_workflows.common.schemas import PredictionDocument
    from mlcharge_workflows.density.grid import DensityGrid

    rng = np.random.default_rng(1)
    g = DensityGrid(si, rng.random((6, 6, 6)), rng.random((6, 6, 6)) - 0.5, {"source": "x"})
    text = json.dumps(g, cls=MontyEncoder)
    back = json.loads(text, cls=MontyDecoder)
    assert isinstance(back, DensityGrid) and back.structure == si
    assert np.array_equal(back.total, g.total) and np.array_equal(back.magnetization, g.magnetization)
    assert len(text) < 0.7 * len(json.dumps(g.total.tolist()) + json.dumps(g.magnetization.tolist()))
    old = {"structure": si.as_dict(), "shape": [6, 6, 6], "total": g.total.ravel().tolist(),
           "magnetization": None, "metadata": {"source": "x"}}  # before DensityGrid was MSONable
    doc = PredictionDocument(dir_name=".", density=old)
    assert isinstance(doc.density, DensityGrid) and np.array_equal(doc.density.total, g.total)
    assert np.array_equal(PredictionDocument(dir_name=".", density=g.as_dict()).density.total, g.total)


def test_predict_job_records_unsupported_elements_without_a_density(tmp_path, monkeypatch, user_rh) -> None:
    """With the shipped model: a cell of an element it was not trained on (Rh, from the
    user's own pseudopotential) gives a fallback, no file."""
    from jobflow import run_locally
    from pymatgen.core import Lattice, Structure

    monkeypatch.chdir(tmp_path)
    cell = Structure(Lattice.cubic(3.8), ["Rh"], [[0, 0, 0]])
    job = QEPredictDensityMaker(protocol=QEProtocol(pseudopotentials={"Rh": str(user_rh)})).make(cell)
    out = run_locally(job, log=False, ensure_success=True)[job.uuid][1].output
    assert out.fallback == "unsupported_elements: Rh"
    assert out.path is None and out.density is None and out.model_version


def test_vasp_engine_delegates_to_the_vasp_comparison_flow(si) -> None:
    flow = comparison_flow(si, engine="vasp", label="Si", oracle=True)
    names = [j.name for j in flow.jobs]
    assert names[-1] == SAVINGS_JOB_NAME and "oracle static" in names
    with pytest.raises(ValueError, match="does not apply to VASP"):
        comparison_flow(si, engine="vasp", protocol={"ecutwfc_ry": 20})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "castep"], "unknown engine 'castep'"),
        (["--model", "/nonexistent/weights.pt"], "does not exist"),
        (["--protocol", '{"ecutwfc_ry": "many"}'], "invalid QE protocol override"),
        (["--protocol", "[1, 2]"], "mapping of QEProtocol fields"),
        (["--protocol", json.dumps({"ecutwfc_ry": 30, "no_such_field": "x" * 300})],
         "invalid QE protocol override"),  # long inline JSON is not mistaken for a path
        (["--jobs", "0"], "must be >= 1"),
    ],
)
def test_compare_cli_rejects_bad_options_before_running(tmp_path, extra, message) -> None:
    from typer.testing import CliRunner

    from mlcharge_workflows.cli.main import app

    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["compare", "x.cif", "--output", str(out), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_savings_document_flags_an_ml_arm_without_a_converged_run(si) -> None:
    ml = {"fallback": "not_converged: ...; atomic rerun failed: RuntimeError: x",
          "ml_density_used": False, "task": None, "energy_eV": None, "scf_iterations_total": 200}
    doc = savings_document.original("Si", si, QEArmReader(), _task(), {"path": "p"}, ml,
                                    requested={"baseline": True, "predict": True, "ml": True})
    assert doc.error == "arm(s) did not finish: ml (no run converged)"
    assert doc.scf_iterations.ml == 200 and doc.energy_eV.ml is None


def test_iterations_by_threshold_from_each_arms_history(si) -> None:
    base_hist = [1e-2, 1e-4, 2e-6, 5e-7, 1e-8, 5e-9, 8e-10, 5e-10]  # protocol: < 1e-9 (2 atoms)
    ml = {"fallback": "energy: ...", "ml_density_used": False, "scf_iterations_total": 11,
          "wall_s_total": 2.0, "energy_eV": -214.1, "converged": True, "task": None,
          "attempts": [
              {"start": "ml", "scf_iterations": 4, "rejected": "energy differs",
               "scf_accuracy_Ry": [1e-5, 1e-7, 1e-9, 1e-10]},
              {"start": "atomic", "scf_iterations": 7, "scf_accuracy_Ry": base_hist[:7]},
          ]}
    doc = savings_document.original(
        "Si", si, QEArmReader(), _task(scf_iterations=8, scf_accuracy_Ry=base_hist),
        {"path": "p"}, ml, oracle=_task(scf_iterations=2, scf_accuracy_Ry=[1e-9, 1e-11]),
    )
    table = doc.record()["scf_iterations_by_threshold"]
    assert set(table) >= {"qe_default", "mp", "quacc", "protocol", "aiida_fast", "aiida_moderate"}
    # pw.x's default 1e-6 Ry per cell: baseline reaches it at iteration 4; the ML arm paid its
    # rejected attempt (4) plus 4 iterations of the accepted rerun from atoms
    assert table["qe_default"] == {"baseline": 4, "ml": 8, "oracle": 1}
    assert table["protocol"] == {"baseline": 7, "ml": 11, "oracle": 2}  # 1e-9 is not < 1e-9
    # a history that never reached a threshold gives None, not its length
    assert table["aiida_moderate"] == {"baseline": None, "ml": None, "oracle": 2}
    # backward compatible: every earlier key is still there, in order
    assert list(doc.record())[: len(RECORD_KEYS) - 1] == list(RECORD_KEYS[:-1])


def test_no_histories_give_an_empty_threshold_table(si) -> None:
    ml = {"ml_density_used": True, "scf_iterations_total": 5, "attempts": [
        {"start": "ml", "scf_iterations": 5}], "energy_eV": -1.0, "task": None}
    doc = savings_document.original("Si", si, QEArmReader(), _task(), {"path": "p"}, ml)
    assert doc.record()["scf_iterations_by_threshold"] == {}
