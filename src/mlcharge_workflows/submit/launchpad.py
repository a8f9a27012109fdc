"""LaunchPads behind one interface: embedded file-backed (default) or MongoDB (production).

FireWorks' file-backed mode (``MONGOMOCK_SERVERSTORE_FILE``, mongomock-persistence)
keeps the whole database in memory and writes the file **once, at process exit**. A
worker killed with SIGKILL therefore loses every state change it made, and two
processes overwrite each other's work. :class:`EmbeddedLaunchPad` keeps the same file
format but uses it transactionally:

1. take an exclusive ``flock`` on ``launchpad.lock`` (the kernel drops it when the
   holder dies, even on SIGKILL, so a dead process never leaves a stale lock);
2. load ``launchpad.json`` into a fresh mongomock server and build a FireWorks
   ``LaunchPad`` on it;
3. run the caller's FireWorks calls;
4. write the database to a temporary file, ``fsync`` it and ``os.replace`` it over
   ``launchpad.json`` (atomic: a kill leaves the old or the new file, never half a file);
5. release the lock.

Transactions are short (a checkout, a completion, a submission), never the DFT run
itself: workers run fireworks in FireWorks' offline mode between two transactions
(see :mod:`mlcharge_workflows.submit.worker`). So submitters, several workers and
reports can use one project at the same time.

>>> import tempfile
>>> handle = EmbeddedLaunchPad(tempfile.mkdtemp())
>>> with handle.transaction() as lp:
...     lp.get_fw_ids()
[]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mlcharge_workflows.submit.config import (
    LaunchPadConfigError,
    ProjectPaths,
    connect_launchpad,
    project_job_store,
    project_paths,
)

if TYPE_CHECKING:
    from fireworks import LaunchPad
    from jobflow import JobStore

#: Extra collection of the embedded database: which worker owns which running launch.
OWNERS_COLLECTION = "mlcharge_launch_owners"

#: Fireworks past which ``mlcharge submit`` says the project has outgrown the embedded mode.
#: Every transaction rewrites the whole ``launchpad.json`` (and reloads it after another
#: process wrote it): measured with ``benchmarks/launchpad_scaling.py`` (docs/benchmarks.md),
#: a transaction costs about 0.15 s at 1,000 fireworks and grows linearly; a worker makes
#: two or more per firework, so past this size the bookkeeping costs more than short DFT
#: runs. ``mlcharge migrate --launchpad my_launchpad.yaml`` moves the project to MongoDB.
EMBEDDED_LIMIT = 2000

#: File written into an embedded project once ``mlcharge migrate`` has moved it.
MIGRATED_FILE = "MIGRATED.json"


class ProjectMigrated(LaunchPadConfigError):
    """The embedded project was moved to MongoDB; use its ``--launchpad`` instead."""


class LaunchPadHandle:
    """Common interface of the two configurations.

    ``transaction()`` yields a FireWorks ``LaunchPad``; in embedded mode its changes are
    committed atomically when the block exits without an exception.
    """

    embedded: bool = False
    description: str = ""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LaunchPad]:  # pragma: no cover - interface
        raise NotImplementedError
        yield

    def job_store(self) -> JobStore | None:
        """The jobflow store workers must use, or None for jobflow's configured default."""
        return None


class MongoLaunchPad(LaunchPadHandle):
    """A production LaunchPad on MongoDB, from a FireWorks ``my_launchpad.yaml``.

    The server is contacted (short timeout) when the handle is created, so a bad file or
    an unreachable server fails before anything is written.
    """

    def __init__(self, launchpad_file: str | Path, timeout_ms: int | None = None) -> None:
        kwargs = {} if timeout_ms is None else {"timeout_ms": timeout_ms}
        self.launchpad_file = Path(launchpad_file)
        self.lp = connect_launchpad(launchpad_file, **kwargs)
        self.description = f"MongoDB launchpad {launchpad_file} ({self.lp.host}/{self.lp.name})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LaunchPad]:
        """MongoDB writes are immediate: yield the live LaunchPad."""
        yield self.lp


class EmbeddedLaunchPad(LaunchPadHandle):
    """FireWorks' file-backed database in a project folder, used transactionally."""

    embedded = True

    def __init__(self, project: str | Path | None = None) -> None:
        self.paths: ProjectPaths = project_paths(project).create()
        moved = self.paths.root / MIGRATED_FILE
        if moved.is_file():
            raise ProjectMigrated(
                f"the embedded project {self.paths.root} was moved to MongoDB "
                f"({moved.read_text().strip()}): give --launchpad <its my_launchpad.yaml>")
        self.description = f"embedded project {self.paths.root}"
        self._cache: tuple | None = None
        with self._locked():
            if not self.paths.launchpad_file.exists():
                _atomic_write(self.paths.launchpad_file, "{}")
        with self.read() as lp:
            initialised = lp.fw_id_assigner.find_one() is not None
        if not initialised:
            with self.transaction() as lp:
                if lp.fw_id_assigner.find_one() is None:
                    lp.reset("", require_password=False)  # FireWorks' `lpad reset`

    def job_store(self) -> JobStore:
        """The project's shared montydb jobflow store."""
        return project_job_store(self.paths)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.paths.lock_file, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _stamp(self) -> tuple[int, ...]:
        st = os.stat(self.paths.launchpad_file)
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @contextlib.contextmanager
    def transaction(self, commit: bool = True) -> Iterator[LaunchPad]:
        """Lock, load, yield a LaunchPad, and (if ``commit``) write back atomically.

        Nothing is written when the block raises: a failed submission leaves the
        database as it was. The loaded database is kept in memory while the file is
        unchanged (same inode, size and times), so a lone worker does not re-read it.
        """
        with self._locked():
            stamp = self._stamp()
            if self._cache is not None and self._cache[0] == stamp:
                server, lp = self._cache[1], self._cache[2]
            else:
                self._cache = None
                server = _load_server(self.paths.launchpad_file)
                lp = _launchpad_on(server)
            try:
                yield lp
                if commit:
                    _atomic_write(self.paths.launchpad_file, _dumps(server.to_dict()))
            except BaseException:
                self._cache = None  # memory may hold half a change: reload next time
                raise
            self._cache = (self._stamp(), server, lp)

    def read(self) -> contextlib.AbstractContextManager[LaunchPad]:
        """A read-only view (no write-back)."""
        return self.transaction(commit=False)


def _dumps(content: dict) -> str:
    """MongoDB extended JSON, as mongomock-persistence writes it (bson.json_util.dumps),
    with the C JSON encoder doing the walk (about twice as fast)."""
    import json

    import bson.json_util

    options = bson.json_util.DEFAULT_JSON_OPTIONS
    return json.dumps(content, default=lambda obj: bson.json_util.default(obj, options))


def _load_server(path: Path):
    """A mongomock ServerStore holding the database in ``path`` (no write-at-exit hook)."""
    import bson.json_util
    import mongomock_persistence  # noqa: F401 - patches mongomock's stores (to_dict/from_dict)
    from mongomock.store import DatabaseStore, ServerStore

    text = path.read_text(encoding="utf-8") or "{}"
    try:
        content = bson.json_util.loads(text)
    except ValueError as exc:
        raise LaunchPadConfigError(f"embedded launchpad {path} is not valid JSON: {exc}") from exc
    server = ServerStore.__new__(ServerStore)  # bypass __init__: it reads the env var and
    server._filename = None  # registers a write-at-exit finalizer that would overwrite
    server._databases = {k: DatabaseStore.from_dict(v) for k, v in content.items()}
    return server


def _launchpad_on(server) -> LaunchPad:
    """A FireWorks LaunchPad whose MongoClient is a mongomock client on ``server``."""
    import fireworks.core.launchpad as fw_launchpad

    from mlcharge_workflows._compat import mongomock_launchpad_client

    with mongomock_launchpad_client(server):
        return fw_launchpad.LaunchPad(name="fireworks", strm_lvl="WARNING")


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_launchpad(
    launchpad_file: str | Path | None = None,
    project: str | Path | None = None,
    timeout_ms: int | None = None,
) -> LaunchPadHandle:
    """The embedded project (no ``launchpad_file``) or a verified MongoDB LaunchPad.

    Raises
    ------
    LaunchPadConfigError
        The launchpad file is malformed or its server is unreachable.
    """
    if launchpad_file is None:
        return EmbeddedLaunchPad(project)
    return MongoLaunchPad(launchpad_file, timeout_ms=timeout_ms)


# ------------------------------------------------------------------ workflow conversion
def __getattr__(name: str):
    # Fireworks submitted before 2026-12-07 name "{{...launchpad.StrictJobFiretask}}"; FireWorks
    # loads a task by that name, and jobflow's own task reads them (same fields).
    if name == "StrictJobFiretask":
        from jobflow.managers.fireworks import JobFiretask

        return JobFiretask
    raise AttributeError(name)


def flow_to_fireworks(flow):
    """A FireWorks Workflow of a jobflow Flow (jobflow's own conversion and ``JobFiretask``).

    Every object a Maker holds is MSONable (``QEProtocol`` included), so jobflow's
    serialisation keeps it an object on the worker. ``store=None``: every worker uses its
    own configured store (the shared project store in the embedded mode), so the workflow
    holds no credentials.
    """
    from jobflow.managers.fireworks import flow_to_workflow

    return flow_to_workflow(flow, store=None)


# ------------------------------------------------------------------ outgrowing, migration
def outgrown_message(handle: LaunchPadHandle) -> str | None:
    """A clear note when an embedded project holds more than :data:`EMBEDDED_LIMIT` fireworks."""
    if not isinstance(handle, EmbeddedLaunchPad):
        return None
    with handle.read() as lp:
        n = lp.fireworks.count_documents({})
    if n <= EMBEDDED_LIMIT:
        return None
    size = handle.paths.launchpad_file.stat().st_size / 1e6
    return (f"note: this project has outgrown the embedded mode: {n} fireworks "
            f"({size:.0f} MB launchpad.json, limit {EMBEDDED_LIMIT}); every transaction "
            "rewrites the whole file, so workers spend more and more time on bookkeeping. "
            "Move it to MongoDB: `mlcharge migrate --launchpad my_launchpad.yaml"
            + (f" --project {handle.paths.root}" if handle.paths.root else "") + "` "
            "(see docs/reliability.md).")


class MigrationError(RuntimeError):
    """The migration failed; nothing was left in the target (message says why)."""


def migrate_embedded(project: str | Path | None, launchpad_file: str | Path,
                     store: JobStore | None = None, timeout_ms: int | None = None) -> dict:
    """Move an embedded project (FireWorks database and jobflow store) into MongoDB.

    The embedded project is locked for the whole move (no worker or submission can change
    it meanwhile) and must have no RUNNING/RESERVED firework; the target LaunchPad must be
    empty (a fresh ``lpad reset`` is fine) and ``store`` (default: jobflow's configured
    ``JOB_STORE``, which must not be in-memory) must not already hold the project's job
    outputs. Every document is copied and counted; on any failure everything inserted is
    removed again (:class:`MigrationError`: nothing half-moved). On success the project
    gets ``MIGRATED.json`` and refuses further embedded use. Returns counts per collection.
    """
    from datetime import datetime

    src_paths = project_paths(project)
    if (src_paths.root / MIGRATED_FILE).is_file():
        raise ProjectMigrated(f"{src_paths.root} was already migrated: "
                              f"{(src_paths.root / MIGRATED_FILE).read_text().strip()}")
    if not src_paths.exists():
        raise LaunchPadConfigError(f"no mlcharge project in {src_paths.root}")
    handle = EmbeddedLaunchPad(project)
    target = MongoLaunchPad(launchpad_file, timeout_ms=timeout_ms)
    if store is None:
        from jobflow import SETTINGS
        from maggma.stores import MemoryStore

        store = SETTINGS.JOB_STORE
        if isinstance(store.docs_store, MemoryStore):
            raise LaunchPadConfigError(
                "jobflow's JOB_STORE is an in-memory store: give the MongoDB store the job "
                "outputs should move to (--store jobflow.yaml)")
    tlp = target.lp
    counts: dict = {"launchpad": {}, "store": {}}
    inserted_lp: list[str] = []
    saved_assigner = None
    inserted_store: list[tuple[object, str, list]] = []
    with handle.transaction(commit=False) as lp:
        busy = lp.fireworks.count_documents({"state": {"$in": ["RUNNING", "RESERVED"]}})
        if busy:
            raise MigrationError(f"{busy} firework(s) are RUNNING or RESERVED in {src_paths.root}: "
                                 "stop the workers (or let them finish) and migrate again. Nothing was moved.")
        names = sorted(n for n in lp.db.list_collection_names() if not n.startswith("system."))
        for name in names:
            if name != "fw_id_assigner" and tlp.db[name].count_documents({}) > 0:
                raise MigrationError(f"target LaunchPad {launchpad_file} is not empty "
                                     f"(collection {name!r} holds documents); give an empty "
                                     "database (lpad reset). Nothing was moved.")
        source_store = handle.job_store()
        source_store.connect()
        store.connect()
        try:
            for name in names:
                docs = list(lp.db[name].find({}))
                if name == "fw_id_assigner":
                    saved_assigner = list(tlp.db[name].find({}))
                    tlp.db[name].delete_many({})
                inserted_lp.append(name)
                if docs:
                    tlp.db[name].insert_many(docs)
                if tlp.db[name].count_documents({}) != len(docs):
                    raise MigrationError(f"collection {name}: {len(docs)} documents copied but "
                                         f"{tlp.db[name].count_documents({})} found in the target")
                counts["launchpad"][name] = len(docs)
            pairs = [("docs", source_store.docs_store, store.docs_store, ["uuid", "index"])]
            for key, src_add in source_store.additional_stores.items():
                if key not in store.additional_stores:
                    raise MigrationError(f"the target store has no additional store {key!r} "
                                         "(the project's job outputs use it)")
                pairs.append((key, src_add, store.additional_stores[key], ["blob_uuid"]))
            for label, src_s, dst_s, keys in pairs:
                docs = [{k: v for k, v in d.items() if k != "_id"} for d in src_s.query({})]
                if not docs:
                    counts["store"][label] = 0
                    continue
                first = keys[0]
                ids = sorted({d[first] for d in docs if first in d})
                if dst_s.count({first: {"$in": ids}}):
                    raise MigrationError(f"the target store already holds outputs of this "
                                         f"project ({label}); nothing to migrate twice")
                inserted_store.append((dst_s, first, ids))
                dst_s.update(docs, key=keys)
                counts["store"][label] = len(docs)
        except BaseException as exc:
            for name in inserted_lp:  # every such collection was empty before (or restored)
                tlp.db[name].delete_many({})
                if name == "fw_id_assigner" and saved_assigner:
                    tlp.db[name].insert_many(saved_assigner)
            for dst_s, first, ids in inserted_store:
                dst_s.remove_docs({first: {"$in": ids}})
            if isinstance(exc, MigrationError):
                raise MigrationError(f"{exc}. Nothing was moved.") from None
            raise MigrationError(f"migration failed ({type(exc).__name__}: {exc}); everything "
                                 "copied was removed from the target, the embedded project is "
                                 "unchanged. Nothing was moved.") from exc
        _atomic_write(src_paths.root / MIGRATED_FILE, json.dumps({
            "launchpad": str(Path(launchpad_file).resolve()), "moved": datetime.now().isoformat(),
            "counts": counts}))
    return counts
