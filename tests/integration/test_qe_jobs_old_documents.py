"""A FireWorks workflow stored before the QE Makers were split out of ``engines.qe.jobs``
(tests/unit/data/qe/workflow_before_jobs_split.json, every ``@module`` the old one) still
runs to the end with today's code: prediction, baseline, ML static, bands, ML and atomic
non-SCF, through the embedded worker and real pw.x."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fireworks import FWorker, Workflow

from mlcharge_workflows.submit.launchpad import EmbeddedLaunchPad
from mlcharge_workflows.submit.worker import run_embedded_worker

STORED = Path(__file__).parents[1] / "unit" / "data" / "qe" / "workflow_before_jobs_split.json"


@pytest.mark.pwx
def test_a_workflow_stored_before_the_split_runs_with_pw_x(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")
    monkeypatch.setenv("MLCHARGE_MPI_CMD", "")
    monkeypatch.chdir(tmp_path)
    handle = EmbeddedLaunchPad(tmp_path / "p")
    with handle.transaction() as lp:
        lp.add_wf(Workflow.from_dict(json.loads(STORED.read_text())["workflow"]))
    # the prediction is routed to a "gpu" worker, as the stored spec says
    summary = run_embedded_worker(handle, fworker=FWorker(name="gpu"), progress=False)
    assert len(summary.completed) == 6 and not summary.fizzled
    store = handle.job_store()
    store.connect()
    out = {d["name"]: d["output"] for d in store.query({}, properties=["name", "output"])}
    assert sorted(out) == sorted(["predict density", "qe static", "ml static", "qe non-scf",
                                  "ml non-scf", "atomic non-scf"])
    assert out["predict density"]["fallback"] is None  # Si: a trained element
    ml, base = out["ml static"], out["qe static"]
    assert ml["ml_density_used"] is True and ml["fallback"] is None and ml["converged"] is True
    assert ml["task"]["density_read_from_file"] is True  # pw.x read the predicted file
    assert base["converged"] is True and base["start"] == "atomic"
    assert abs(ml["energy_eV"] - base["energy_eV"]) < 1e-3 * 2  # the policy's tolerance, 2 atoms
    bands = out["qe non-scf"]
    assert bands["calculation"] == "bands" and bands["start_source"].startswith(ml["dir_name"])
    assert 0.3 < bands["band_gap_eV"] < 1.0  # Si, PBE: ~0.6 eV
    for name in ("ml non-scf", "atomic non-scf"):
        assert out[name]["calculation"] == "nscf" and out[name]["band_gap_eV"] > 0.0, name
