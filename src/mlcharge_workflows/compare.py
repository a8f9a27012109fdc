"""Compare structures locally: one comparison flow per structure, one record each.

Each structure runs as its own jobflow flow (``run_locally``) in its own child process, so
a crash of one (a segfault, an out-of-memory kill) costs only that structure: it gets an
error record naming the signal and the others go on. Arms of one structure run one after
the other with the same MPI layout. Nothing finished is ever lost:

* structures are validated (:func:`mlcharge_workflows.validation.read_structure`) in the
  parent before any process starts; a bad one gets an error record at once;
* the output files are checked before any run (their folder can be created and written,
  an existing ``--output`` is kept unless ``overwrite`` or ``resume``);
* as soon as a structure finishes, its document goes to the project store, one line to
  the JSON Lines file beside the output (``records.jsonl`` for ``records.json``) and the
  JSON list of public records is rewritten (atomically) with every finished structure;
* on Ctrl-C / SIGTERM the running structures are stopped and everything finished stays
  (:class:`CompareInterrupted`); ``resume=True`` skips the structures already recorded
  without error and runs the rest.

This is the library behind ``mlcharge compare``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlcharge_workflows.catalogue import check_engine, comparison_flow, qe_protocol
from mlcharge_workflows.common.schemas import SavingsDocument, error_record
from mlcharge_workflows.common.store import run_flow_collect, save_record_only, save_to_store
from mlcharge_workflows.submit.config import project_job_store, project_paths

__all__ = ["CompareInterrupted", "CompareResult", "compare_one", "jsonl_path", "run_compare"]

#: Name of the pickled result a child process leaves in its structure's run folder.
RESULT_FILE = "compare-result.pkl"


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during ``run_compare``; ``result`` holds what finished (all saved)."""

    def __init__(self, result: CompareResult) -> None:
        super().__init__("compare interrupted")
        self.result = result


@dataclass
class CompareResult:
    """What ``run_compare`` produced: documents of finished structures, in input order."""

    docs: list[dict[str, Any]] = field(default_factory=list)
    n_run: int = 0  # structures run by this call
    n_resumed: int = 0  # structures skipped because an earlier call recorded them
    n_left: int = 0  # structures not finished (interrupted)
    output: Path | None = None
    jsonl: Path | None = None

    @property
    def records(self) -> list[dict[str, Any]]:
        """Public records (``docs/compare.md``) of the finished structures."""
        return [SavingsDocument.model_validate(d).record() for d in self.docs]

    @property
    def n_errors(self) -> int:
        return sum(d.get("error") is not None for d in self.docs)


def jsonl_path(output: str | Path) -> Path:
    """The JSON Lines file kept beside ``output`` (``records.json`` -> ``records.jsonl``)."""
    output = Path(output)
    return output.with_suffix(".jsonl") if output.suffix.lower() != ".jsonl" else output.with_suffix(".lines.jsonl")


def _slug(label: str, index: int) -> str:
    stem = Path(label).stem if label else "structure"
    return f"{index:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)[:60]}"


def compare_one(task: dict[str, Any]) -> dict[str, Any]:
    """Run one structure's comparison flow; never raises (errors become an error record).

    Returns ``{"record": dict, "docs": [...], "data": {store_name: [...]}}`` with the
    savings document and every document the flow wrote to its in-memory job store.
    """
    label, engine = task["label"], task["engine"]
    start = time.perf_counter()
    try:
        from mlcharge_workflows.validation import read_structure

        structure = read_structure(task["path"])
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
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record
        return _error_result(label, engine, f"{type(exc).__name__}: {exc}",
                             traceback.format_exc(limit=8), time.perf_counter() - start)


def _error_result(label: str, engine: str, msg: str, tb: str | None = None,
                  elapsed: float = 0.0) -> dict[str, Any]:
    rec = error_record(label, engine, msg).model_dump(mode="json")
    if tb:
        rec["details"]["traceback"] = tb
    rec["details"]["elapsed_s"] = elapsed
    return {"record": rec, "docs": [], "data": {}}


def _child(task: dict[str, Any], result_path: str) -> None:
    """Child process: run one structure, leave its result in ``result_path`` (atomic)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = compare_one(task)
    tmp = f"{result_path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(out, fh)
    os.replace(tmp, result_path)


def _died(label: str, engine: str, exitcode: int | None, elapsed: float) -> dict[str, Any]:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = f"killed by {name}" + (" (a crash in native code)" if name == "SIGSEGV" else "")
        if name == "SIGKILL":
            why += " (out of memory, or killed by hand)"
    else:
        why = f"exit status {exitcode} without a result"
    return _error_result(label, engine, f"ProcessDied: the process comparing {label} died: "
                         f"{why}; the other structures were not affected", None, elapsed)


def _check_outputs(output: Path, jsonl: Path, overwrite: bool, resume: bool) -> None:
    """Refuse, before any run, outputs that cannot be written or would be overwritten."""
    for path in (output, jsonl):
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ValueError(f"cannot write {path}: {blocker} is a file, not a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the folder of {path}: {exc}") from None
        if path.is_dir():
            raise ValueError(f"output {path} is a folder; give a file name")
    if output.exists() and not (overwrite or resume):
        raise ValueError(f"output {output} exists: add --overwrite to replace it or --resume to "
                         "continue it (skipping the structures it already holds)")
    for path in (output, jsonl):
        probe = path.parent / f".{path.name}.{os.getpid()}.probe"
        try:
            probe.write_text("")
            probe.unlink()
            if path.exists() and not os.access(path, os.W_OK):
                raise PermissionError(f"{path} is read-only")
        except OSError as exc:
            raise ValueError(f"cannot write {path}: {exc}") from None


def _load_finished(output: Path, jsonl: Path) -> dict[str, dict[str, Any]]:
    """Documents recorded by an earlier call, by structure label (last one wins)."""
    found: dict[str, dict[str, Any]] = {}
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash while writing: that structure reruns
            if isinstance(doc, dict) and "structure" in doc:
                found[doc["structure"]] = doc
    elif output.is_file():
        try:
            data = json.loads(output.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"cannot resume: {output} is not a JSON list of records: {exc}") from None
        for doc in data if isinstance(data, list) else []:
            if isinstance(doc, dict) and "structure" in doc:
                found[doc["structure"]] = doc
    return found


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
    output: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> CompareResult:
    """Compare every structure; documents are saved as each structure finishes.

    ``jobs`` structures run at a time, each in its own process and each DFT run with
    ``nprocs`` MPI processes. Documents go to the file-backed store in ``store_dir`` (None:
    no store), to ``output`` (JSON list of public records) and :func:`jsonl_path` of it (one
    document per line). ``protocol`` overrides fields of the fixed QE protocol (validated
    here). ``resume`` skips the structures ``output`` already holds without error;
    ``overwrite`` starts ``output`` anew. Raises :class:`CompareInterrupted` on Ctrl-C /
    SIGTERM after saving everything finished.
    """
    check_engine(engine)
    if jobs < 1 or nprocs < 1:
        raise ValueError(f"--jobs and --nprocs must be >= 1, got {jobs} and {nprocs}")
    if not structures:
        raise ValueError("no structures given")
    if protocol:
        if engine != "qe":
            raise ValueError("--protocol sets QE protocol fields; it does not apply to VASP")
        qe_protocol(protocol)  # validated here, before any run
    if model is not None and not Path(model).is_file():
        raise ValueError(f"model weights file {model!r} does not exist")
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    result = CompareResult()
    finished: dict[str, dict[str, Any]] = {}
    if output is not None:
        output = Path(output)
        result.output, result.jsonl = output, jsonl_path(output)
        _check_outputs(output, result.jsonl, overwrite, resume)
        if resume:
            finished = {k: d for k, d in _load_finished(output, result.jsonl).items()
                        if d.get("error") is None}
        else:
            result.jsonl.unlink(missing_ok=True)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store = project_job_store(project_paths(store_dir)) if store_dir is not None else None

    docs: list[dict[str, Any] | None] = [None] * len(structures)
    tasks = []
    for i, s in enumerate(structures):
        if s in finished:
            docs[i] = finished[s]
            result.n_resumed += 1
            continue
        tasks.append((i, {
            "label": s, "path": s, "engine": engine, "oracle": oracle, "nscf": nscf,
            "model": None if model is None else str(Path(model).resolve()),
            "nprocs": nprocs, "protocol": protocol, "workdir": str(workdir / _slug(s, i)),
        }))

    def finish(i: int, out: dict[str, Any]) -> None:
        """Save one finished structure everywhere, now, whole: Ctrl-C waits for it."""
        with _interrupts_deferred():
            _save(i, out)

    def _save(i: int, out: dict[str, Any]) -> None:
        docs[i] = out["record"]
        result.n_run += 1
        if store is not None:
            if out["docs"]:
                save_to_store(store, out["docs"], out["data"])
            else:
                save_record_only(store, out["record"])
        if output is not None:
            with open(result.jsonl, "a") as fh:
                fh.write(json.dumps(out["record"]) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            done = [d for d in docs if d is not None]
            _write_json_atomic(output, [SavingsDocument.model_validate(d).record() for d in done])
        bar.update(1)

    bar = tqdm(total=len(tasks), desc=f"compare ({engine})", unit="structure", disable=not progress)
    from mlcharge_workflows.validation import StructureError, read_structure

    runnable = []
    for i, task in tasks:  # bad structures never reach a process (nor spglib)
        try:
            read_structure(task["path"])
        except StructureError as exc:
            finish(i, _error_result(task["label"], engine, f"StructureError: {exc}"))
            continue
        runnable.append((i, task))

    # spawn, not fork: a fork taken while torch's threads hold a lock deadlocks the child
    ctx = multiprocessing.get_context("spawn")
    running: dict[Any, tuple[Any, int, dict[str, Any], Path, float]] = {}
    previous_term = signal.getsignal(signal.SIGTERM)
    if _main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        queue = list(runnable)
        while queue or running:
            while queue and len(running) < jobs:
                i, task = queue.pop(0)
                Path(task["workdir"]).mkdir(parents=True, exist_ok=True)
                res_path = Path(task["workdir"]) / RESULT_FILE
                res_path.unlink(missing_ok=True)
                proc = ctx.Process(target=_child, args=(task, str(res_path)),
                                   name=f"compare-{i}", daemon=False)
                try:
                    proc.start()
                finally:  # an interrupt inside start() must not leave an unknown child
                    if proc.pid is not None:
                        running[proc.sentinel] = (proc, i, task, res_path, time.perf_counter())
            for sentinel in wait(list(running), timeout=5.0):
                proc, i, task, res_path, t0 = running.pop(sentinel)
                proc.join()
                try:
                    with open(res_path, "rb") as fh:
                        out = pickle.load(fh)
                    res_path.unlink(missing_ok=True)
                except (OSError, EOFError, pickle.UnpicklingError):
                    out = _died(task["label"], engine, proc.exitcode, time.perf_counter() - t0)
                finish(i, out)
    except KeyboardInterrupt:
        _stop(proc for proc, *_ in running.values())
        bar.close()
        result.docs = [d for d in docs if d is not None]
        result.n_left = len(structures) - len(result.docs)
        raise CompareInterrupted(result) from None
    finally:
        if _main_thread():
            signal.signal(signal.SIGTERM, previous_term)
    bar.close()
    result.docs = [d for d in docs if d is not None]
    return result


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends; a signal that came meanwhile acts after it.

    Saving one structure writes the store, the JSON Lines file and the JSON file in turn;
    an interrupt between two of them would leave them disagreeing (a record in the JSON
    Lines file but not in the JSON file the message points to). Python runs signal
    handlers in the main thread whichever thread the signal reached, so swapping the
    handlers (not the thread's signal mask) is what holds them.
    """
    if not _main_thread():
        yield
        return
    got: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):  # ignored or default signals keep their meaning
            previous[signum] = handler
            signal.signal(signum, lambda n, _frame: got.append(n))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if got:
        previous[got[0]](got[0], None)


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def _stop(procs) -> None:
    """Terminate running children (their pw.x die with them), then make sure."""
    procs = list(procs)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)
