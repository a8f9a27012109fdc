"""The flows `mlcharge submit` builds: every engine/flow pair survives FireWorks
serialisation, and ml-bands / ml-static run for real through the embedded worker."""

from __future__ import annotations

import pytest
from fireworks import Workflow

from mlcharge_workflows.catalogue import ENGINES, FLOWS, build_flow
from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.submit import submit_structures
from mlcharge_workflows.submit.launchpad import EmbeddedLaunchPad, flow_to_fireworks
from mlcharge_workflows.submit.worker import run_embedded_worker

FAST_QE = {"ecutwfc_ry": 15.0, "ecutrho_ry": 60.0, "kspacing": 0.6, "conv_thr_per_atom": 1e-8}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("flow", FLOWS)
def test_every_flow_round_trips(engine, flow, si_fcc):
    options = {"protocol": FAST_QE} if engine == "qe" else {}
    jf = build_flow(si_fcc, engine, flow, "Si-test", ml_fworker="gpu", **options)
    wf = Workflow.from_dict(flow_to_fireworks(jf).to_dict())  # what a worker reads back
    assert len(wf.fws) == len(jf.jobs) >= 2
    routed = [fw for fw in wf.fws if fw.spec.get("_fworker") == "gpu"]
    assert len(routed) == 1 and ("predict" in routed[0].name or "density" in routed[0].name)
    if engine == "qe":  # the protocol reaches the worker as a QEProtocol, not its str()
        makers = [getattr(fw.tasks[0]["job"].function, "__self__", None) for fw in wf.fws]
        protocols = [m.protocol for m in makers if m is not None]
        # every job but the savings document (a plain function) is a QE Maker
        assert len(protocols) == len(wf.fws) - (flow == "compare")
        assert all(isinstance(p, QEProtocol) and p.ecutwfc_ry == 15.0 for p in protocols)


def test_unknown_flow_or_engine(si_fcc):
    with pytest.raises(ValueError, match="unknown flow 'relax'"):
        build_flow(si_fcc, "qe", "relax", "x")
    with pytest.raises(ValueError, match="unknown engine 'abinit'"):
        build_flow(si_fcc, "abinit", "compare", "x")


@pytest.mark.pwx
def test_ml_bands_runs_through_fireworks(tmp_path, monkeypatch, si_fcc):
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")
    monkeypatch.setenv("MLCHARGE_MPI_CMD", "")
    monkeypatch.chdir(tmp_path)
    cif = tmp_path / "Si.cif"
    si_fcc.to(filename=str(cif))
    submit_structures([cif], flow="ml-bands", project=tmp_path / "p", progress=False,
                      flow_options={"protocol": FAST_QE, "nprocs": 1})
    handle = EmbeddedLaunchPad(tmp_path / "p")
    summary = run_embedded_worker(handle, progress=False)
    assert len(summary.completed) == 3 and not summary.fizzled
    store = handle.job_store()
    store.connect()
    outputs = {d["name"]: d["output"] for d in store.query({}, properties=["name", "output"])}
    ml = outputs["ml static"]
    # Si is a trained element: the ML arm starts from the prediction and pw.x reads it
    assert ml["fallback"] is None and ml["ml_density_used"] is True
    assert ml["converged"] is True
    bands = outputs["qe bands"]
    assert bands["calculation"] == "bands"
    # the bands ran on the ML static's converged density (the reference resolved)
    assert bands["start_source"].startswith(ml["dir_name"])
    assert 0.3 < bands["band_gap_eV"] < 1.0  # Si, PBE: ~0.6 eV
