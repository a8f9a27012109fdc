"""Every workaround of FireWorks / mongomock / jobflow behaviour, in one module.

Each names the upstream behaviour it works around and the versions it was written for
(:data:`PINNED`); ``tests/unit/test_compat.py`` checks that the behaviour is still
there, so it fails (and the workaround can go) when upstream changes. Nothing here is
applied at import or for the process's lifetime: every patch is undone when its context
ends. The module imports nothing of the package (the bottom layer: engines and the
FireWorks plumbing both use it); the upstream packages are imported on use.

* :func:`offline_rocket` - FireWorks' offline Rocket (the embedded worker):
  ``fireworks.core.rocket`` calls ``zopen(path)`` without a mode, which monty >= 2025
  rejects (``TypeError: zopen() missing ... 'mode'``): default ``"rt"``; and its
  offline heartbeat thread writes ``FW_ping.json`` to the *current* folder once more
  after the run, when the worker may have changed folder: no heartbeat thread offline
  (worker liveness is the worker's flock; the Rocket's final ping, from the main thread,
  still writes the launch folder's ``FW_ping.json``).
* :func:`mongomock_launchpad_client` - FireWorks' ``LaunchPad`` builds its own
  ``pymongo.MongoClient``; the embedded project gives it a mongomock client on one
  in-memory server instead.
* :func:`jobflow_store` - jobflow's ``JobFiretask`` with ``store=None`` uses
  ``jobflow.SETTINGS.JOB_STORE``: the worker's store for the duration of a run.
* :func:`allow_replacement_output` - jobflow 0.4 gives the job that stores a
  ``Response(replace=...)``'s output (an unresolved reference to the replacement's
  output) the replaced job's ``output_schema``, and validating a reference against it
  fails: the running job drops its schema (the replacement's own output is validated).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobflow import JobStore

#: The versions each patch was written (and tested) for.
PINNED = {
    "offline_rocket": {"fireworks": "2.1.4", "monty": "2026.10.21"},
    "mongomock_launchpad_client": {"fireworks": "2.1.4", "mongomock": "4.3.0"},
    "jobflow_store": {"jobflow": "0.4.0"},
    "allow_replacement_output": {"jobflow": "0.4.0"},
}


@contextlib.contextmanager
def offline_rocket() -> Iterator[None]:
    """FireWorks' ``rocket`` module with ``zopen`` defaulting to ``"rt"`` and no offline ping thread."""
    from fireworks.core import rocket
    from monty.io import zopen

    def _zopen(filename: Any, mode: str = "rt", **kwargs: Any) -> Any:
        return zopen(filename, mode, **kwargs)

    original_zopen, original_ping = rocket.zopen, rocket.start_ping_launch

    def _start_ping_launch(launchpad: Any, launch_id: int) -> Any:
        return None if launchpad is None else original_ping(launchpad, launch_id)

    rocket.zopen, rocket.start_ping_launch = _zopen, _start_ping_launch
    try:
        yield
    finally:
        rocket.zopen, rocket.start_ping_launch = original_zopen, original_ping


@contextlib.contextmanager
def mongomock_launchpad_client(server: Any) -> Iterator[None]:
    """``LaunchPad(...)`` built inside this context talks to mongomock's ``server``."""
    import fireworks.core.launchpad as fw_launchpad
    import mongomock
    import mongomock.gridfs

    mongomock.gridfs.enable_gridfs_integration()

    def _client(*args: Any, **kwargs: Any) -> Any:
        return mongomock.MongoClient(_store=server)

    original = fw_launchpad.MongoClient
    fw_launchpad.MongoClient = _client
    try:
        yield
    finally:
        fw_launchpad.MongoClient = original


@contextlib.contextmanager
def jobflow_store(store: JobStore | None) -> Iterator[None]:
    """Make ``store`` jobflow's default store (used by every JobFiretask with store=None)."""
    if store is None:
        yield
        return
    from jobflow import SETTINGS

    previous = SETTINGS.JOB_STORE
    SETTINGS.JOB_STORE = store
    try:
        yield
    finally:
        SETTINGS.JOB_STORE = previous


def allow_replacement_output() -> None:
    """Call in a job that returns ``Response(replace=...)`` while it has an ``output_schema``."""
    from jobflow import CURRENT_JOB

    if CURRENT_JOB.job is not None:
        CURRENT_JOB.job.output_schema = None
