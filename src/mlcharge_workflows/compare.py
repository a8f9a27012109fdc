"""Compare structures locally: one comparison flow per structure, one record each.

Each structure runs as its own jobflow flow (``run_locally``) in a worker process, so a
crash in one never stops the others; arms of one structure run one after the other with
the same MPI layout. Every job output, the savings documents included, can be copied to
the file-backed project store (``mlcharge report`` reads it). This is the library behind
``mlcharge compare``.
"""

from __future__ import annotations

import multiprocessing
import re
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlcharge_workflows.catalogue import check_engine, comparison_flow, qe_protocol
from mlcharge_workflows.common.schemas import error_record
from mlcharge_workflows.common.store import run_flow_collect, save_record_only, save_to_store
from mlcharge_workflows.submit.config import project_job_store, project_paths

__all__ = ["compare_one", "run_compare"]


def _slug(label: str, index: int) -> str:
    stem = Path(label).stem if label else "structure"
    return f"{index:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)[:60]}"


def compare_one(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: run one structure's comparison flow; never raises.

    Returns ``{"record": dict, "docs": [...], "data": {store_name: [...]}}`` with the
    savings record and every document the flow wrote to its in-memory job store.
    """
    label, engine = task["label"], task["engine"]
    start = time.perf_counter()
    try:
        from pymatgen.core import Structure

        try:
            structure = Structure.from_file(task["path"])
        except Exception as exc:  # unreadable input: an error record, not a crash
            raise ValueError(f"cannot read structure file {task['path']!r}: {exc}") from exc
        flow = comparison_flow(
            structure,
            engine=engine,
            label=label,
            oracle=task["oracle"],
            nscf=task["nscf"],
            model_path=task["model"],
            nprocs=task["nprocs"],
            protocol=task["protocol"],
        )
        out = run_flow_collect(flow, Path(task["workdir"]), engine=engine)
        out["record"]["details"]["elapsed_s"] = time.perf_counter() - start
        return out
    except Exception as exc:
        from mlcharge_workflows.common.schemas import error_record

        msg = f"{type(exc).__name__}: {exc}"
        rec = error_record(label, engine, msg).model_dump(mode="json")
        rec["details"]["traceback"] = traceback.format_exc(limit=8)
        rec["details"]["elapsed_s"] = time.perf_counter() - start
        return {"record": rec, "docs": [], "data": {}}


def run_compare(
    structures: list[str],
    engine: str = "qe",
    oracle: bool = False,
    nscf: bool = False,
    model: str | None = None,
    workdir: Path = Path("mlcharge_compare"),
    store_dir: Path | None = None,
    jobs: int = 2,
    nprocs: int = 1,
    progress: bool = True,
    protocol: dict | None = None,
) -> list[dict[str, Any]]:
    """Compare every structure; return the stored documents (records plus ``details``).

    ``jobs`` structures run at a time, each DFT run with ``nprocs`` MPI processes.
    Documents are written to the file-backed store in ``store_dir`` (None: no store).
    ``protocol`` overrides fields of the fixed QE protocol (validated here).
    """
    check_engine(engine)
    if jobs < 1 or nprocs < 1:
        raise ValueError(f"--jobs and --nprocs must be >= 1, got {jobs} and {nprocs}")
    if protocol:
        if engine != "qe":
            raise ValueError("--protocol sets QE protocol fields; it does not apply to VASP")
        qe_protocol(protocol)  # validated here, before any run
    if model is not None and not Path(model).is_file():
        raise ValueError(f"model weights file {model!r} does not exist")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tasks = [
        {
            "label": s,
            "path": s,
            "engine": engine,
            "oracle": oracle,
            "nscf": nscf,
            "model": None if model is None else str(Path(model).resolve()),
            "nprocs": nprocs,
            "protocol": protocol,
            "workdir": str(workdir / _slug(s, i)),
        }
        for i, s in enumerate(structures)
    ]
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc=f"compare ({engine})", unit="structure", disable=not progress)
    if jobs == 1 or len(tasks) == 1:
        for i, t in enumerate(tasks):
            results[i] = compare_one(t)
            bar.update(1)
    else:
        # spawn, not fork: a fork taken while torch's threads hold a lock deadlocks the child
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
            futures = {pool.submit(compare_one, t): i for i, t in enumerate(tasks)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
    bar.close()

    if store_dir is not None:
        store = project_job_store(project_paths(store_dir))
        for res in results:
            if res["docs"]:
                save_to_store(store, res["docs"], res["data"])
            else:
                save_record_only(store, res["record"])
    return [res["record"] for res in results]  # type: ignore[index]
