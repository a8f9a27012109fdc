"""The embedded FireWorks project: transactions, submission, workers, lost runs (no pw.x).

The jobs here are tiny jobflow jobs defined in this module; worker subprocesses import
them through PYTHONPATH. The same machinery with real pw.x flows is tested in
``test_fireworks_kill.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobflow import Flow, job
from jobflow.managers.fireworks import flow_to_workflow
from typer.testing import CliRunner

from mlcharge_workflows.cli.main import app
from mlcharge_workflows.submit import LaunchPadConfigError, submit_structures
from mlcharge_workflows.catalogue import _BUILDERS
from mlcharge_workflows.submit.launchpad import EmbeddedLaunchPad
from mlcharge_workflows.submit.worker import (
    _checkout,
    _run_offline,
    recover_lost_runs,
    run_embedded_worker,
)

HERE = Path(__file__).parent
SI_CIF = """data_Si
_cell_length_a 3.867
_cell_length_b 3.867
_cell_length_c 3.867
_cell_angle_alpha 60
_cell_angle_beta 60
_cell_angle_gamma 60
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Si1 Si 0.00 0.00 0.00
Si2 Si 0.25 0.25 0.25
"""


@job
def count_atoms(structure, label: str, sleep_s: float = 0.0):
    """A stand-in first job: waits, then returns the atom count."""
    time.sleep(sleep_s)
    return {"label": label, "n": len(structure)}


@job
def make_record(first: dict):
    """A stand-in savings job that depends on the first job's output (a reference)."""
    return {"structure": first["label"], "engine": "qe", "n_atoms": first["n"],
            "scf_iterations": {"baseline": 10, "ml": 6, "oracle": 3}}


def dummy_flow(structure, engine, label, sleep_s: float = 0.0, **_):
    """Two-job flow with a reference between the jobs."""
    first = count_atoms(structure, label, sleep_s)
    record = make_record(first.output)
    record.name = "savings document"  # the name the report looks for
    return Flow([first, record], name=f"dummy {label}")


@pytest.fixture
def cifs(tmp_path: Path) -> Path:
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i in range(6):
        (folder / f"Si_{i}.cif").write_text(SI_CIF)
    return folder


@pytest.fixture
def dummy_builder(monkeypatch):
    monkeypatch.setitem(_BUILDERS, "compare", dummy_flow)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _states(handle: EmbeddedLaunchPad) -> list[str]:
    with handle.read() as lp:
        return [d["state"] for d in lp.fireworks.find({}, {"state": 1})]


def _records(handle: EmbeddedLaunchPad) -> list[dict]:
    store = handle.job_store()
    store.connect()
    return [d["output"] for d in store.query({"output.scf_iterations": {"$exists": True}})]


def test_transaction_is_all_or_nothing(tmp_path):
    handle = EmbeddedLaunchPad(tmp_path / "p")
    before = handle.paths.launchpad_file.read_text()
    with pytest.raises(RuntimeError, match="boom"):
        with handle.transaction() as lp:
            lp.add_wf(flow_to_workflow(dummy_flow(None, "qe", "x")))
            raise RuntimeError("boom")
    assert handle.paths.launchpad_file.read_text() == before
    assert _states(handle) == []
    assert not list(handle.paths.root.glob(".launchpad.json.*"))  # no temp file left


def test_submit_worker_report_cli(tmp_path, cifs, dummy_builder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["submit", str(cifs), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "submitted 6 compare workflow(s)" in res.output
    handle = EmbeddedLaunchPad(tmp_path / "mlcharge_project")  # the default project
    assert _states(handle).count("READY") == 6
    summary = run_embedded_worker(handle, progress=False)
    assert len(summary.completed) == 12 and not summary.fizzled
    assert set(_states(handle)) == {"COMPLETED"}
    recs = _records(handle)
    assert sorted(r["structure"] for r in recs) == sorted(str(p) for p in cifs.iterdir())
    res = runner.invoke(app, ["report", "--no-progress", "--output", "r.csv"])
    assert res.exit_code == 0, res.output
    assert "median 40.0%" in res.output
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 7
    assert not (tmp_path / "FW_ping.json").exists()  # nothing written outside launch dirs


def test_bad_input_submits_nothing(tmp_path, cifs, dummy_builder):
    (cifs / "broken.cif").write_text("data_x\nnot a structure\n")
    with pytest.raises(ValueError, match="broken.cif"):
        submit_structures([cifs], project=tmp_path / "p", progress=False)
    assert _states(EmbeddedLaunchPad(tmp_path / "p")) == []
    with pytest.raises(ValueError, match="does not exist"):
        submit_structures([tmp_path / "missing.cif"], project=tmp_path / "q", progress=False)
    assert not (tmp_path / "q").exists()


def test_bad_launchpad_files(tmp_path, cifs, dummy_builder):
    bad = tmp_path / "bad.yaml"
    bad.write_text("host: [unclosed\n")
    with pytest.raises(LaunchPadConfigError, match="not readable YAML"):
        submit_structures([cifs], launchpad_file=bad, progress=False)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("host: localhost\nprot: 27017\n")
    with pytest.raises(LaunchPadConfigError, match="unknown keys \\['prot'\\]"):
        submit_structures([cifs], launchpad_file=unknown, progress=False)
    down = tmp_path / "down.yaml"
    down.write_text("host: 127.0.0.1\nport: 1\nname: fw_test\n")  # nothing listens on port 1
    t0 = time.perf_counter()
    with pytest.raises(LaunchPadConfigError, match="cannot reach the MongoDB"):
        submit_structures([cifs], launchpad_file=down, progress=False, timeout_ms=1000)
    assert time.perf_counter() - t0 < 10
    res = CliRunner().invoke(app, ["submit", str(cifs), "--launchpad", str(bad)])
    assert res.exit_code == 2 and "Nothing was submitted" in res.output


def test_recover_finished_run_of_dead_worker(tmp_path):
    """A worker died after its firework finished but before syncing: result recovered."""
    from fireworks import FWorker

    handle = EmbeddedLaunchPad(tmp_path / "p")
    with handle.transaction() as lp:
        lp.add_wf(flow_to_workflow(count_atoms({"a": 1}, "x")))
    launch_dir = handle.paths.launches_dir / "l1"
    launch_dir.mkdir()
    fw, launch_id, _ = _checkout(handle, FWorker(), launch_dir, "ghost-host-999999")
    _run_offline(FWorker(), fw.fw_id, launch_dir)  # finished; never synced
    assert _states(handle) == ["RUNNING"]
    # the owner is on another host: cannot be checked, counts as alive -> untouched
    assert recover_lost_runs(handle) == ([], [])
    with handle.transaction() as lp:
        dead = f"{os.uname().nodename}-999999999"  # this host, a PID that does not exist
        lp.db["mlcharge_launch_owners"].update_many({}, {"$set": {"worker": dead}})
    assert recover_lost_runs(handle) == ([fw.fw_id], [])
    assert _states(handle) == ["COMPLETED"]


def _owned_by(handle: EmbeddedLaunchPad, pid: int) -> bool:
    with handle.read() as lp:
        return any(d["worker"].endswith(f"-{pid}")
                   for d in lp.db["mlcharge_launch_owners"].find({}))


def _freeze(proc: subprocess.Popen) -> bool:
    """SIGSTOP ``proc`` and wait until it is stopped; False if it has exited."""
    os.kill(proc.pid, signal.SIGSTOP)
    while True:
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in "TtZX":
            return state in "Tt"
        time.sleep(0.001)


def _runs_unfinished(handle: EmbeddedLaunchPad, pid: int) -> bool:
    """True if worker ``pid`` owns a RUNNING launch whose run has not finished, in the
    committed database file (read without the lock: a frozen worker may hold it)."""
    from mlcharge_workflows.submit.launchpad import _launchpad_on, _load_server
    from mlcharge_workflows.submit.worker import _finished_offline_data

    lp = _launchpad_on(_load_server(handle.paths.launchpad_file))
    ids = [d["launch_id"] for d in lp.db["mlcharge_launch_owners"].find({})
           if d["worker"].endswith(f"-{pid}")]
    return any(_finished_offline_data(d.get("launch_dir")) is None
               for d in lp.launches.find({"launch_id": {"$in": ids}, "state": "RUNNING"}))


def _start_worker(project: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlcharge_workflows.cli.main", "worker", "--project",
         str(project), "--no-progress"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=_worker_env(),
        start_new_session=True,
    )


def test_two_workers_then_sigkill(tmp_path, cifs, dummy_builder):
    """Two workers share a project; one is SIGKILLed mid-run; a restart reruns what it lost."""
    project = tmp_path / "p"
    submit_structures([cifs], project=project, progress=False,
                      flow_options={"sleep_s": 0.4})
    handle = EmbeddedLaunchPad(project)
    w1 = _start_worker(project, tmp_path / "w1.log")
    w2 = _start_worker(project, tmp_path / "w2.log")
    deadline = time.time() + 60
    while time.time() < deadline and _states(handle).count("COMPLETED") < 2:
        time.sleep(0.1)
    # w1 frozen, then killed only if it is inside a firework that has not finished: seen
    # merely owning a launch, it could finish (or sync) it before a kill landed, and the
    # lost run to rerun would not exist
    while time.time() < deadline:
        assert _freeze(w1), (tmp_path / "w1.log").read_text()  # w1 has not exited
        if _runs_unfinished(handle, w1.pid):
            break
        os.kill(w1.pid, signal.SIGCONT)
        time.sleep(0.05)
    else:
        pytest.fail("w1 was never seen inside an unfinished firework")
    os.killpg(w1.pid, signal.SIGKILL)
    w1.wait()
    assert w2.wait(timeout=120) == 0, (tmp_path / "w2.log").read_text()
    # w2 may already have rerun w1's lost firework; a fresh worker finishes anything left
    w3 = _start_worker(project, tmp_path / "w3.log")
    assert w3.wait(timeout=120) == 0, (tmp_path / "w3.log").read_text()
    log = (tmp_path / "w2.log").read_text() + (tmp_path / "w3.log").read_text()
    assert "rerun" in log, log
    assert set(_states(handle)) == {"COMPLETED"}
    recs = _records(handle)
    assert len(recs) == 6 and len({r["structure"] for r in recs}) == 6
    with handle.read() as lp:
        lost = [d for d in lp.launches.find({"state": "FIZZLED"})]
    assert len(lost) >= 1  # the killed launch, marked FIZZLED by detect_lostruns
    json.loads(handle.paths.launchpad_file.read_text())  # the file survived the kill intact


def test_unsupported_element_submits_nothing(tmp_path, cifs):
    """The real QE builder checks every structure before anything is written."""
    (cifs / "Au.cif").write_text(SI_CIF.replace("Si1 Si", "Au1 Au").replace("Si2 Si", "Au2 Au"))
    with pytest.raises(ValueError, match="Au.cif: unsupported element"):
        submit_structures([cifs], project=tmp_path / "p", progress=False)
    assert _states(EmbeddedLaunchPad(tmp_path / "p")) == []


def test_sigterm_returns_firework_to_queue(tmp_path, cifs, dummy_builder):
    """A worker asked to stop (SIGTERM, Ctrl-C) requeues its firework and exits cleanly."""
    project = tmp_path / "p"
    submit_structures([cifs], project=project, progress=False, flow_options={"sleep_s": 30})
    handle = EmbeddedLaunchPad(project)
    w = _start_worker(project, tmp_path / "w.log")
    deadline = time.time() + 60
    while time.time() < deadline and not _owned_by(handle, w.pid):
        time.sleep(0.05)
    time.sleep(0.5)
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=30) == 0, (tmp_path / "w.log").read_text()
    assert "returned to the queue" in (tmp_path / "w.log").read_text()
    states = _states(handle)
    assert "RUNNING" not in states and "FIZZLED" not in states and "COMPLETED" not in states
    with handle.read() as lp:
        assert lp.db["mlcharge_launch_owners"].count_documents({}) == 0


def test_signal_between_checkout_and_run_requeues(tmp_path, monkeypatch):
    """SIGTERM after the checkout is committed, before the run starts: the firework goes
    back to the queue (the worker is not killed with a RUNNING launch left behind)."""
    import threading

    from mlcharge_workflows.submit import worker

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    handle = EmbeddedLaunchPad(tmp_path / "p")
    with handle.transaction() as lp:
        lp.add_wf(flow_to_workflow(count_atoms({"a": 1}, "x")))

    def signal_then_check(spec):  # runs between the checkout and the run
        handler = signal.getsignal(signal.SIGTERM)
        assert isinstance(getattr(handler, "__self__", None), worker._StopSignals), handler
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    monkeypatch.setattr(worker, "structure_problem", signal_then_check)
    summary = run_embedded_worker(handle, progress=False)
    assert summary.interrupted is not None and summary.completed == []
    assert _states(handle) == ["READY"]
    with handle.read() as lp:
        assert lp.db["mlcharge_launch_owners"].count_documents({}) == 0
        assert lp.launches.count_documents({"state": "RUNNING"}) == 0


def test_worker_needs_a_project(tmp_path):
    res = CliRunner().invoke(app, ["worker", "--project", str(tmp_path / "none")])
    assert res.exit_code == 2 and "nothing was submitted" in res.output
    assert not (tmp_path / "none").exists()


def test_load_job_store_configs(tmp_path):
    from jobflow import JobStore

    from mlcharge_workflows.submit import load_job_store

    spec = tmp_path / "jobflow.yaml"
    spec.write_text("JOB_STORE:\n  docs_store:\n    type: MemoryStore\n  additional_stores:\n"
                    "    data:\n      type: MemoryStore\n")
    store = load_job_store(spec)
    assert isinstance(store, JobStore) and "data" in store.additional_stores
    bad = tmp_path / "bad.yaml"
    bad.write_text("JOB_STORE:\n  docs_store:\n    type: NoSuchStore\n")
    with pytest.raises(LaunchPadConfigError, match="not a valid jobflow store config"):
        load_job_store(bad)
    with pytest.raises(LaunchPadConfigError, match="not an mlcharge project"):
        load_job_store(tmp_path)
    EmbeddedLaunchPad(tmp_path / "proj")
    assert load_job_store(tmp_path / "proj").docs_store.__class__.__name__ == "MontyStore"
