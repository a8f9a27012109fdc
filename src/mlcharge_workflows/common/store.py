"""Running a comparison flow locally and keeping its documents in a jobflow store.

:func:`run_flow_collect` runs a flow with an in-memory store and returns every document
it wrote; :func:`save_to_store` copies them into a persistent store (the file-backed
project store of ``mlcharge compare`` / ``mlcharge report``, or MongoDB);
:func:`savings_documents` reads the savings documents back.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcharge_workflows.common.documents import SAVINGS_JOB_NAME
from mlcharge_workflows.common.schemas import SavingsDocument, error_record

if TYPE_CHECKING:
    from jobflow import Flow, JobStore

#: Store query that finds savings documents among all job outputs: the outputs of the
#: comparison flows' savings document jobs (QE and VASP), or any output serialised as one.
SAVINGS_QUERY = {"$or": [{"name": SAVINGS_JOB_NAME},
                         {"output.@class": {"$in": ["SavingsDocument", "SavingsRecord"]}}]}


class _FailureLog(logging.Handler):
    """Collects jobflow's 'X failed with exception' messages of a local run."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if " failed with exception" in msg:
            name, _, tb = msg.partition(" failed with exception")
            last = [ln for ln in tb.strip().splitlines() if ln.strip()]
            self.failures.append(f"{name}: {last[-1].strip() if last else 'unknown error'}")


def run_flow_collect(flow: Flow, workdir: str | Path, engine: str = "qe") -> dict[str, Any]:
    """Run ``flow`` locally in ``workdir`` (one folder per job) with an in-memory store.

    Returns ``{"record": savings document as dict, "docs": [...], "data": {name: [...]}}``:
    the documents can be copied into any persistent store (:func:`save_to_store`). Job
    failures are added to the record's ``error``.
    """
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    handler = _FailureLog()
    log = logging.getLogger("jobflow.managers.local")
    old_level, old_prop = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # monty's deprecated cd in jobflow
            run_locally(flow, store=store, create_folders=True, root_dir=workdir, log=False)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_prop
    try:
        doc = document_from_dict(store.get_output(flow.output.uuid, load=False))
    except ValueError:
        doc = error_record(flow.name, engine, "the savings document job did not run")
    if handler.failures:
        doc.error = "; ".join(filter(None, [doc.error, *handler.failures]))
    docs = list(store.docs_store.query({}))
    for d in docs:  # the stored savings document carries the enriched error too
        if d["uuid"] == flow.output.uuid:
            d["output"] = {**d["output"], "error": doc.error}
    data = {name: list(s.query({})) for name, s in store.additional_stores.items()}
    return {"record": doc.model_dump(mode="json"), "docs": docs, "data": data}


def save_to_store(store: JobStore, docs: list[dict], data: dict[str, list[dict]]) -> None:
    """Insert job documents (and their data-store blobs) collected by :func:`run_flow_collect`."""
    store.connect()
    try:
        for name, blobs in data.items():
            if blobs:
                for b in blobs:
                    b.pop("_id", None)
                store.additional_stores[name].update(blobs, key="blob_uuid")
        if docs:
            for d in docs:
                d.pop("_id", None)
            store.docs_store.update(docs, key=["uuid", "index"])
    finally:
        store.close()


def save_record_only(store: JobStore, record: dict[str, Any]) -> None:
    """Store a savings document that no flow produced (e.g. an unreadable input file).

    It is written as the output of a ``savings document`` job of its own, so every
    reader of job outputs (``mlcharge report``) sees the error record too.
    """
    from datetime import datetime, timezone
    from uuid import uuid4

    doc = {
        "uuid": str(uuid4()), "index": 1, "name": SAVINGS_JOB_NAME, "output": record,
        "completed_at": datetime.now(timezone.utc).isoformat(), "metadata": {}, "hosts": [],
    }
    store.connect()
    try:
        store.docs_store.update([doc], key=["uuid", "index"])
    finally:
        store.close()


def savings_documents(store: JobStore, progress: bool = False) -> list[SavingsDocument]:
    """Every savings document in a jobflow store, one per job (the latest run of a job).

    A rerun job (lost run, rerun firework) overwrites its output under the same
    ``(uuid, index)``; should two indices exist, the highest wins, so no record counts twice.
    A document that does not validate is skipped with a warning naming it.
    """
    from tqdm import tqdm

    store.connect()
    latest: dict[str, tuple[int, dict]] = {}
    total = store.count(SAVINGS_QUERY)
    docs = store.query(SAVINGS_QUERY, properties=["uuid", "index", "output"], load=False)
    for doc in tqdm(docs, total=total, desc="reading store", unit="doc", disable=not progress):
        index = int(doc.get("index") or 1)
        if doc["uuid"] not in latest or index > latest[doc["uuid"]][0]:
            latest[doc["uuid"]] = (index, doc["output"])
    records, bad = [], []
    for uuid, (_, out) in latest.items():
        try:
            records.append(document_from_dict(out))
        except Exception as exc:  # noqa: BLE001 - a foreign document must not stop the report
            bad.append(f"{uuid}: {str(exc).splitlines()[0]}")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable savings document(s): {bad[:3]}",
                      stacklevel=2)
    return records


def document_from_dict(data: dict[str, Any]) -> SavingsDocument:
    """A :class:`SavingsDocument` from a stored output (serialisation keys ``@...`` dropped)."""
    return SavingsDocument.model_validate({k: v for k, v in data.items() if not k.startswith("@")})
