"""The MongoDB (production) code path, on mongomock instead of a server.

``fireworks.core.launchpad.MongoClient`` is replaced by one shared mongomock client, so
submission (validation, ping, bulk insert), the worker (lost-run detection, FireWorks'
rapidfire in online mode) and the report run exactly as against MongoDB.
"""

from __future__ import annotations

import datetime

import mongomock
import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore

from mlcharge_workflows.savings.report import load_records_from_store
from mlcharge_workflows.catalogue import _BUILDERS
from mlcharge_workflows.submit import open_launchpad, run_worker, submit_structures

from test_fireworks_embedded import SI_CIF, dummy_flow  # noqa: F401 - fixtures' helpers


@pytest.fixture
def mongo(mongo_launchpad, monkeypatch):
    monkeypatch.setitem(_BUILDERS, "compare", dummy_flow)
    return mongo_launchpad


def test_submit_and_work_on_mongodb(mongo, tmp_path):
    lp_file, handle = mongo
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for i in range(3):
        (cifs / f"Si_{i}.cif").write_text(SI_CIF)
    result = submit_structures([cifs], launchpad_file=lp_file, progress=False)
    assert len(result.workflows) == 3
    assert "MongoDB launchpad" in result.description
    lp = handle.lp
    assert lp.workflows.count_documents({"metadata.mlcharge_batch": result.batch}) == 3

    # a launch that stopped pinging long ago: lost, rerun by the worker at start
    fw_id = min(result.workflows.values())
    from fireworks import FWorker

    lp.checkout_fw(FWorker(), str(tmp_path), fw_id=fw_id)
    old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=5)).isoformat()
    launch = lp.launches.find_one({"fw_id": fw_id})
    for entry in launch["state_history"]:
        entry["updated_on"] = old
    lp.launches.replace_one({"_id": launch["_id"]}, launch)

    store = JobStore(MemoryStore())
    summary = run_worker(launchpad_file=lp_file, project=tmp_path / "runs", store=store)
    assert summary.rerun == [fw_id]
    assert {d["state"] for d in lp.fireworks.find({}, {"state": 1})} == {"COMPLETED"}
    records = load_records_from_store(store, progress=False)
    assert sorted(r.structure for r in records) == sorted(str(p) for p in cifs.iterdir())


def test_worker_refuses_an_in_memory_job_store(mongo, tmp_path, monkeypatch):
    from jobflow import SETTINGS

    lp_file, _ = mongo
    monkeypatch.setattr(SETTINGS, "JOB_STORE", JobStore(MemoryStore()))
    with pytest.raises(ValueError, match="in-memory store"):
        run_worker(launchpad_file=lp_file, project=tmp_path / "runs")
