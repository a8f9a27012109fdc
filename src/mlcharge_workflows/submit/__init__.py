"""Submit workflows to FireWorks and run them: embedded file-backed default or MongoDB.

>>> from mlcharge_workflows.submit import FLOWS, ENGINES
>>> FLOWS, ENGINES
(('compare', 'ml-static', 'ml-bands'), ('qe', 'vasp'))

Typical use (the three commands of the quickstart)::

    ids = submit_structures(["Si.cif", "GaAs.cif"], engine="qe", flow="compare")
    run_worker()                      # mlcharge worker
    # mlcharge report --output report.html
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    from jobflow import Flow
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

FLOWS = ("compare", "ml-static", "ml-bands")
ENGINES = ("qe", "vasp")
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
    from pymatgen.core import Structure

    try:
        return Structure.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types
        raise ValueError(f"cannot read structure file {path}: {exc}") from exc


def build_flow(structure: Structure, engine: str, flow: str, label: str,
               **options: Any) -> Flow:
    """The jobflow Flow of kind ``flow`` for one structure.

    * ``compare``: baseline vs ML start and a savings document (``oracle``, ``nscf``);
    * ``ml-static``: predict the density, then one ML-initialised static run;
    * ``ml-bands``: ``ml-static`` followed by a line-mode band structure on its density.

    Options common to all: ``nprocs`` (QE MPI processes), ``model_path``, ``protocol``
    (QE: a :class:`~mlcharge_workflows.engines.qe.sets.QEProtocol` or a dict of its
    fields), ``ml_fworker`` (FireWorks worker name that must run the prediction job,
    e.g. ``"gpu"``).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; choose one of {FLOWS}")
    if engine == "qe":  # fail at submission, not hours later on a worker
        from mlcharge_workflows.pseudo import check_structure

        try:
            check_structure(structure)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
    return _BUILDERS[flow](structure, engine, label, **options)


def _qe_common(options: dict[str, Any]) -> dict[str, Any]:
    from mlcharge_workflows.engines.qe.sets import QEProtocol

    protocol = options.get("protocol")
    if protocol is None:
        protocol = QEProtocol()
    elif isinstance(protocol, dict):
        protocol = QEProtocol(**protocol)
    return {"protocol": protocol, "nprocs": options.get("nprocs")}


def _manager_config(options: dict[str, Any]) -> dict[str, Any]:
    fworker = options.get("ml_fworker")
    return {"_fworker": fworker} if fworker else {}


def _compare(structure: Structure, engine: str, label: str, **options: Any) -> Flow:
    if engine == "qe":
        from mlcharge_workflows.savings.flows import QEComparisonMaker

        maker = QEComparisonMaker(
            oracle=bool(options.get("oracle")), nscf=bool(options.get("nscf")),
            model_path=options.get("model_path"),
            predict_manager_config=_manager_config(options), **_qe_common(options))
        return maker.make(structure, label=label)
    from mlcharge_workflows.engines.vasp.flows import VaspComparisonMaker

    maker = VaspComparisonMaker(
        oracle=bool(options.get("oracle")), nscf=bool(options.get("nscf")),
        model_path=options.get("model_path"), predict_manager_config=_manager_config(options))
    return maker.make(structure, label=label)


def _ml_static_jobs(structure: Structure, engine: str, label: str,
                    options: dict[str, Any]) -> list:
    """[predict, ML static] for either engine; the static's output has ``dir_name``."""
    if engine == "qe":
        from mlcharge_workflows.savings.jobs import MLQEStaticMaker, QEPredictDensityMaker

        common = _qe_common(options)
        predict = QEPredictDensityMaker(protocol=common["protocol"],
                                        model_path=options.get("model_path"),
                                        manager_config=_manager_config(options)).make(structure)
        static = MLQEStaticMaker(**common).make(structure, prediction=predict.output)
    else:
        from mlcharge_workflows.engines.vasp.jobs import MLDensityMaker, MLStaticMaker

        static_maker = MLStaticMaker()
        predict = MLDensityMaker(input_set_generator=static_maker.input_set_generator,
                                 model_path=options.get("model_path")).make(structure)
        if _manager_config(options):
            predict.update_config({"manager_config": _manager_config(options)})
        static = static_maker.make(structure, ml_density=predict.output)
    return [predict, static]


def _ml_static(structure: Structure, engine: str, label: str, **options: Any) -> Flow:
    from jobflow import Flow

    predict, static = _ml_static_jobs(structure, engine, label, options)
    return Flow([predict, static], output=static.output, name=f"{engine} ml static {label}")


def _ml_bands(structure: Structure, engine: str, label: str, **options: Any) -> Flow:
    from jobflow import Flow

    predict, static = _ml_static_jobs(structure, engine, label, options)
    if engine == "qe":
        from mlcharge_workflows.engines.qe.jobs import QENonSCFMaker
        from mlcharge_workflows.savings.jobs import default_nbnd

        bands = QENonSCFMaker(name="qe bands", mode="line", nbnd=default_nbnd(structure),
                              **_qe_common(options)).make(structure, static.output.dir_name)
    else:
        from atomate2.vasp.jobs.core import NonSCFMaker

        bands = NonSCFMaker().make(structure, prev_dir=static.output.dir_name, mode="line")
    return Flow([predict, static, bands], output=bands.output, name=f"{engine} ml bands {label}")


_BUILDERS: dict[str, Callable[..., Flow]] = {
    "compare": _compare, "ml-static": _ml_static, "ml-bands": _ml_bands,
}


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
