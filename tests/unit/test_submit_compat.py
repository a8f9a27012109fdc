"""The runtime patches of ``submit/_compat.py``: the upstream behaviour each works around is
still there (a failure here means upstream changed: drop or adapt the patch), and every
patch is undone when its context ends."""

from __future__ import annotations

import inspect

import pytest

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
    from fireworks.core import rocket
    from fireworks.fw_config import FWData

    if FWData().MULTIPROCESSING:
        pytest.skip("FireWorks multiprocessing mode starts no thread")
    stop = rocket.start_ping_launch(None, 0)
    try:
        assert stop is not None, "offline mode starts no ping thread any more: that patch can go"
    finally:
        if stop is not None:
            stop.set()


def test_offline_rocket_patches_only_inside_its_context(tmp_path) -> None:
    from fireworks.core import rocket

    from mlcharge_workflows.submit._compat import offline_rocket

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

    from mlcharge_workflows.submit._compat import mongomock_launchpad_client

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

    from mlcharge_workflows.submit._compat import jobflow_store

    assert "SETTINGS.JOB_STORE" in inspect.getsource(JobFiretask.run_task)
    previous = SETTINGS.JOB_STORE
    store = JobStore(MemoryStore())
    with jobflow_store(store):
        assert SETTINGS.JOB_STORE is store
    assert SETTINGS.JOB_STORE is previous
