"""``mlcharge worker``: run submitted fireworks, recovering lost runs first.

Embedded project (default)
    Each firework runs in FireWorks' *offline* mode between two short transactions on
    the file-backed database (see :mod:`mlcharge_workflows.submit.launchpad`):

    1. checkout (state RUNNING), write ``FW.json``/``FW_offline.json`` into a new launch
       folder, record this worker as the launch's owner -> commit;
    2. run the firework with ``Rocket(None, ...)`` (no database open; outputs go to the
       shared montydb jobflow store as each job finishes);
    3. ``LaunchPad.recover_offline`` (completion, dynamic additions/detours) -> commit.

    A worker holds an ``flock`` on ``workers/<host>-<pid>.lock`` for its lifetime. The
    kernel releases it when the process dies, even on SIGKILL, so liveness is exact.
    At start (and whenever it runs out of work) a worker looks at every RUNNING launch
    whose owner is dead: if the launch folder holds a finished ``FW_offline.json`` the
    result is recovered (``recover_offline``); otherwise FireWorks'
    ``detect_lostruns(rerun=True)`` marks it FIZZLED and resets the firework to run again.
    Several workers on one project are safe.

MongoDB (``--launchpad``)
    ``detect_lostruns(expiration_secs, rerun=True)`` at start (default: FireWorks' 4 h
    without a ping; workers ping hourly), then FireWorks' ``rapidfire``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcharge_workflows._compat import jobflow_store, offline_rocket
from mlcharge_workflows.submit.launchpad import (
    OWNERS_COLLECTION,
    EmbeddedLaunchPad,
    LaunchPadHandle,
    open_launchpad,
)

if TYPE_CHECKING:
    from fireworks import FWorker, LaunchPad
    from jobflow import JobStore


@dataclass
class WorkerSummary:
    """What one ``run_worker`` call did (firework ids)."""

    completed: list[int] = field(default_factory=list)
    fizzled: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)
    rerun: list[int] = field(default_factory=list)
    interrupted: int | None = None  # firework returned to the queue by Ctrl-C / SIGTERM

    @property
    def n_launched(self) -> int:
        """Fireworks this worker ran."""
        return len(self.completed) + len(self.fizzled)


class WorkerRegistration:
    """This process's liveness lock in ``project/workers`` (held while the worker runs)."""

    def __init__(self, workers_dir: Path) -> None:
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"
        self.path = workers_dir / f"{self.worker_id}.lock"
        self._fh = None

    def __enter__(self) -> WorkerRegistration:
        self._fh = open(self.path, "w")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        self._fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "started": datetime.now().isoformat()}))
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def worker_alive(workers_dir: Path, worker_id: str | None) -> bool:
    """True if the worker ``worker_id`` still holds its lock.

    Workers on another host cannot be checked and count as alive.
    """
    if not worker_id:
        return False
    host = worker_id.rsplit("-", 1)[0]
    if host != socket.gethostname():
        return True
    path = workers_dir / f"{worker_id}.lock"
    if not path.exists():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def _finished_offline_data(launch_dir: str | None) -> dict[str, Any] | None:
    """The ``FW_offline.json`` of a launch if it records a finished run, else None."""
    if not launch_dir:
        return None
    path = Path(launch_dir) / "FW_offline.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing, or half-written when the worker died
    return data if isinstance(data, dict) and "fwaction" in data and "state" in data else None


#: Extra collection of the embedded database: launches lost because their worker died.
LOST_RUNS_COLLECTION = "mlcharge_lost_runs"

#: A firework whose worker died this many times while running it is FIZZLED, not rerun:
#: a structure that crashes native code (or exhausts memory) would otherwise take every
#: new worker down with it, and the rest of the project would never run.
MAX_WORKER_DEATHS = 2


def _fizzle_launch(lp: LaunchPad, launch_id: int, reason: str) -> None:
    """Mark a checked-out (offline) launch FIZZLED with ``reason`` as its stored error."""
    from fireworks import FWAction

    action = FWAction(stored_data={"_message": reason,
                                   "_exception": {"_stacktrace": reason, "_details": None}})
    lp.complete_launch(launch_id, action=action, state="FIZZLED")
    with contextlib.suppress(Exception):  # not an offline launch: nothing to forget
        lp.forget_offline(launch_id, launch_mode=True)
    lp.db[OWNERS_COLLECTION].delete_many({"launch_id": launch_id})


def recover_lost_runs(handle: EmbeddedLaunchPad,
                      given_up: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Recover or rerun the RUNNING launches of dead workers in an embedded project.

    A firework whose worker has died :data:`MAX_WORKER_DEATHS` times while running it is
    marked FIZZLED with the reason instead of being rerun; its id is appended to
    ``given_up``.

    Returns
    -------
    (recovered, rerun)
        Firework ids whose finished result was synced, and ids reset to run again.
    """
    with handle.transaction() as lp:
        owners = {d["launch_id"]: d.get("worker") for d in lp.db[OWNERS_COLLECTION].find({})}
        running = list(lp.launches.find({"state": "RUNNING"}, {"launch_id": 1, "fw_id": 1,
                                                               "launch_dir": 1}))
        dead = [ld for ld in running
                if not worker_alive(handle.paths.workers_dir, owners.get(ld["launch_id"]))]
        recovered, lost_launches = [], []
        for ld in dead:
            if _finished_offline_data(ld.get("launch_dir")) is not None:
                lp.recover_offline(ld["launch_id"], ignore_errors=True)
                recovered.append(ld["fw_id"])
            else:
                lost = lp.db[LOST_RUNS_COLLECTION]
                lost.insert_one({"fw_id": ld["fw_id"], "launch_id": ld["launch_id"],
                                 "worker": owners.get(ld["launch_id"]),
                                 "detected": datetime.now().isoformat()})
                deaths = lost.count_documents({"fw_id": ld["fw_id"]})
                if deaths >= MAX_WORKER_DEATHS:
                    _fizzle_launch(lp, ld["launch_id"], (
                        f"the worker process running this firework died {deaths} times (killed "
                        "by a signal: out of memory, killed by hand, or a crash in native code); "
                        f"not rerun again. Last launch folder: {ld.get('launch_dir')}. Fix the "
                        "cause, then `lpad rerun_fws -i <fw_id>` runs it again"))
                    if given_up is not None:
                        given_up.append(ld["fw_id"])
                else:
                    lost_launches.append(ld["launch_id"])
        rerun: list[int] = []
        if lost_launches:
            _, rerun, _ = lp.detect_lostruns(
                expiration_secs=0, rerun=True,
                launch_query={"launch_id": {"$in": lost_launches}},
            )
        for ld in dead:
            lp.db[OWNERS_COLLECTION].delete_many({"launch_id": ld["launch_id"]})
    return recovered, list(rerun)


def _checkout(handle: EmbeddedLaunchPad, fworker: FWorker, launch_dir: Path,
              worker_id: str) -> tuple[Any, int | None, int]:
    """Check out one firework for offline running; returns (fw, launch_id, n_running)."""
    with handle.transaction() as lp:
        fw, launch_id = lp.checkout_fw(fworker, str(launch_dir), host=socket.gethostname())
        if fw is None:
            return None, None, lp.fireworks.count_documents({"state": "RUNNING"})
        fw.to_file(str(launch_dir / "FW.json"))
        (launch_dir / "FW_offline.json").write_text(json.dumps({"launch_id": launch_id}))
        lp.add_offline_run(launch_id, fw.fw_id, fw.name)
        lp.db[OWNERS_COLLECTION].insert_one({"launch_id": launch_id, "worker": worker_id})
    return fw, launch_id, 0


def structure_problem(spec: Any) -> str | None:
    """The validation error of the first structure in a firework spec, or None.

    Walks the spec (serialised jobflow arguments included) for pymatgen ``Structure``
    dicts and checks each with :func:`mlcharge_workflows.validation.validate_structure`,
    so a non-finite or overlapping structure never reaches spglib in the worker.
    """
    from mlcharge_workflows.validation import StructureError, validate_structure

    stack = [spec]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if obj.get("@class") == "Structure" and str(obj.get("@module", "")).startswith(
                    "pymatgen.core"):
                from pymatgen.core import Structure

                try:
                    structure = Structure.from_dict(obj)
                    validate_structure(structure)
                except StructureError as exc:
                    return f"invalid structure in the firework: {exc}"
                except Exception as exc:  # noqa: BLE001 - an unreadable dict is as bad
                    return f"unreadable structure in the firework: {type(exc).__name__}: {exc}"
                continue
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
    return None


def _run_offline(fworker: FWorker, fw_id: int, launch_dir: Path) -> None:
    """Run the firework in ``launch_dir`` with FireWorks' Rocket in offline mode."""
    from fireworks.core.rocket import Rocket

    cwd = os.getcwd()
    os.chdir(launch_dir)
    try:
        with offline_rocket():
            Rocket(None, fworker, fw_id).run()
    finally:
        os.chdir(cwd)


def _complete(handle: EmbeddedLaunchPad, launch_id: int) -> tuple[str, int]:
    """Sync the offline result into the database; returns (final state, fireworks left)."""
    with handle.transaction() as lp:
        lp.recover_offline(launch_id, ignore_errors=False)
        lp.db[OWNERS_COLLECTION].delete_many({"launch_id": launch_id})
        state = lp.launches.find_one({"launch_id": launch_id}, {"state": 1})["state"]
        return state, _count_remaining(lp)


def _new_launch_dir(parent: Path) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")
    path = parent / f"launcher_{stamp}_{os.getpid()}"
    path.mkdir(parents=True)
    return path


def _count_remaining(lp: LaunchPad) -> int:
    return lp.fireworks.count_documents({"state": {"$in": ["READY", "WAITING", "RESERVED",
                                                          "RUNNING"]}})


def run_embedded_worker(handle: EmbeddedLaunchPad, nlaunches: int = 0,
                        fworker: FWorker | None = None, poll_s: float = 2.0,
                        progress: bool = True) -> WorkerSummary:
    """Run fireworks of an embedded project until none is ready or running (or ``nlaunches``)."""
    from fireworks import FWorker
    from tqdm import tqdm

    fworker = fworker or FWorker()
    summary = WorkerSummary()
    with WorkerRegistration(handle.paths.workers_dir) as me, \
            jobflow_store(handle.job_store()), _stop_signals() as stop:
        recovered, rerun = recover_lost_runs(handle, given_up=summary.fizzled)
        summary.recovered += recovered
        summary.rerun += rerun
        with handle.read() as lp:
            remaining = _count_remaining(lp)
        bar = tqdm(total=remaining, desc="fireworks", unit="fw", disable=not progress)
        while (nlaunches <= 0 or summary.n_launched < nlaunches) and not stop.hits:
            launch_dir = _new_launch_dir(handle.paths.launches_dir)
            fw, launch_id, n_running = _checkout(handle, fworker, launch_dir, me.worker_id)
            if fw is None:
                launch_dir.rmdir()
                if n_running == 0:
                    break
                # other workers run parents of waiting fireworks, or some died: check, wait
                n_given_up = len(summary.fizzled)
                recovered, rerun = recover_lost_runs(handle, given_up=summary.fizzled)
                summary.recovered += recovered
                summary.rerun += rerun
                if not (recovered or rerun or len(summary.fizzled) > n_given_up):
                    time.sleep(poll_s)
                continue
            bar.set_postfix_str(f"fw {fw.fw_id} {fw.name}")
            problem = structure_problem(fw.spec)
            if problem is not None:  # refused before anything can crash on it
                with handle.transaction() as lp:
                    _fizzle_launch(lp, launch_id, problem)
                    remaining = _count_remaining(lp)
                summary.fizzled.append(fw.fw_id)
                bar.total = summary.n_launched + remaining
                bar.update(1)
                continue
            interrupted = bool(stop.hits)  # asked to stop while checking out: do not start
            if not interrupted:
                with stop.raising() as hits:
                    _run_offline(fworker, fw.fw_id, launch_dir)
                interrupted = bool(hits)
            if interrupted:  # Ctrl-C / SIGTERM: not the firework's fault, back to the queue
                _requeue(handle, launch_id, fw.fw_id)
                summary.interrupted = fw.fw_id
                break
            state, remaining = _complete(handle, launch_id)
            (summary.completed if state == "COMPLETED" else summary.fizzled).append(fw.fw_id)
            bar.total = summary.n_launched + remaining
            bar.update(1)
        bar.close()
    return summary


class _StopSignals:
    """SIGINT/SIGTERM received by a worker (see :func:`_stop_signals`)."""

    def __init__(self) -> None:
        self.hits: list[int] = []
        self._raise = False

    def handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.hits.append(signum)
        if self._raise or len(self.hits) > 1:  # inside a run, or asked twice: stop now
            raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def raising(self) -> Iterator[list[int]]:
        """Inside: a signal raises KeyboardInterrupt; the yielded list gets the signals
        that came inside (a KeyboardInterrupt that escapes is swallowed and noted)."""
        n = len(self.hits)
        came: list[int] = []
        self._raise = True
        try:
            yield came
        except KeyboardInterrupt:
            if len(self.hits) == n:
                self.hits.append(signal.SIGINT)
        finally:
            self._raise = False
            came.extend(self.hits[n:])


@contextlib.contextmanager
def _stop_signals() -> Iterator[_StopSignals]:
    """SIGINT/SIGTERM for a worker's whole loop (main thread only).

    Inside :meth:`_StopSignals.raising` (the firework run) a signal raises
    KeyboardInterrupt: FireWorks' Rocket catches every exception of a task (KeyboardInterrupt
    included) and records the firework as FIZZLED, so the caller checks the yielded list and
    requeues the firework instead. Elsewhere (checkout, completion, recovery transactions)
    the signal is only noted and the worker stops at the next safe point: a signal landing
    between a committed checkout and the run must requeue that firework too, not kill the
    worker with a RUNNING launch left behind (counted as a worker death). A second signal
    raises at once.
    """
    import threading

    stop = _StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _requeue(handle: EmbeddedLaunchPad, launch_id: int, fw_id: int) -> None:
    """Mark an interrupted launch FIZZLED and reset its firework to run again."""
    with handle.transaction() as lp:
        lp.mark_fizzled(launch_id)
        lp.forget_offline(launch_id, launch_mode=True)
        lp.rerun_fw(fw_id)
        lp.db[OWNERS_COLLECTION].delete_many({"launch_id": launch_id})


def recover_mongo_lost_runs(lp: LaunchPad, expiration_s: float) -> tuple[list[int], list[int]]:
    """Rerun the lost runs of a MongoDB LaunchPad, giving up on a firework lost twice.

    A launch is lost when it has not pinged for ``expiration_s``. FireWorks marks a lost
    launch FIZZLED without an action before rerunning its firework, so earlier deaths of a
    firework are its FIZZLED launches without an action; at :data:`MAX_WORKER_DEATHS` the
    launch is FIZZLED with the reason and the firework is not rerun. Returns
    ``(rerun, given_up)`` firework ids.
    """
    lost, _, _ = lp.detect_lostruns(expiration_secs=expiration_s)
    rerun_launches, given_up = [], []
    for ld in lp.launches.find({"launch_id": {"$in": list(lost)}}, {"launch_id": 1, "fw_id": 1,
                                                                   "launch_dir": 1}):
        fw = lp.fireworks.find_one({"fw_id": ld["fw_id"]}, {"launches": 1,
                                                            "archived_launches": 1})
        ids = list((fw or {}).get("launches", [])) + list((fw or {}).get("archived_launches", []))
        earlier = lp.launches.count_documents({"launch_id": {"$in": ids}, "state": "FIZZLED",
                                               "action": None})
        deaths = earlier + 1
        if deaths >= MAX_WORKER_DEATHS:
            _fizzle_launch(lp, ld["launch_id"], (
                f"the worker process running this firework died {deaths} times (no ping for "
                f"{expiration_s:.0f} s: killed, out of memory or a crash in native code); not "
                f"rerun again. Last launch folder: {ld.get('launch_dir')}. Fix the cause, then "
                "`lpad rerun_fws -i <fw_id>` runs it again"))
            given_up.append(ld["fw_id"])
        else:
            rerun_launches.append(ld["launch_id"])
    rerun: list[int] = []
    if rerun_launches:
        _, rerun, _ = lp.detect_lostruns(expiration_secs=expiration_s, rerun=True,
                                         launch_query={"launch_id": {"$in": rerun_launches}})
    return list(rerun), given_up


def run_mongo_worker(handle: LaunchPadHandle, nlaunches: int = 0, fworker: FWorker | None = None,
                     launch_root: Path | None = None, lostrun_expiration_s: int | None = None,
                     store: JobStore | None = None) -> WorkerSummary:
    """Production worker: detect lost runs (rerun), then FireWorks' rapidfire."""
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire
    from fireworks.fw_config import RUN_EXPIRATION_SECS

    if store is None:
        from jobflow import SETTINGS
        from maggma.stores import MemoryStore

        if isinstance(SETTINGS.JOB_STORE.docs_store, MemoryStore):
            raise ValueError(
                "jobflow's JOB_STORE is an in-memory store (no JOBFLOW_CONFIG_FILE or "
                "~/.jobflow.yaml found): outputs would vanish with this worker and later jobs "
                "could not resolve their references. Configure a shared store (MongoDB, see "
                "docs/concepts.md) or pass --store jobflow.yaml")
    lp = handle.lp  # type: ignore[attr-defined]
    summary = WorkerSummary()
    expiration = RUN_EXPIRATION_SECS if lostrun_expiration_s is None else lostrun_expiration_s
    rerun, given_up = recover_mongo_lost_runs(lp, expiration)
    summary.rerun += rerun
    summary.fizzled += given_up
    root = Path(launch_root or os.getcwd()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with jobflow_store(store):
        rapidfire(lp, fworker or FWorker(), m_dir=str(root), nlaunches=nlaunches)
    return summary


def run_worker(project: str | Path | None = None, launchpad_file: str | Path | None = None,
               nlaunches: int = 0, fworker_file: str | Path | None = None,
               store: JobStore | None = None, lostrun_expiration_s: int | None = None,
               progress: bool = True) -> WorkerSummary:
    """Run submitted fireworks on the embedded project or a MongoDB launchpad.

    Parameters
    ----------
    project
        Embedded project folder (default ``MLCHARGE_PROJECT_DIR``); with ``launchpad_file``
        it is only the parent of the launch folders.
    launchpad_file
        FireWorks ``my_launchpad.yaml`` (MongoDB); None for the embedded project.
    nlaunches
        Stop after this many fireworks (0: until nothing is left to run).
    fworker_file
        FireWorks ``my_fworker.yaml`` (name/category/query), e.g. to route ML jobs to GPUs.
    store
        jobflow store for MongoDB mode (default: jobflow's configured ``JOB_STORE``).
    """
    from fireworks import FWorker

    fworker = FWorker.from_file(str(fworker_file)) if fworker_file else FWorker()
    if launchpad_file is None:
        from mlcharge_workflows.submit.config import project_paths

        paths = project_paths(project)
        if not paths.exists():
            raise ValueError(f"no mlcharge project in {paths.root} (nothing was submitted "
                             "there): run `mlcharge submit` first, or give --project")
    handle = open_launchpad(launchpad_file, project)
    if isinstance(handle, EmbeddedLaunchPad):
        return run_embedded_worker(handle, nlaunches=nlaunches, fworker=fworker,
                                   progress=progress)
    from mlcharge_workflows.submit.config import project_paths

    return run_mongo_worker(handle, nlaunches=nlaunches, fworker=fworker,
                            launch_root=project_paths(project).launches_dir,
                            lostrun_expiration_s=lostrun_expiration_s, store=store)
