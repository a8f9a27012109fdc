"""An embedded project that has outgrown its file: the note, and ``mlcharge migrate`` to MongoDB.

MongoDB is mongomock here (``fireworks.core.launchpad.MongoClient`` replaced by one shared
client, as in ``test_fireworks_mongo.py``); the target job store is in memory. The move is
all or nothing: a failure in the middle leaves the target as it was and the embedded
project usable.
"""

from __future__ import annotations

import mongomock
import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore
from typer.testing import CliRunner

from mlcharge_workflows.catalogue import _BUILDERS
from mlcharge_workflows.cli.main import app
from mlcharge_workflows.submit import open_launchpad, run_worker, submit_structures
from mlcharge_workflows.submit import launchpad as launchpad_mod
from mlcharge_workflows.submit.launchpad import (
    MIGRATED_FILE,
    EmbeddedLaunchPad,
    MigrationError,
    ProjectMigrated,
    migrate_embedded,
    outgrown_message,
)
from mlcharge_workflows.submit.worker import run_embedded_worker
from test_fireworks_embedded import SI_CIF, dummy_flow


@pytest.fixture
def mongo(mongo_launchpad):
    return mongo_launchpad


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An embedded project with 4 compare workflows (dummy jobs), 2 fireworks run."""
    monkeypatch.setitem(_BUILDERS, "compare", dummy_flow)
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for i in range(4):
        (cifs / f"Si_{i}.cif").write_text(SI_CIF)
    project = tmp_path / "project"
    submit_structures([cifs], project=project, progress=False)
    run_embedded_worker(EmbeddedLaunchPad(project), nlaunches=2, progress=False)
    return project


def _target_store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


def _states(lp) -> list[tuple[int, str]]:
    return sorted((d["fw_id"], d["state"]) for d in lp.fireworks.find({}, {"fw_id": 1, "state": 1}))


def test_outgrown_note(project, monkeypatch):
    handle = EmbeddedLaunchPad(project)
    assert outgrown_message(handle) is None
    monkeypatch.setattr(launchpad_mod, "EMBEDDED_LIMIT", 3)
    note = outgrown_message(handle)
    assert "outgrown the embedded mode: 8 fireworks" in note
    assert "mlcharge migrate --launchpad my_launchpad.yaml" in note


def test_migrate_moves_everything_then_mongo_worker_finishes(project, mongo, tmp_path):
    lp_file, target = mongo
    with EmbeddedLaunchPad(project).read() as lp:
        before = _states(lp)
        n_launches = lp.launches.count_documents({})
    store = _target_store()
    counts = migrate_embedded(project, lp_file, store=store)
    assert counts["launchpad"]["fireworks"] == 8 and counts["launchpad"]["launches"] == n_launches
    assert _states(target.lp) == before
    assert counts["store"]["docs"] == store.docs_store.count() > 0
    assert (project / MIGRATED_FILE).is_file()
    with pytest.raises(ProjectMigrated, match="was moved to MongoDB"):
        EmbeddedLaunchPad(project)
    with pytest.raises(ProjectMigrated, match="already migrated"):
        migrate_embedded(project, lp_file, store=_target_store())
    # the project carries on in MongoDB: the fireworks left run there, new ids do not clash
    summary = run_worker(launchpad_file=lp_file, project=tmp_path / "runs", store=store)
    assert {s for _, s in _states(target.lp)} == {"COMPLETED"}, summary
    from mlcharge_workflows.savings.report import load_records_from_store

    assert len(load_records_from_store(store, progress=False)) == 4


def test_failed_migration_leaves_nothing_half_moved(project, mongo, monkeypatch):
    lp_file, target = mongo
    assigner = list(target.lp.fw_id_assigner.find({}, {"_id": 0}))
    store = _target_store()

    def broken_update(*args, **kwargs):
        raise OSError("connection lost")

    monkeypatch.setattr(store.docs_store, "update", broken_update)
    with pytest.raises(MigrationError, match="connection lost.*Nothing was moved"):
        migrate_embedded(project, lp_file, store=store)
    for name in ("fireworks", "workflows", "launches"):
        assert target.lp.db[name].count_documents({}) == 0, name
    assert list(target.lp.fw_id_assigner.find({}, {"_id": 0})) == assigner
    assert store.docs_store.count() == 0
    assert not (project / MIGRATED_FILE).exists()
    with EmbeddedLaunchPad(project).read() as lp:  # still usable, unchanged
        assert lp.fireworks.count_documents({}) == 8


def test_migrate_refuses_a_non_empty_target(project, mongo, tmp_path):
    lp_file, target = mongo
    target.lp.workflows.insert_one({"name": "someone else's"})
    with pytest.raises(MigrationError, match="not empty.*Nothing was moved"):
        migrate_embedded(project, lp_file, store=_target_store())


def test_migrate_cli_needs_a_persistent_store(project, mongo, monkeypatch):
    from jobflow import SETTINGS

    lp_file, _ = mongo
    monkeypatch.setattr(SETTINGS, "JOB_STORE", _target_store())
    result = CliRunner().invoke(app, ["migrate", "--launchpad", str(lp_file), "--project",
                                      str(project)])
    assert result.exit_code == 2 and "in-memory store" in result.output
    assert not (project / MIGRATED_FILE).exists()


def test_submit_says_when_the_project_has_outgrown_embedded_mode(tmp_path, monkeypatch):
    monkeypatch.setitem(_BUILDERS, "compare", dummy_flow)
    monkeypatch.setattr(launchpad_mod, "EMBEDDED_LIMIT", 3)
    (tmp_path / "Si.cif").write_text(SI_CIF)
    args = ["submit", str(tmp_path / "Si.cif"), "--project", str(tmp_path / "p"), "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "outgrown" not in first.output  # 2 fireworks
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0
    assert "has outgrown the embedded mode: 4 fireworks" in second.output
    assert "mlcharge migrate --launchpad my_launchpad.yaml" in second.output


def test_mongo_firework_lost_twice_is_fizzled(mongo, tmp_path, monkeypatch):
    """MongoDB mode: a firework whose worker died twice (no ping) is given up with a reason."""
    import datetime

    from fireworks import FWorker

    from mlcharge_workflows.submit.worker import recover_mongo_lost_runs

    lp_file, target = mongo
    lp = target.lp
    monkeypatch.setitem(_BUILDERS, "compare", dummy_flow)
    (tmp_path / "Si.cif").write_text(SI_CIF)
    fw_id = min(submit_structures([tmp_path / "Si.cif"], launchpad_file=lp_file,
                                  progress=False).workflows.values())
    old = (datetime.datetime.now(datetime.timezone.utc)
           - datetime.timedelta(hours=5)).isoformat()

    def lose() -> None:  # a worker checks it out, then dies: the launch stops pinging
        lp.checkout_fw(FWorker(), str(tmp_path), fw_id=fw_id)
        launch = lp.launches.find_one({"fw_id": fw_id, "state": "RUNNING"})
        for entry in launch["state_history"]:
            entry["updated_on"] = old
        lp.launches.replace_one({"_id": launch["_id"]}, launch)

    lose()
    assert recover_mongo_lost_runs(lp, 3600) == ([fw_id], [])
    assert lp.fireworks.find_one({"fw_id": fw_id})["state"] == "READY"
    lose()
    assert recover_mongo_lost_runs(lp, 3600) == ([], [fw_id])
    assert lp.fireworks.find_one({"fw_id": fw_id})["state"] == "FIZZLED"
    last = lp.get_fw_by_id(fw_id).launches[-1]
    assert "died 2 times" in last.action.stored_data["_message"]
