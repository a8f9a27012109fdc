"""The savings document job: one structure's arm outputs -> :class:`SavingsDocument`.

The job is engine-neutral. What differs between engines is only how a number is read
from an arm's output (a QE task document, an atomate2 ``TaskDoc``): each engine
supplies an :class:`ArmReader` and the job asks it, arm by arm (through
:func:`~mlcharge_workflows.common.schemas.get_field`, which reads models and dicts alike).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from jobflow import job
from monty.json import MSONable

from mlcharge_workflows.convergence import (
    THRESHOLDS,
    energy_agreement,
    energy_tolerance_eV,
    iterations_to,
)

from mlcharge_workflows.common.schemas import (
    SCFIterations,
    ArmAttempt,
    SavingsDetails,
    SavingsDocument,
    get_field,
    missing_arms,
)

__all__ = ["ARMS", "SAVINGS_JOB_NAME", "ArmReader", "get_field", "iterations_by_threshold",
           "savings_document"]

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Name of the job whose output is the savings document.
SAVINGS_JOB_NAME = "savings document"

#: Arms of a comparison, in the order the document lists them.
ARMS = ("baseline", "predict", "ml", "oracle", "nscf_scf", "nscf_ml", "nscf_atomic")
#: The SCF arms (converged flag, magnetisation, iterations).
SCF_ARMS = ("baseline", "ml", "oracle")


class ArmReader(MSONable, ABC):
    """How one engine's arm outputs are read (every method takes None for a missing arm).

    Subclasses live in each engine's ``flows`` module; they hold no state (an instance
    travels with the savings document job through FireWorks).
    """

    engine: ClassVar[str]

    @abstractmethod
    def scf_iterations(self, arm: str, out: Any) -> int | None:
        """SCF iterations the arm paid for (every attempt of the ML arm)."""

    @abstractmethod
    def wall_s(self, arm: str, out: Any) -> float | None:
        """DFT wall time of the arm (s), every attempt included."""

    @abstractmethod
    def energy_eV(self, out: Any) -> float | None:
        """Final total energy (eV)."""

    @abstractmethod
    def converged(self, out: Any) -> bool | None:
        """Did the accepted run converge."""

    @abstractmethod
    def total_magnetization(self, out: Any) -> float | None:
        """Total magnetisation of the accepted run (μB per cell)."""

    @abstractmethod
    def band_gap_eV(self, out: Any) -> float | None:
        """Band gap of a non-SCF arm (eV)."""

    @abstractmethod
    def ml_attempts(self, ml: Any) -> list[ArmAttempt]:
        """Every SCF run of the ML arm, with the start each one used."""

    @abstractmethod
    def ml_density_used(self, ml: Any) -> bool | None:
        """True only if the accepted ML-arm run verifiably read the predicted density."""

    @abstractmethod
    def fallback(self, prediction: Any, ml: Any) -> str | None:
        """Why the ML arm ran (or reran) from atoms."""

    def accuracy_history(self, out: Any) -> list[float]:
        """Estimated SCF accuracy after each iteration of a run (Ry per cell); [] if unknown."""
        return list(get_field(out, "scf_accuracy_Ry") or [])

    def dir_name(self, out: Any) -> str | None:
        """Folder of the arm's (accepted) run."""
        return get_field(out, "dir_name")

    def prediction_skipped(self, prediction: Any) -> bool:
        """No predicted density on purpose (failure or fallback): the ML NSCF arm is skipped."""
        return bool(get_field(prediction, "error") or get_field(prediction, "fallback"))

    def ml_unfinished(self, ml: Any) -> bool:
        """The ML arm returned but no run of it converged (reported as missing)."""
        return False

    def protocol(self, arms: dict[str, Any]) -> dict[str, Any] | None:
        """Settings shared by all arms, when only the outputs know them (else None)."""
        return None

    def details(self, arms: dict[str, Any]) -> dict[str, Any]:
        """Engine-specific entries of :class:`SavingsDetails`."""
        return {}


def iterations_by_threshold(
    reader: ArmReader, arms: dict[str, Any], n_atoms: int
) -> dict[str, SCFIterations]:
    """Iterations of each SCF arm to each threshold of ``THRESHOLDS``, from the run histories.

    The ML arm pays every rejected attempt in full and its accepted run up to the
    threshold. A threshold an arm's history never reached is None; an engine without
    histories gives an empty table.
    """
    histories: dict[str, list[float]] = {}
    paid: dict[str, int] = {}
    converged: dict[str, bool] = {}
    for arm in ("baseline", "oracle"):
        if arms[arm] is not None:
            histories[arm] = reader.accuracy_history(arms[arm])
            paid[arm] = 0
            converged[arm] = bool(reader.converged(arms[arm]))
    if arms["ml"] is not None:
        attempts = reader.ml_attempts(arms["ml"])
        accepted = [a for a in attempts if get_field(a, "rejected") is None]
        if accepted:
            histories["ml"] = list(get_field(accepted[-1], "scf_accuracy_Ry") or [])
            paid["ml"] = sum(get_field(a, "scf_iterations") or 0 for a in attempts
                             if get_field(a, "rejected") is not None)
            converged["ml"] = bool(get_field(accepted[-1], "converged"))
    if not any(histories.values()):
        return {}
    table = {}
    for t in THRESHOLDS:
        counts = {}
        for arm, history in histories.items():
            n = iterations_to(history, t.cell_ry(n_atoms), converged[arm]) if history else None
            counts[arm] = None if n is None else n + paid[arm]
        table[t.name] = SCFIterations(**counts)
    return table


@job(output_schema=SavingsDocument)
def savings_document(
    label: str,
    structure: Structure,
    reader: ArmReader,
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
    """Assemble the savings document from the arms' outputs (None: the arm did not finish).

    ``protocol``: the settings every arm shared, when the flow knows them (else the
    reader takes them from the outputs).
    """
    arms = dict(zip(ARMS, (baseline, prediction, ml, oracle, nscf_scf, nscf_ml, nscf_atomic)))
    r = reader
    missing = missing_arms(arms, requested or {},
                           prediction_skipped=r.prediction_skipped(prediction))
    if ml is not None and r.ml_unfinished(ml):
        missing.append("ml (no run converged)")
    magnetization = {k: r.total_magnetization(arms[k]) for k in SCF_ARMS}
    magnetization["predicted"] = get_field(prediction, "total_magnetization")
    protocol = protocol if protocol is not None else r.protocol(arms)
    energies = {k: r.energy_eV(arms[k]) if arms[k] is not None else None for k in SCF_ARMS}
    details = SavingsDetails(
        converged={k: r.converged(arms[k]) for k in SCF_ARMS},
        total_magnetization=magnetization,
        ml_attempts=r.ml_attempts(ml) if ml is not None else [],
        model_version=get_field(prediction, "model_version"),
        protocol=protocol,
        energy_oracle_eV=energies["oracle"],
        energy_check=energy_agreement(energies, energy_tolerance_eV(protocol, len(structure))),
        nprocs=nprocs,
        dir_names={k: r.dir_name(v) for k, v in arms.items()},
        input_structure=structure.as_dict(),
        wall_s_oracle=r.wall_s("oracle", oracle),
        prediction_reference=get_field(prediction, "reference"),
        partial_start=get_field(prediction, "partial_start"),
        **r.details(arms),
    )
    return SavingsDocument(
        structure=label,
        formula=structure.composition.reduced_formula,
        n_atoms=len(structure),
        engine=r.engine,
        scf_iterations={k: r.scf_iterations(k, arms[k]) for k in SCF_ARMS},
        energy_eV={"baseline": r.energy_eV(baseline), "ml": r.energy_eV(ml)},
        wall_s={"baseline": r.wall_s("baseline", baseline), "ml": r.wall_s("ml", ml),
                "predict": get_field(prediction, "predict_wall_s")},
        ml_density_used=r.ml_density_used(ml) if ml is not None else None,
        fallback=r.fallback(prediction, ml),
        band_gap_eV={"scf": r.band_gap_eV(nscf_scf), "nscf_ml": r.band_gap_eV(nscf_ml),
                     "nscf_atomic": r.band_gap_eV(nscf_atomic)},
        error=("arm(s) did not finish: " + ", ".join(missing)) if missing else None,
        scf_iterations_by_threshold=iterations_by_threshold(r, arms, len(structure)),
        details=details,
    )
