"""A non-SCF run on a prediction that fell back is skipped, not an error, in comparisons."""

from __future__ import annotations

import pytest
from jobflow import run_locally

from mlcharge_workflows.engines.qe.jobs import MLQENonSCFMaker


def _fallback_prediction() -> dict:
    return {"dir_name": ".", "path": None, "formula": "Al", "n_atoms": 1,
            "fallback": "unsupported_elements: Al"}


def test_skipped_nscf_job_completes_with_no_output(tmp_path, monkeypatch, al) -> None:
    monkeypatch.chdir(tmp_path)
    job = MLQENonSCFMaker(skip_without_prediction=True).make(al, _fallback_prediction())
    responses = run_locally(job, ensure_success=True, create_folders=True)
    assert responses[job.uuid][1].output is None


def test_nscf_without_prediction_is_an_error_outside_comparisons(tmp_path, monkeypatch, al) -> None:
    monkeypatch.chdir(tmp_path)
    maker = MLQENonSCFMaker()
    with pytest.raises(ValueError, match=r"no predicted density to run non-SCF from "
                                         r"\(unsupported_elements: Al\)"):
        maker.make.original(maker, al, _fallback_prediction())


def test_magnetic_cell_with_atomic_spin_start_is_a_recorded_fallback(tmp_path, monkeypatch, ni_fcc) -> None:
    """With the atomic spin start the model returns pw.x's own start for magnetic cells: never counted as ML."""
    from mlcharge_workflows.engines.qe.jobs import QEPredictDensityMaker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLCHARGE_MODEL_SPIN", "atomic")
    job = QEPredictDensityMaker().make(ni_fcc)
    responses = run_locally(job, ensure_success=True, create_folders=True)
    doc = responses[job.uuid][1].output
    assert doc.fallback.startswith("atomic_spin_start")
    assert doc.path is None
