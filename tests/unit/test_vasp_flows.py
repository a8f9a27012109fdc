"""Savings-document accounting of the VASP comparison (arms given as stored task dicts)."""

from __future__ import annotations

import pytest

pytest.importorskip("atomate2")

from mlcharge_workflows.common.documents import savings_document  # noqa: E402
from mlcharge_workflows.engines.vasp.flows import (  # noqa: E402
    VaspArmReader,
    VaspComparisonMaker,
)


def _task(attempts, icharg, record=None, energy=-10.0, state="successful"):
    return {
        "dir_name": "host:/runs/x",
        "state": state,
        "output": {"energy": energy, "bandgap": 1.1},
        "calcs_reversed": [{"input": {"parameters": {"ICHARG": icharg, "NELMDL": -5,
                                                     "ENCUT": 520.0}},
                            "output": {"outcar": {"total_magnetization": 0.0}}}],
        "additional_json": {
            "scf_attempts": [{"scf_iterations": n, "wall_s": w} for n, w in attempts],
            **({"ml_start": record} if record else {}),
        },
    }


PRED = {"path": "/p/CHGCAR", "timings": {"total_s": 3.0}, "predict_wall_s": 3.0,
        "model_version": "v1", "predictor": "model", "nelect": 8.0, "n_electrons": 8.0}


def test_fallback_counts_every_attempt(si) -> None:
    record = {
        "status": "abandoned", "fallback": "SCF from the predicted density did not converge",
        "events": [{"action": "restored", "reason": "NELM"},
                   {"action": "abandoned", "reason": "x"}],
        "density": {"written": "copied"},
    }
    doc = savings_document.original(
        "Si", si, VaspArmReader(), _task([(17, 50.0)], 2), PRED,
        _task([(200, 300.0), (200, 310.0), (17, 52.0)], 2, record),
        requested={"baseline": True, "ml": True, "predict": True},
    )
    rec = doc.record()
    assert rec["scf_iterations"] == {"baseline": 17, "ml": 417, "oracle": None}
    assert rec["wall_s"] == {"baseline": 50.0, "ml": 662.0, "predict": 3.0}
    assert rec["ml_density_used"] is False
    assert rec["fallback"].startswith("SCF from the predicted density")
    assert [a.start for a in doc.details.ml_attempts] == ["ml", "ml", "atomic"]
    assert [a.rejected for a in doc.details.ml_attempts] == ["NELM", "x", None]
    assert doc.details.nelmdl == -5 and doc.details.protocol == {"ENCUT": 520.0}
    assert doc.iteration_saving == pytest.approx(1 - 417 / 17)


def test_missing_arms_and_prediction_failure(si) -> None:
    failed = {"error": "ValueError: element 'Xe' unknown", "timings": {"total_s": 0.1}}
    doc = savings_document.original(
        "Si", si, VaspArmReader(), _task([(17, 50.0)], 2), failed, None,
        nscf_ml=None, requested={"baseline": True, "ml": True, "nscf_ml": True},
    )
    rec = doc.record()
    assert rec["error"] == "arm(s) did not finish: ml"  # nscf_ml skipped on purpose
    assert rec["fallback"] == "prediction failed: ValueError: element 'Xe' unknown"
    assert rec["ml_density_used"] is None and rec["scf_iterations"]["ml"] is None


def test_flow_shape(si) -> None:
    flow = VaspComparisonMaker(oracle=True, nscf=True, nscf_mode="uniform").make(si, label="Si")
    names = [j.name for j in flow.jobs]
    assert names == ["baseline static", "predict density", "ml static", "oracle static",
                     "nscf converged", "nscf ml", "nscf atomic", "savings document"]


def test_fireworks_routes_prediction_to_gpu_worker(si) -> None:
    pytest.importorskip("fireworks")
    from jobflow.managers.fireworks import flow_to_workflow
    from monty.json import MontyDecoder, jsanitize

    flow = VaspComparisonMaker(oracle=True, predict_manager_config={"_fworker": "gpu"}).make(si)
    wf = flow_to_workflow(flow)
    workers = {fw.name: fw.spec.get("_fworker") for fw in wf.fws}
    assert workers["predict density"] == "gpu"
    assert workers["baseline static"] is None and workers["ml static"] is None
    # every maker survives serialisation (what a FireWorks worker receives)
    again = MontyDecoder().process_decoded(jsanitize(flow.as_dict(), strict=True))
    assert [j.name for j in again.jobs] == [j.name for j in flow.jobs]
