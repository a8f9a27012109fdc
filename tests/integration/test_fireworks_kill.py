"""Reliability: 20 real QE comparisons, a worker SIGKILLed mid-run, a restart finishes all.

Each structure is a 2-atom Si cell (lattice constants 5.30-5.58 Å) run through the real
``compare`` flow (baseline SCF, density prediction, ML-started SCF, savings document) at
a low cutoff. The worker runs as ``mlcharge worker`` in its own process group and is
killed with SIGKILL (with its pw.x) while it owns a running firework. A new worker must
find the dead worker's launch, rerun it, and finish: 20 savings records, none lost, none
duplicated, every firework COMPLETED exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.common.documents import SAVINGS_JOB_NAME
from mlcharge_workflows.savings.report import load_records_from_store, summarize
from mlcharge_workflows.submit import submit_structures
from mlcharge_workflows.submit.launchpad import OWNERS_COLLECTION, EmbeddedLaunchPad

pytestmark = [pytest.mark.pwx, pytest.mark.slow]

N_STRUCTURES = 20
FAST_QE = {"ecutwfc_ry": 12.0, "ecutrho_ry": 48.0, "kspacing": 1.0,
           "conv_thr_per_atom": 1e-7}


def _si(a: float) -> Structure:
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _model_available() -> bool:
    from mlcharge_workflows.engines.qe.density import model_version

    try:
        model_version(None)
    except ValueError:
        return False
    return True


def _worker(project: Path, log: Path) -> subprocess.Popen:
    # serial pw.x (no mpirun start-up per run) and one torch thread: the cheapest layout
    env = dict(os.environ, MLCHARGE_QE_NPROCS="1", MLCHARGE_MPI_CMD="", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "mlcharge_workflows.cli.main", "worker", "--project",
         str(project), "--no-progress"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def _snapshot(handle: EmbeddedLaunchPad) -> tuple[Counter, list[dict]]:
    with handle.read() as lp:
        states = Counter(d["state"] for d in lp.fireworks.find({}, {"state": 1}))
        owners = list(lp.db[OWNERS_COLLECTION].find({}))
    return states, owners


def _owns_scf(handle: EmbeddedLaunchPad, owners: list[dict]) -> bool:
    """True if a worker owns a running SCF firework (pw.x runs of about a second)."""
    if not owners:
        return False
    with handle.read() as lp:
        ids = [d["fw_id"] for d in lp.launches.find(
            {"launch_id": {"$in": [o["launch_id"] for o in owners]}, "state": "RUNNING"},
            {"fw_id": 1})]
        names = [d["name"] for d in lp.fireworks.find({"fw_id": {"$in": ids}}, {"name": 1})]
    return any("static" in n for n in names)


def test_sigkill_worker_then_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for i in range(N_STRUCTURES):
        _si(5.30 + 0.015 * i).to(filename=str(cifs / f"Si_{i:02d}.cif"))
    project = tmp_path / "project"
    result = submit_structures([cifs], engine="qe", flow="compare", project=project,
                               progress=False, flow_options={"protocol": FAST_QE, "nprocs": 1})
    assert len(result.workflows) == N_STRUCTURES
    handle = EmbeddedLaunchPad(project)
    n_fws = sum(_snapshot(handle)[0].values())

    # --- run, then SIGKILL the worker (and its pw.x) while it runs an SCF firework
    killed_mid_run = False
    for attempt in range(3):  # a kill can land between two fireworks: then try again
        w1 = _worker(project, tmp_path / f"w1_{attempt}.log")
        deadline = time.time() + 300
        while time.time() < deadline:
            states, owners = _snapshot(handle)
            if states["COMPLETED"] >= (attempt + 1) * n_fws // 5 and _owns_scf(handle, owners):
                break
            assert w1.poll() is None, (tmp_path / f"w1_{attempt}.log").read_text()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("the worker made no progress")
        os.killpg(w1.pid, signal.SIGKILL)
        assert w1.wait() == -signal.SIGKILL
        json.loads(handle.paths.launchpad_file.read_text())  # atomic writes: file intact
        states, owners = _snapshot(handle)
        if states["RUNNING"] >= 1 and owners:  # the dead worker's launch is left over
            killed_mid_run = True
            break
    assert killed_mid_run
    assert states["COMPLETED"] < n_fws

    # --- restart: lost run detected and rerun (or recovered if it had finished), all done
    w2 = _worker(project, tmp_path / "w2.log")
    assert w2.wait(timeout=600) == 0, (tmp_path / "w2.log").read_text()[-3000:]
    log = (tmp_path / "w2.log").read_text()
    assert "lost runs of dead workers" in log, log[-3000:]
    states, owners = _snapshot(handle)
    assert owners == []
    with handle.read() as lp:
        fizzled = {d["name"] for d in lp.fireworks.find({"state": "FIZZLED"}, {"name": 1})}
    if _model_available():
        assert states == Counter({"COMPLETED": n_fws}), states
    else:  # no shipped weights yet: prediction fizzles, the ML arm falls back to atoms
        assert fizzled == {"predict density"}, fizzled
        assert states == Counter({"COMPLETED": n_fws - N_STRUCTURES, "FIZZLED": N_STRUCTURES})
    with handle.read() as lp:
        completed_launches = Counter(
            d["fw_id"] for d in lp.launches.find({"state": "COMPLETED"}, {"fw_id": 1}))
    assert set(completed_launches.values()) == {1}  # no firework completed twice

    # --- every savings record exactly once
    store = handle.job_store()
    store.connect()
    docs = list(store.query({"name": SAVINGS_JOB_NAME}, properties=["uuid", "index"]))
    assert len(docs) == N_STRUCTURES
    assert len({(d["uuid"], d["index"]) for d in docs}) == N_STRUCTURES
    records = load_records_from_store(store, progress=False)
    labels = sorted(r.structure for r in records)
    assert labels == sorted(str(p) for p in cifs.iterdir())
    assert all(r.scf_iterations.baseline and r.scf_iterations.ml for r in records), [
        (r.structure, r.error) for r in records if not r.scf_iterations.ml]
    assert summarize(records)["n_compared"] == N_STRUCTURES
