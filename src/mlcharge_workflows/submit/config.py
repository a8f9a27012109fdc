"""Where workflows and results live: the project folder, the jobflow store, launchpad files.

Two configurations are supported:

* **embedded default** (no launchpad file): everything lives in one project folder
  (``MLCHARGE_PROJECT_DIR``, default ``./mlcharge_project``)::

      mlcharge_project/
        launchpad.json        FireWorks' file-backed (mongomock-persistence) database
        launchpad.lock        flock taken for every read-modify-write of launchpad.json
        store/                jobflow JobStore: maggma MontyStore (montydb, sqlite) + "data"
        launches/             one folder per firework launch
        workers/              one lock file per running worker (liveness of a worker)

* **production**: a FireWorks ``my_launchpad.yaml`` pointing at MongoDB, and a jobflow
  store configured as usual (``JOBFLOW_CONFIG_FILE`` / ``~/.jobflow.yaml``, or a file
  given to ``--store``).

>>> paths = project_paths("/tmp/demo_project")
>>> paths.launchpad_file.name, paths.store_dir.name
('launchpad.json', 'store')
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlcharge_workflows.settings import get_settings

if TYPE_CHECKING:
    from jobflow import JobStore

#: MontyStore collection names of the embedded jobflow store.
DOCS_COLLECTION = "outputs"
DATA_COLLECTION = "outputs_data"
DATABASE_NAME = "mlcharge"
#: How long a MongoDB server may take to answer before submission gives up (ms).
DEFAULT_SERVER_TIMEOUT_MS = 5000


class LaunchPadConfigError(ValueError):
    """A launchpad or store configuration file is malformed or points nowhere."""


@dataclass(frozen=True)
class ProjectPaths:
    """The files and folders of one embedded project (all absolute)."""

    root: Path

    @property
    def launchpad_file(self) -> Path:
        """FireWorks' file-backed database (mongomock-persistence JSON)."""
        return self.root / "launchpad.json"

    @property
    def lock_file(self) -> Path:
        """Lock taken around every transaction on :attr:`launchpad_file`."""
        return self.root / "launchpad.lock"

    @property
    def store_dir(self) -> Path:
        """Folder of the montydb (sqlite) jobflow store."""
        return self.root / "store"

    @property
    def launches_dir(self) -> Path:
        """Parent folder of every launch directory."""
        return self.root / "launches"

    @property
    def workers_dir(self) -> Path:
        """One lock file per live worker."""
        return self.root / "workers"

    def exists(self) -> bool:
        """True if the project holds a launchpad database."""
        return self.launchpad_file.is_file()

    def create(self) -> ProjectPaths:
        """Create the folders (idempotent) and return self."""
        for folder in (self.root, self.store_dir, self.launches_dir, self.workers_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def project_paths(project: str | Path | None = None) -> ProjectPaths:
    """The project folder ``project``, or ``MLCHARGE_PROJECT_DIR``, made absolute."""
    root = Path(project) if project is not None else Path(get_settings().project_dir)
    return ProjectPaths(root.expanduser().resolve())


def project_job_store(paths: ProjectPaths | str | Path) -> JobStore:
    """The embedded jobflow store of a project (its :class:`ProjectPaths` or its folder):
    documents and a "data" store in montydb (sqlite).

    montydb's sqlite storage commits every write, is safe against several processes
    and survives a killed process, so the submitter, any number of workers and the
    report all see the same outputs (references resolve).
    """
    from jobflow import JobStore
    from maggma.stores import MontyStore

    if not isinstance(paths, ProjectPaths):
        paths = project_paths(paths)
    paths.store_dir.mkdir(parents=True, exist_ok=True)
    common = {"database_path": str(paths.store_dir), "database_name": DATABASE_NAME}
    docs = MontyStore(DOCS_COLLECTION, key="uuid", **common)
    data = MontyStore(DATA_COLLECTION, key="blob_uuid", **common)
    return JobStore(docs, additional_stores={"data": data})


def load_job_store(path: str | Path) -> JobStore:
    """A jobflow store from a project folder or a jobflow config file (YAML/JSON).

    The file may be a full jobflow settings file (``JOB_STORE: {...}``), a bare store
    spec (``docs_store: {type: MongoStore, ...}``) or a monty-serialised JobStore.
    """
    from jobflow import JobStore

    path = Path(path).expanduser()
    if path.is_dir():
        paths = ProjectPaths(path.resolve())
        if not paths.store_dir.is_dir():
            raise LaunchPadConfigError(
                f"{path} is not an mlcharge project folder (no 'store/' inside); "
                "give the project folder of `mlcharge submit` or a jobflow config file"
            )
        return project_job_store(paths)
    if not path.is_file():
        raise LaunchPadConfigError(f"store {path} does not exist")
    spec = _read_yaml(path, "jobflow store config")
    spec = spec.get("JOB_STORE", spec)
    try:
        if isinstance(spec, str):
            return JobStore.from_file(spec)
        if "@class" in spec:
            return JobStore.from_dict(spec)
        return JobStore.from_dict_spec(spec)
    except Exception as exc:  # noqa: BLE001 - turn any config problem into one clear error
        raise LaunchPadConfigError(f"{path}: not a valid jobflow store config ({exc})") from exc


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchPadConfigError(f"{what} {path} is not readable YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LaunchPadConfigError(f"{what} {path} must hold a mapping, got {type(data).__name__}")
    return data


def read_launchpad_file(path: str | Path) -> dict[str, Any]:
    """Validate a FireWorks ``my_launchpad.yaml`` and return its keyword arguments.

    Raises
    ------
    LaunchPadConfigError
        Unreadable YAML, not a mapping, or keys that ``LaunchPad`` does not take.
    """
    from fireworks import LaunchPad

    path = Path(path).expanduser()
    if not path.is_file():
        raise LaunchPadConfigError(f"launchpad file {path} does not exist")
    data = _read_yaml(path, "launchpad file")
    allowed = set(inspect.signature(LaunchPad.__init__).parameters) - {"self"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise LaunchPadConfigError(
            f"launchpad file {path} has unknown keys {unknown}; allowed: {sorted(allowed)}"
        )
    if not (data.get("host") or data.get("uri_mode")):
        raise LaunchPadConfigError(f"launchpad file {path} names no MongoDB 'host'")
    return data


def connect_launchpad(path: str | Path, timeout_ms: int = DEFAULT_SERVER_TIMEOUT_MS):
    """A FireWorks LaunchPad from ``path``, with its MongoDB server verified reachable.

    The server is pinged (``serverSelectionTimeoutMS=timeout_ms``) before anything is
    written, so an unreachable server fails fast and leaves nothing half-submitted.
    """
    from fireworks import LaunchPad

    kwargs = read_launchpad_file(path)
    client_kwargs = dict(kwargs.pop("mongoclient_kwargs", None) or {})
    client_kwargs.setdefault("serverSelectionTimeoutMS", timeout_ms)
    client_kwargs.setdefault("connectTimeoutMS", timeout_ms)
    try:
        lp = LaunchPad(mongoclient_kwargs=client_kwargs, **kwargs)
        lp.connection.admin.command("ping")
        lp.fireworks.estimated_document_count()  # authentication/authorisation check
    except Exception as exc:  # noqa: BLE001 - pymongo raises many types
        host = kwargs.get("host")
        reason = (str(exc).splitlines() or [""])[0].split(" (configured timeouts")[0][:300]
        raise LaunchPadConfigError(
            f"cannot reach the MongoDB of launchpad file {path} (host {host!r}, waited "
            f"{client_kwargs['serverSelectionTimeoutMS'] / 1000:g} s): "
            f"{type(exc).__name__}: {reason}"
        ) from exc
    return lp
