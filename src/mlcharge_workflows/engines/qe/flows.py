"""QE comparison flow and the ML band-structure flow.

:class:`QEComparisonMaker` is :class:`~mlcharge_workflows.common.flows.BaseComparisonMaker`
with pw.x arms: every arm uses the same :class:`~mlcharge_workflows.engines.qe.sets.QEProtocol`
(so the same ``diago_thr_init``) and the same ``nprocs``. :class:`QEArmReader` tells the
engine-neutral savings document how to read the QE arm outputs.

>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> flow = QEComparisonMaker(oracle=True, nscf=True).make(si, label="Si")
>>> [j.name for j in flow.jobs][:4]
['baseline static', 'predict density', 'ml static', 'oracle static']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobflow import Flow, Job, Maker

from mlcharge_workflows.common.documents import ArmReader, get_field
from mlcharge_workflows.common.fallback import FallbackPolicy
from mlcharge_workflows.common.flows import BaseComparisonMaker
from mlcharge_workflows.common.schemas import ArmAttempt
from mlcharge_workflows.engines.qe.jobs import (
    MLQENonSCFMaker,
    MLQEStaticMaker,
    QEAtomicNonSCFMaker,
    QENonSCFMaker,
    QEPredictDensityMaker,
    QEStaticMaker,
)
from mlcharge_workflows.engines.qe.sets import QEProtocol, default_nbnd

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["MLQEBandStructureMaker", "QEArmReader", "QEComparisonMaker"]


def _wall(task: Any) -> float | None:
    """Wall time of one pw.x run: the whole command plus any density-placing dry run."""
    if task is None:
        return None
    wall = get_field(task, "elapsed_s") or get_field(task, "wall_time_s")
    return None if wall is None else float(wall) + float(get_field(task, "prep_wall_time_s") or 0.0)


class QEArmReader(ArmReader):
    """Reads :class:`QETaskDocument` arms and the :class:`MLStaticDocument` of the ML arm."""

    engine = "qe"

    def scf_iterations(self, arm: str, out: Any) -> int | None:  # noqa: D102
        return get_field(out, "scf_iterations_total" if arm == "ml" else "scf_iterations")

    def wall_s(self, arm: str, out: Any) -> float | None:  # noqa: D102
        return get_field(out, "wall_s_total") if arm == "ml" else _wall(out)

    def energy_eV(self, out: Any) -> float | None:  # noqa: D102
        return get_field(out, "energy_eV")

    def converged(self, out: Any) -> bool | None:  # noqa: D102
        return get_field(out, "converged")

    def total_magnetization(self, out: Any) -> float | None:  # noqa: D102
        return get_field(out, "total_magnetization")

    def band_gap_eV(self, out: Any) -> float | None:  # noqa: D102
        return get_field(out, "band_gap_eV")

    def ml_attempts(self, ml: Any) -> list[ArmAttempt]:  # noqa: D102
        return get_field(ml, "attempts") or []

    def ml_density_used(self, ml: Any) -> bool | None:  # noqa: D102
        return get_field(ml, "ml_density_used")

    def fallback(self, prediction: Any, ml: Any) -> str | None:  # noqa: D102
        return get_field(ml, "fallback") or get_field(prediction, "fallback")

    def ml_unfinished(self, ml: Any) -> bool:  # noqa: D102
        return get_field(ml, "task") is None and get_field(ml, "energy_eV") is None

    def details(self, arms: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        base, pred, ml, orc = (arms[k] for k in ("baseline", "predict", "ml", "oracle"))
        return {
            "scf_iterations_ml_accepted": get_field(ml, "scf_iterations"),
            "ml_start_wall_s": get_field(ml, "task", "prep_wall_time_s"),
            "model_load_s": get_field(pred, "model_load_s"),
            "cpu_s": {"baseline": get_field(base, "cpu_time_s"), "ml": get_field(ml, "cpu_s_total"),
                      "oracle": get_field(orc, "cpu_time_s"),
                      "predict": get_field(pred, "predict_cpu_s")},
        }


@dataclass
class QEComparisonMaker(BaseComparisonMaker):
    """Baseline vs ML-initialised pw.x SCF (optionally oracle and NSCF check) for one structure.

    Parameters (beyond :class:`BaseComparisonMaker`'s)
    -----------------------------------------------------
    protocol
        The QE protocol of every arm.
    policy
        Tolerances for trusting the ML static against the baseline.
    """

    name: str = "qe comparison"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    policy: FallbackPolicy = field(default_factory=FallbackPolicy)

    def reader(self) -> ArmReader:  # noqa: D102
        return QEArmReader()

    def protocol_record(self) -> dict[str, Any] | None:  # noqa: D102
        return self.protocol.model_dump(mode="json")

    def _kw(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "nprocs": self.nprocs}

    def baseline_job(self, structure: Structure) -> Job:  # noqa: D102
        return QEStaticMaker(**self._kw()).make(structure)

    def predict_job(self, structure: Structure) -> Job:  # noqa: D102
        return QEPredictDensityMaker(protocol=self.protocol, model_path=self.model_path).make(structure)

    def ml_job(self, structure: Structure, prediction: Any, reference: Any) -> Job:  # noqa: D102
        return MLQEStaticMaker(policy=self.policy, **self._kw()).make(
            structure, prediction=prediction, reference=reference
        )

    def oracle_job(self, structure: Structure, baseline: Any) -> Job:  # noqa: D102
        return QEStaticMaker(**self._kw()).make(structure, start_density=baseline.dir_name)

    def nscf_jobs(self, structure: Structure, baseline: Any, prediction: Any) -> tuple[Job, Job, Job]:  # noqa: D102
        kw = dict(mode=self.nscf_mode, nbnd=default_nbnd(structure, self.protocol), **self._kw())
        return (
            QENonSCFMaker(**kw).make(structure, baseline.dir_name),
            MLQENonSCFMaker(skip_without_prediction=True, **kw).make(structure, prediction),
            QEAtomicNonSCFMaker(**kw).make(structure),
        )


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
                name="ml non-scf", mode=mode, protocol=self.protocol, nprocs=self.nprocs,
                nbnd=self.nbnd,
            ).make(structure, predict.output)
            jobs.append(nscf)
            output[mode] = nscf.output
        return Flow(jobs, output=output, name=f"{self.name} {structure.composition.reduced_formula}")
