"""The runtime patches of ``mlcharge_workflows/_compat.py``: the upstream behaviour each works around is
still there (a failure here means upstream changed: drop or adapt the patch), and every
patch is undone when its context ends."""

from __future__ import annotations

import inspect

import pytest
from jobflow import Flow, Response, job, run_locally
from pydantic import BaseModel

pytest.importorskip("fireworks")


def test_upstream_rocket_still_calls_zopen_without_a_mode_which_monty_rejects(tmp_path) -> None:
    from fireworks.core import rocket
    from monty.io import zopen

    source = inspect.getsource(rocket)
    assert "zopen(fpath)" in source, "FireWorks now passes a mode: offline_rocket's zopen shim can go"
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(TypeError, match="mode"):
        zopen(tmp_path / "f.json")  # monty >= 2025: the reason for the shim


def test_upstream_offline_ping_still_starts_a_heartbeat_thread() -> None:
    """Read, not run: the thread would write FW_ping.json into whatever folder is current."""
    from fireworks.core import rocket

    source = inspect.getsource(rocket.start_ping_launch)
    assert "Thread(" in source and "launchpad is None" not in source, (
        "FireWorks no longer starts the offline ping thread: that part of offline_rocket can go")


def test_offline_rocket_patches_only_inside_its_context(tmp_path) -> None:
    from fireworks.core import rocket

    from mlcharge_workflows._compat import offline_rocket

    before = (rocket.zopen, rocket.start_ping_launch)
    (tmp_path / "f.json").write_text("{}")
    with offline_rocket():
        with rocket.zopen(tmp_path / "f.json") as fh:  # no mode: "rt"
            assert fh.read() == "{}"
        assert rocket.start_ping_launch(None, 0) is None
    assert (rocket.zopen, rocket.start_ping_launch) == before


def test_upstream_launchpad_still_builds_its_own_mongoclient() -> None:
    import fireworks.core.launchpad as fw_launchpad

    assert "MongoClient(" in inspect.getsource(fw_launchpad.LaunchPad.__init__)


def test_mongomock_client_only_inside_its_context() -> None:
    import fireworks.core.launchpad as fw_launchpad
    import mongomock

    from mlcharge_workflows._compat import mongomock_launchpad_client

    original = fw_launchpad.MongoClient
    server = mongomock.store.ServerStore()
    with mongomock_launchpad_client(server):
        lp = fw_launchpad.LaunchPad(name="fireworks", strm_lvl="WARNING")
    assert fw_launchpad.MongoClient is original
    lp.fireworks.insert_one({"fw_id": 1})
    assert lp.fireworks.count_documents({}) == 1


def test_upstream_jobfiretask_still_reads_the_default_store_and_it_is_restored() -> None:
    from jobflow import SETTINGS, JobStore
    from jobflow.managers.fireworks import JobFiretask
    from maggma.stores import MemoryStore

    from mlcharge_workflows._compat import jobflow_store

    assert "SETTINGS.JOB_STORE" in inspect.getsource(JobFiretask.run_task)
    previous = SETTINGS.JOB_STORE
    store = JobStore(MemoryStore())
    with jobflow_store(store):
        assert SETTINGS.JOB_STORE is store
    assert SETTINGS.JOB_STORE is previous


class _Out(BaseModel):
    x: int


@job(output_schema=_Out)
def _inner() -> _Out:
    return _Out(x=1)


@job(output_schema=_Out)
def _outer(workaround: bool) -> Response:
    from mlcharge_workflows._compat import allow_replacement_output

    replacement = _inner()
    if workaround:
        allow_replacement_output()
    return Response(replace=Flow([replacement], output=replacement.output))


@job
def _read(out: _Out) -> int:
    return out.x


def test_upstream_replace_still_validates_the_reference_and_the_workaround_runs(tmp_path) -> None:
    """jobflow validates the replaced job's output (a reference) against its schema."""
    plain = _outer(False)
    with pytest.raises(RuntimeError, match="did not finish"):
        run_locally(plain, ensure_success=True, log=False, root_dir=tmp_path)
    fixed = _outer(True)
    reader = _read(fixed.output)  # the replacement's output reaches the next job
    out = run_locally(Flow([fixed, reader]), ensure_success=True, log=False, root_dir=tmp_path)
    assert out[reader.uuid][1].output == 1
