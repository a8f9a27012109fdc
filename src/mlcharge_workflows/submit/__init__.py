"""Submit workflows to FireWorks and run them: embedded file-backed default or MongoDB.

>>> from mlcharge_workflows.submit import FLOWS, ENGINES
>>> FLOWS, ENGINES
(('compare', 'ml-static', 'ml-bands'), ('qe', 'vasp'))

The flows themselves come from :mod:`mlcharge_workflows.catalogue` (``build_flow``);
FireWorks plumbing is in :mod:`.launchpad`, :mod:`.worker` and :mod:`.config`.

Typical use (the three commands of the quickstart)::

    ids = submit_structures(["Si.cif", "GaAs.cif"], engine="qe", flow="compare")
    run_worker()                      # mlcharge worker
    # mlcharge report --output report.html
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcharge_workflows.catalogue import ENGINES, FLOWS, build_flow
from mlcharge_workflows.submit.config import (
    LaunchPadConfigError,
    ProjectPaths,
    load_job_store,
    project_job_store,
    project_paths,
)
from mlcharge_workflows.submit.launchpad import EmbeddedLaunchPad, flow_to_fireworks, open_launchpad
from mlcharge_workflows.submit.worker import WorkerSummary, run_worker

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = [
    "ENGINES",
    "FLOWS",
    "EmbeddedLaunchPad",
    "LaunchPadConfigError",
    "ProjectPaths",
    "SubmitResult",
    "WorkerSummary",
    "build_flow",
    "collect_structures",
    "load_job_store",
    "open_launchpad",
    "project_job_store",
    "project_paths",
    "run_worker",
    "submit_structures",
]

#: File suffixes taken when a folder is given instead of files.
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".json", ".xsf", ".cssr", ".mcif")


@dataclass
class SubmitResult:
    """What a submission added: one workflow per structure, all with one batch id."""

    batch: str
    description: str
    workflows: dict[str, int] = field(default_factory=dict)  # structure label -> first fw_id


def collect_structures(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders into their structure files; every path must exist.

    Raises
    ------
    ValueError
        A path that does not exist, or a folder with no structure files.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and (
                f.suffix.lower() in STRUCTURE_SUFFIXES or f.name.upper().startswith(
                    ("POSCAR", "CONTCAR"))))
            if not found:
                raise ValueError(f"folder {p} holds no structure files ({STRUCTURE_SUFFIXES})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"structure file {p} does not exist")
    if not files:
        raise ValueError("no structures given")
    return files


def _read_structure(path: Path) -> Structure:
    from mlcharge_workflows.validation import read_structure

    return read_structure(path)  # StructureError (ValueError) naming the file and problem


def submit_structures(
    structures: Sequence[str | Path],
    engine: str = "qe",
    flow: str = "compare",
    launchpad_file: str | Path | None = None,
    project: str | Path | None = None,
    progress: bool = True,
    flow_options: dict[str, Any] | None = None,
    timeout_ms: int | None = None,
) -> SubmitResult:
    """Add one workflow per structure to the LaunchPad, all or nothing.

    Order of work: check that the structure files exist, connect to / open the LaunchPad
    (a malformed file or unreachable MongoDB raises :class:`LaunchPadConfigError`), read
    every structure and build every workflow (bad input raises ``ValueError``), and only
    then write. The embedded
    project writes all workflows in one atomic transaction; MongoDB gets one bulk insert.

    Returns
    -------
    SubmitResult
        The batch id (``metadata.mlcharge_batch`` of every workflow) and fw ids.
    """
    from tqdm import tqdm

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; choose one of {FLOWS}")
    files = collect_structures(structures)
    handle = open_launchpad(launchpad_file, project, timeout_ms=timeout_ms)
    batch = uuid.uuid4().hex[:12]
    workflows = []
    for path in tqdm(files, desc="building workflows", unit="structure", disable=not progress):
        label = str(path)
        jf = build_flow(_read_structure(path), engine, flow, label, **(flow_options or {}))
        wf = flow_to_fireworks(jf)  # store=None: workers use their (shared) store
        if flow == "compare":
            # A firework waits forever on a FIZZLED parent unless it allows it. Let every
            # job run (and fail fast on a missing input) so the savings document is always
            # reached and records what failed.
            for fw in wf.fws:
                fw.spec["_allow_fizzled_parents"] = True
        wf.metadata.update({"mlcharge_batch": batch, "structure": label, "engine": engine,
                            "flow": flow})
        workflows.append((label, wf))
    result = SubmitResult(batch=batch, description=handle.description)
    with handle.transaction() as lp:
        if handle.embedded:
            for label, wf in tqdm(workflows, desc="submitting", unit="workflow",
                                  disable=not progress):
                old_new = lp.add_wf(wf)
                result.workflows[label] = min(old_new.values())
        else:
            lp.bulk_add_wfs([wf for _, wf in workflows])
            for doc in lp.workflows.find({"metadata.mlcharge_batch": batch},
                                         {"metadata.structure": 1, "nodes": 1}):
                result.workflows[doc["metadata"]["structure"]] = min(doc["nodes"])
    return result
