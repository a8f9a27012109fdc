"""Comparison flows (baseline vs ML-initialised SCF) and running them into a savings record.

Per structure (:class:`QEComparisonMaker`)::

    baseline (atomic start) ─┬─> ML static (predicted start, fallback vs baseline) ─┐
    predict density ─────────┘                                                     ├─> savings document
    [oracle: restart from the baseline's converged density] ───────────────────────┤
    [NSCF: bands on converged / predicted / atomic density] ───────────────────────┘

Every arm uses the same :class:`~mlcharge_workflows.engines.qe.sets.QEProtocol` (so the same
``diago_thr_init``) and the same ``nprocs``. The savings document job runs even when an arm
failed (missing outputs resolve to None) and records what failed in ``error``.

>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> flow = QEComparisonMaker(oracle=True, nscf=True).make(si, label="Si")
>>> [j.name for j in flow.jobs][:4]
['qe baseline static', 'qe predict density', 'qe ml static', 'qe oracle static']
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Flow, Maker, OnMissing, job

from mlcharge_workflows.engines.qe.jobs import QENonSCFMaker, QEStaticMaker
from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.savings.fallback import FallbackPolicy
from mlcharge_workflows.savings.jobs import (
    MLQENonSCFMaker,
    MLQEStaticMaker,
    QEAtomicNonSCFMaker,
    QEPredictDensityMaker,
    _get,
    default_nbnd,
)
from mlcharge_workflows.savings.schemas import (
    SavingsDetails,
    SavingsDocument,
    error_record,
    missing_arms,
)

if TYPE_CHECKING:
    from jobflow import JobStore
    from pymatgen.core import Structure

#: Name of the job whose output is the savings document.
SAVINGS_JOB_NAME = "savings document"


@job(output_schema=SavingsDocument)
def savings_document(
    label: str,
    structure: Structure,
    baseline: Any,
    prediction: Any,
    ml: Any,
    oracle: Any = None,
    nscf_scf: Any = None,
    nscf_ml: Any = None,
    nscf_atomic: Any = None,
    requested: dict[str, bool] | None = None,
    protocol: dict | None = None,
    nprocs: int | None = None,
) -> SavingsDocument:
    """Assemble the savings document from the arms' outputs (None: the arm did not finish)."""
    arms = {"baseline": baseline, "predict": prediction, "ml": ml, "oracle": oracle,
            "nscf_scf": nscf_scf, "nscf_ml": nscf_ml, "nscf_atomic": nscf_atomic}
    skipped = _get(prediction, "path") is None and bool(_get(prediction, "fallback"))
    missing = missing_arms(arms, requested or {}, prediction_skipped=skipped)
    if ml is not None and _get(ml, "task") is None and _get(ml, "energy_eV") is None:
        missing.append("ml (no run converged)")
    fallback = _get(ml, "fallback") or _get(prediction, "fallback")
    ml_task = _get(ml, "task")
    details = SavingsDetails(
        converged={"baseline": _get(baseline, "converged"), "ml": _get(ml, "converged"),
                   "oracle": _get(oracle, "converged")},
        total_magnetization={
            "baseline": _get(baseline, "total_magnetization"),
            "ml": _get(ml, "total_magnetization"),
            "oracle": _get(oracle, "total_magnetization"),
            "predicted": _get(prediction, "total_magnetization"),
        },
        ml_attempts=_get(ml, "attempts") or [],
        model_version=_get(prediction, "model_version"),
        protocol=protocol,
        nprocs=nprocs,
        dir_names={"baseline": _get(baseline, "dir_name"), "predict": _get(prediction, "dir_name"),
                   "ml": _get(ml, "dir_name"), "oracle": _get(oracle, "dir_name")},
        input_structure=structure.as_dict(),
        wall_s_oracle=_wall(oracle),
        scf_iterations_ml_accepted=_get(ml, "scf_iterations"),
        ml_start_wall_s=_get(ml_task, "prep_wall_time_s"),
        model_load_s=_get(prediction, "model_load_s"),
        cpu_s={"baseline": _get(baseline, "cpu_time_s"), "ml": _get(ml, "cpu_s_total"),
               "oracle": _get(oracle, "cpu_time_s"), "predict": _get(prediction, "predict_cpu_s")},
    )
    return SavingsDocument(
        structure=label,
        formula=structure.composition.reduced_formula,
        n_atoms=len(structure),
        engine="qe",
        scf_iterations={"baseline": _get(baseline, "scf_iterations"),
                        "ml": _get(ml, "scf_iterations_total"),
                        "oracle": _get(oracle, "scf_iterations")},
        energy_eV={"baseline": _get(baseline, "energy_eV"), "ml": _get(ml, "energy_eV")},
        wall_s={"baseline": _wall(baseline), "ml": _get(ml, "wall_s_total"),
                "predict": _get(prediction, "predict_wall_s")},
        ml_density_used=_get(ml, "ml_density_used") if ml is not None else None,
        fallback=fallback,
        band_gap_eV={"scf": _get(nscf_scf, "band_gap_eV"), "nscf_ml": _get(nscf_ml, "band_gap_eV"),
                     "nscf_atomic": _get(nscf_atomic, "band_gap_eV")},
        error=("arm(s) did not finish: " + ", ".join(missing)) if missing else None,
        details=details,
    )


def _wall(task: Any) -> float | None:
    """Wall time of one pw.x run: the whole command plus any density-placing dry run."""
    if task is None:
        return None
    wall = _get(task, "elapsed_s") or _get(task, "wall_time_s")
    return None if wall is None else float(wall) + float(_get(task, "prep_wall_time_s") or 0.0)


@dataclass
class QEComparisonMaker(Maker):
    """Baseline vs ML-initialised SCF (optionally oracle and NSCF check) for one structure.

    Parameters
    ----------
    oracle
        Add a restart from the baseline's converged density (the ceiling of any start).
    nscf
        Add the NSCF check: band gaps from non-SCF runs (``nscf_mode``) on the converged,
        the predicted and the atomic densities, all with the same k-points and bands.
    model_path
        Weights of the density model (None: ``MLCHARGE_MODEL_PATH`` or the shipped model).
    predict_manager_config
        ``manager_config`` of the prediction job (e.g. ``{"_fworker": "gpu"}``).
    """

    name: str = "qe comparison"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    oracle: bool = False
    nscf: bool = False
    nscf_mode: str = "line"
    model_path: str | None = None
    policy: FallbackPolicy = field(default_factory=FallbackPolicy)
    predict_manager_config: dict = field(default_factory=dict)

    def make(self, structure: Structure, label: str | None = None) -> Flow:
        """The comparison flow; its output is the :class:`SavingsDocument`."""
        label = label or structure.composition.reduced_formula
        kw = dict(protocol=self.protocol, nprocs=self.nprocs)
        baseline = QEStaticMaker(name="qe baseline static", **kw).make(structure)
        predict = QEPredictDensityMaker(
            protocol=self.protocol, model_path=self.model_path,
            manager_config=dict(self.predict_manager_config),
        ).make(structure)
        ml = MLQEStaticMaker(policy=self.policy, **kw).make(
            structure, prediction=predict.output, reference=baseline.output
        )
        ml.update_config({"on_missing_references": OnMissing.NONE})
        jobs = [baseline, predict, ml]
        outputs: dict[str, Any] = {}
        if self.oracle:
            oracle = QEStaticMaker(name="qe oracle static", **kw).make(
                structure, start_density=baseline.output.dir_name
            )
            jobs.append(oracle)
            outputs["oracle"] = oracle.output
        if self.nscf:
            nbnd = default_nbnd(structure)
            nkw = dict(mode=self.nscf_mode, nbnd=nbnd, **kw)
            scf_gap = QENonSCFMaker(name="qe nscf converged", **nkw).make(
                structure, baseline.output.dir_name
            )
            ml_gap = MLQENonSCFMaker(name="qe nscf ml", skip_without_prediction=True, **nkw).make(
                structure, predict.output
            )
            atomic_gap = QEAtomicNonSCFMaker(name="qe nscf atomic", **nkw).make(structure)
            jobs += [scf_gap, ml_gap, atomic_gap]
            outputs.update(nscf_scf=scf_gap.output, nscf_ml=ml_gap.output,
                           nscf_atomic=atomic_gap.output)
        requested = {"baseline": True, "predict": True, "ml": True, "oracle": self.oracle,
                     "nscf_scf": self.nscf, "nscf_ml": self.nscf, "nscf_atomic": self.nscf}
        doc = savings_document(
            label, structure, baseline.output, predict.output, ml.output, requested=requested,
            protocol=self.protocol.model_dump(mode="json"), nprocs=self.nprocs, **outputs,
        )
        doc.name = SAVINGS_JOB_NAME
        doc.update_config({"on_missing_references": OnMissing.NONE})
        return Flow([*jobs, doc], output=doc.output, name=f"{self.name} {label}")


@dataclass
class MLQEBandStructureMaker(Maker):
    """Band structure and/or uniform-mesh (DOS) non-SCF runs straight from a predicted density.

    No SCF runs: the prediction replaces it (compare with ``QEStaticMaker`` +
    ``QENonSCFMaker`` for the conventional route). ``bandstructure_type`` is ``"line"``,
    ``"uniform"`` or ``"both"``.
    """

    name: str = "qe ml band structure"
    bandstructure_type: str = "both"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    nbnd: int | None = None
    model_path: str | None = None
    predict_manager_config: dict = field(default_factory=dict)

    def make(self, structure: Structure) -> Flow:
        """Flow output: ``{"prediction", "line", "uniform"}`` (None for a mode not run)."""
        modes = {"line": ["line"], "uniform": ["uniform"], "both": ["line", "uniform"]}
        if self.bandstructure_type not in modes:
            raise ValueError(
                f"bandstructure_type must be 'line', 'uniform' or 'both', got {self.bandstructure_type!r}"
            )
        predict = QEPredictDensityMaker(
            protocol=self.protocol, model_path=self.model_path,
            manager_config=dict(self.predict_manager_config),
        ).make(structure)
        jobs, output = [predict], {"prediction": predict.output, "line": None, "uniform": None}
        for mode in modes[self.bandstructure_type]:
            nscf = MLQENonSCFMaker(
                name="qe ml non-scf", mode=mode, protocol=self.protocol, nprocs=self.nprocs,
                nbnd=self.nbnd,
            ).make(structure, predict.output)
            jobs.append(nscf)
            output[mode] = nscf.output
        return Flow(jobs, output=output, name=f"{self.name} {structure.composition.reduced_formula}")


def comparison_flow(
    structure: Structure,
    engine: str = "qe",
    label: str | None = None,
    oracle: bool = False,
    nscf: bool = False,
    model_path: str | None = None,
    nprocs: int | None = None,
    protocol: dict | None = None,
) -> Flow:
    """The comparison flow of ``engine`` (``"qe"`` here; ``"vasp"`` from ``engines.vasp.flows``).

    ``protocol``: QE protocol fields overriding the fixed defaults (every arm alike).
    """
    if engine == "qe":
        return QEComparisonMaker(
            protocol=QEProtocol(**(protocol or {})), oracle=oracle, nscf=nscf,
            model_path=model_path, nprocs=nprocs,
        ).make(structure, label=label)
    if engine == "vasp":
        try:
            from mlcharge_workflows.engines.vasp import flows as vasp_flows
        except ImportError as exc:
            raise ValueError(f"the VASP comparison flow is not available: {exc}") from exc
        if protocol:
            raise ValueError("--protocol overrides QE protocol fields; it does not apply to VASP")
        maker_cls = getattr(vasp_flows, "VaspComparisonMaker", None)
        if maker_cls is None:
            raise ValueError("engines/vasp/flows.py defines no VaspComparisonMaker")
        return maker_cls(oracle=oracle, nscf=nscf, model_path=model_path).make(
            structure, label=label
        )
    raise ValueError(f"unknown engine {engine!r}; choose 'qe' or 'vasp'")


# ---------------------------------------------------------------- running and stores
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
        out = store.get_output(flow.output.uuid, load=False)
        doc = SavingsDocument.model_validate({k: v for k, v in out.items() if not k.startswith("@")})
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


def project_job_store(store_dir: str | Path) -> JobStore:
    """The file-backed jobflow store of a project folder (shared with ``mlcharge submit/report``)."""
    from mlcharge_workflows.submit.config import project_job_store as _store
    from mlcharge_workflows.submit.config import project_paths

    return _store(project_paths(store_dir))


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


def savings_documents(store: JobStore) -> list[SavingsDocument]:
    """Every savings document in ``store`` (outputs of the ``savings document`` jobs)."""
    store.connect()
    docs = store.query({"name": SAVINGS_JOB_NAME}, properties=["output"], load=False)
    return [
        SavingsDocument.model_validate({k: v for k, v in d["output"].items() if k[0] != "@"})
        for d in docs
    ]
