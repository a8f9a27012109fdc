"""workflows/vasp_ml_bandstructure.py routes the density prediction to a GPU worker: checked
on the built FireWorks workflow (the predict firework asks for the worker, no other does)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("atomate2")

EXAMPLE = Path(__file__).resolve().parents[2] / "workflows" / "vasp_ml_bandstructure.py"


def test_gpu_routed_workflow_sends_only_the_prediction_to_the_gpu_worker(sic_fcc) -> None:
    spec = importlib.util.spec_from_file_location("vasp_ml_bandstructure", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    wf = mod.gpu_routed_workflow(sic_fcc, fworker="gpu")
    routed = {fw.name: fw.spec.get("_fworker") for fw in wf.fws}
    assert len(routed) == 3
    assert [name for name, w in routed.items() if w == "gpu"] == ["predict density"]
    assert all(w is None for name, w in routed.items() if name != "predict density")
