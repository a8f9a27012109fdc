"""The comparison flow of one structure, written once for every engine.

:class:`BaseComparisonMaker` wires the arms (atomate2's ``BaseElasticMaker`` pattern);
an engine subclasses it and supplies the jobs of each arm and its :class:`ArmReader`::

    baseline (atomic start) ─┬─> ML static (predicted start, fallback vs baseline) ─┐
    predict density ─────────┘                                                     ├─> savings document
    [oracle: restart from the baseline's converged density] ───────────────────────┤
    [NSCF: bands on converged / predicted / atomic density] ───────────────────────┘

Every engine gives its jobs the same names (:data:`JOB_NAMES`). The ML arm and the
savings document run even when another arm failed (missing outputs resolve to None);
the document records what failed in ``error``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobflow import Flow, Job, Maker, OnMissing

from mlcharge_workflows.common.documents import SAVINGS_JOB_NAME, ArmReader, savings_document

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Job names of a comparison flow, the same for every engine.
JOB_NAMES = {
    "baseline": "baseline static",
    "predict": "predict density",
    "ml": "ml static",
    "oracle": "oracle static",
    "nscf_scf": "nscf converged",
    "nscf_ml": "nscf ml",
    "nscf_atomic": "nscf atomic",
    "savings": SAVINGS_JOB_NAME,
}


@dataclass
class BaseComparisonMaker(Maker, ABC):
    """Baseline vs ML-started SCF (optionally oracle and NSCF check) for one structure.

    Parameters
    ----------
    oracle
        Add a restart from the baseline's converged density (the ceiling of any start).
    nscf
        Add the NSCF check: band gaps from non-SCF runs (``nscf_mode``) on the converged,
        the predicted and the atomic densities, all with the same settings.
    model_path
        Weights of the density model (None: ``MLCHARGE_MODEL_PATH`` or the shipped model).
    predict_manager_config
        ``manager_config`` of the prediction job (e.g. ``{"_fworker": "gpu"}``).
    nprocs
        MPI processes of every DFT run (None: the engine's default).
    """

    name: str = "comparison"
    oracle: bool = False
    nscf: bool = False
    nscf_mode: str = "line"
    model_path: str | None = None
    predict_manager_config: dict = field(default_factory=dict)
    nprocs: int | None = None

    # ------------------------------------------------------------ what an engine supplies
    @abstractmethod
    def reader(self) -> ArmReader:
        """How this engine's arm outputs are read by the savings document."""

    @abstractmethod
    def baseline_job(self, structure: Structure) -> Job:
        """The SCF from atoms."""

    @abstractmethod
    def predict_job(self, structure: Structure) -> Job:
        """The density prediction (output: a :class:`PredictionDocument`)."""

    @abstractmethod
    def ml_job(self, structure: Structure, prediction: Any, reference: Any) -> Job:
        """The SCF from the prediction, checked against ``reference`` (the baseline)."""

    @abstractmethod
    def oracle_job(self, structure: Structure, baseline: Any) -> Job:
        """The SCF restarted from the baseline's converged density."""

    @abstractmethod
    def nscf_jobs(self, structure: Structure, baseline: Any, prediction: Any) -> tuple[Job, Job, Job]:
        """Non-SCF runs on the converged, the predicted and the atomic density."""

    def protocol_record(self) -> dict[str, Any] | None:
        """Settings shared by every arm, for the document (None: read from the outputs)."""
        return None

    # ------------------------------------------------------------ the flow
    def make(self, structure: Structure, label: str | None = None) -> Flow:
        """The comparison flow; its output is the :class:`SavingsDocument`."""
        label = label or structure.composition.reduced_formula
        baseline = _named(self.baseline_job(structure), "baseline")
        predict = _named(self.predict_job(structure), "predict")
        predict.update_config({"manager_config": dict(self.predict_manager_config)})
        ml = _named(self.ml_job(structure, predict.output, baseline.output), "ml")
        ml.update_config({"on_missing_references": OnMissing.NONE})
        jobs = [baseline, predict, ml]
        outputs: dict[str, Any] = {}
        if self.oracle:
            oracle = _named(self.oracle_job(structure, baseline.output), "oracle")
            jobs.append(oracle)
            outputs["oracle"] = oracle.output
        if self.nscf:
            arms = ("nscf_scf", "nscf_ml", "nscf_atomic")
            nscf = self.nscf_jobs(structure, baseline.output, predict.output)
            for arm, job_ in zip(arms, nscf):
                jobs.append(_named(job_, arm))
                outputs[arm] = job_.output
        requested = {"baseline": True, "predict": True, "ml": True, "oracle": self.oracle,
                     "nscf_scf": self.nscf, "nscf_ml": self.nscf, "nscf_atomic": self.nscf}
        doc = savings_document(
            label, structure, self.reader(), baseline.output, predict.output, ml.output,
            requested=requested, protocol=self.protocol_record(), nprocs=self.nprocs, **outputs,
        )
        doc.name = SAVINGS_JOB_NAME
        doc.update_config({"on_missing_references": OnMissing.NONE})
        return Flow([*jobs, doc], output=doc.output, name=f"{self.name} {label}")


def _named(job_: Job, arm: str) -> Job:
    job_.name = JOB_NAMES[arm]
    return job_
