"""Workers: DFT processes die with them; a firework that kills its worker twice is given up.

* A worker SIGKILLed (the worker process alone, not its group) while pw.x runs leaves no
  pw.x or mpirun behind: they run in their own process group with a parent-death signal.
* A firework whose process dies twice (here: a segfault) is FIZZLED with the reason, and
  the other workflows of the project finish.
* A firework whose spec holds a non-finite structure (submitted by an older version) is
  FIZZLED by the worker before anything can crash on it.

The tiny jobs are defined in this module; worker subprocesses import it via PYTHONPATH.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jobflow import Flow, job
from jobflow.managers.fireworks import flow_to_workflow
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.submit.launchpad import EmbeddedLaunchPad
from mlcharge_workflows.submit.worker import (
    LOST_RUNS_COLLECTION,
    MAX_WORKER_DEATHS,
    run_embedded_worker,
)

HERE = Path(__file__).parent


@job
def crash_or_count(structure, crash: bool = False):
    """Segfaults the process (as native code on a bad input would) or counts atoms."""
    if crash:
        ctypes.string_at(0)  # SIGSEGV
    return len(structure)


def _si() -> Structure:
    a = 5.43
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]),
                     ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _add(handle: EmbeddedLaunchPad, structure: Structure, crash: bool, name: str) -> int:
    wf = flow_to_workflow(Flow([crash_or_count(structure, crash)], name=name))
    with handle.transaction() as lp:
        return min(lp.add_wf(wf).values())


def _worker(project: Path, log: Path, **env_extra: str) -> subprocess.Popen:
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "mlcharge_workflows.cli.main", "worker", "--project",
         str(project), "--no-progress"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _fw_state(handle: EmbeddedLaunchPad, fw_id: int) -> str:
    with handle.read() as lp:
        return lp.fireworks.find_one({"fw_id": fw_id}, {"state": 1})["state"]


def _fizzle_reason(handle: EmbeddedLaunchPad, fw_id: int) -> str:
    with handle.read() as lp:
        fw = lp.get_fw_by_id(fw_id)
    return fw.launches[-1].action.stored_data["_message"]


def test_firework_that_kills_its_worker_twice_is_fizzled(tmp_path):
    project = tmp_path / "project"
    handle = EmbeddedLaunchPad(project)
    bad = _add(handle, _si(), True, "crashes")
    good = _add(handle, _si(), False, "fine")
    codes = []
    for attempt in range(MAX_WORKER_DEATHS + 1):
        w = _worker(project, tmp_path / f"w{attempt}.log")
        codes.append(w.wait(timeout=300))
        if codes[-1] == 0:
            break
    log = (tmp_path / f"w{len(codes) - 1}.log").read_text()
    # the crashing firework ran first (lowest id) and took the worker down each time
    assert codes[:MAX_WORKER_DEATHS] == [-signal.SIGSEGV] * MAX_WORKER_DEATHS, codes
    assert codes[-1] == 0, log[-3000:]
    assert _fw_state(handle, bad) == "FIZZLED"
    assert _fw_state(handle, good) == "COMPLETED"  # the project carried on
    reason = _fizzle_reason(handle, bad)
    assert f"died {MAX_WORKER_DEATHS} times" in reason and "not rerun again" in reason
    with handle.read() as lp:
        assert lp.db[LOST_RUNS_COLLECTION].count_documents({"fw_id": bad}) == MAX_WORKER_DEATHS
    assert "fizzled" in log and str(bad) in log


def test_worker_refuses_a_nonfinite_structure_in_a_firework(tmp_path):
    project = tmp_path / "project"
    handle = EmbeddedLaunchPad(project)
    nan = _si()
    nan.replace(1, "Si", [np.nan, 0.25, 0.25])  # what an older `submit` let through
    bad = _add(handle, nan, False, "nan")
    good = _add(handle, _si(), False, "fine")
    summary = run_embedded_worker(handle, progress=False)
    assert summary.fizzled == [bad] and summary.completed == [good]
    assert "site 1 (Si) has non-finite coordinates" in _fizzle_reason(handle, bad)


def _dft_processes(root: Path) -> list[tuple[int, str]]:
    """pw.x / mpirun processes whose working folder is under ``root``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if cwd.startswith(str(root)) and comm in ("pw.x", "mpirun", "orted", "prterun"):
            found.append((int(pid), comm))
    return found


@pytest.mark.pwx
@pytest.mark.parametrize("nprocs", [1, 2])
def test_sigkill_worker_leaves_no_pwx(tmp_path, nprocs):
    """SIGKILL the worker process alone mid-pw.x: its pw.x (and mpirun ranks) go too."""
    from mlcharge_workflows.submit import submit_structures

    _si().to(filename=str(tmp_path / "Si.cif"))
    project = tmp_path / "project"
    slow = {"ecutwfc_ry": 30.0, "ecutrho_ry": 120.0, "kspacing": 0.12}  # a run of many seconds
    submit_structures([tmp_path / "Si.cif"], engine="qe", flow="compare", project=project,
                      progress=False, flow_options={"protocol": slow, "nprocs": nprocs})
    mpi = "" if nprocs == 1 else "mpirun --allow-run-as-root --bind-to none -np {nprocs}"
    w = _worker(project, tmp_path / "w.log", MLCHARGE_MPI_CMD=mpi,
                OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            running = [p for p in _dft_processes(project) if p[1] == "pw.x"]
            if len(running) >= nprocs:
                break
            assert w.poll() is None, (tmp_path / "w.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("pw.x never started")
        time.sleep(1.0)
        os.kill(w.pid, signal.SIGKILL)  # the worker alone: not its process group
        assert w.wait(timeout=30) == -signal.SIGKILL
        deadline = time.time() + 20
        while _dft_processes(project) and time.time() < deadline:
            time.sleep(0.2)
        assert _dft_processes(project) == [], "orphaned DFT processes of a dead worker"
    finally:
        for pid, _ in _dft_processes(project):
            os.kill(pid, signal.SIGKILL)
        if w.poll() is None:
            w.kill()
