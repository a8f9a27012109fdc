"""VASP comparison flow: baseline (atoms) vs ML-started SCF, optional oracle and NSCF check.

:class:`VaspComparisonMaker` is :class:`~mlcharge_workflows.common.flows.BaseComparisonMaker`
with atomate2 arms::

    baseline static (ICHARG=2) ─┬─> [oracle static: ICHARG=1 from its CHGCAR] ┐
                                ├─> [NSCF on the converged density]          │
                                └──────────┐ (reference energy, moment)      │
    predict density ─┬─> ml static (ICHARG=1, fallback handler, check) ─────├─> savings document
                     └─> [NSCF on the predicted density]                     │
    [NSCF from atoms, ICHARG=12] ────────────────────────────────────────────┘

All SCF arms share one input set generator, the pinned fine grid and ``ISTART = 0``;
all NSCF arms share one non-SCF generator and mode. SCF iterations count every attempt
an arm paid for (custodian reruns included). The ML static is checked against the
baseline (``FallbackPolicy``: magnetic state, energy per atom); a distrusted result is
kept in the store and the arm is rerun from atoms (recorded in ``fallback``).
:class:`VaspArmReader` tells the engine-neutral savings document how to read TaskDocs.

>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> flow = VaspComparisonMaker(oracle=True).make(si, label="Si")
>>> [j.name for j in flow.jobs]
['baseline static', 'predict density', 'ml static', 'oracle static', 'savings document']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atomate2.vasp.sets.core import NonSCFSetGenerator, StaticSetGenerator
from jobflow import Job

from mlcharge_workflows.common.documents import ArmReader
from mlcharge_workflows.common.fallback import FallbackPolicy
from mlcharge_workflows.common.flows import BaseComparisonMaker
from mlcharge_workflows.common.schemas import ArmAttempt
from mlcharge_workflows.engines.vasp.handlers import ACTIVE_STATUSES, discarded_reason
from mlcharge_workflows.engines.vasp.jobs import (
    AtomicNonSCFMaker,
    BaselineStaticMaker,
    MLDensityMaker,
    MLNonSCFMaker,
    MLStaticMaker,
)
from mlcharge_workflows.engines.vasp.parse import task_field, task_magnetization, task_successful

if TYPE_CHECKING:
    from atomate2.vasp.sets.base import VaspInputGenerator
    from pymatgen.core import Structure

__all__ = ["VaspArmReader", "VaspComparisonMaker"]

#: INCAR keys recorded as the protocol shared by all arms.
PROTOCOL_KEYS = ("ENCUT", "PREC", "EDIFF", "NELM", "ALGO", "ISPIN", "ISMEAR", "SIGMA", "GGA",
                 "METAGGA", "LASPH", "NGXF", "NGYF", "NGZF", "ISTART")


def _calc(task: Any) -> Any:
    calcs = task_field(task, "calcs_reversed")
    return calcs[0] if calcs else None


def _attempts(task: Any) -> list[dict]:
    return list(task_field(task, "additional_json", "scf_attempts") or [])


def _donor_attempts(task: Any) -> list[dict]:
    """SCF attempts of the occupancy donor run the ML arm paid for (none without one)."""
    donor = task_field(task, "additional_json", "ml_start", "occupancy_donor") or {}
    return list(donor.get("scf_attempts") or [])


def _total_scf(task: Any) -> int | None:
    if task is None:
        return None
    attempts = _attempts(task)
    donor = sum(a["scf_iterations"] for a in _donor_attempts(task))
    if attempts:
        return int(sum(a["scf_iterations"] for a in attempts) + donor)
    steps = task_field(_calc(task), "output", "num_electronic_steps")
    return int(steps[0]) + donor if steps else None


def _wall(task: Any) -> float | None:
    """VASP wall time of every attempt (OUTCAR "Elapsed time"), the occupancy donor's
    included, else the task's run stats."""
    if task is None:
        return None
    walls = [a.get("wall_s") for a in [*_donor_attempts(task), *_attempts(task)]]
    if walls and all(w is not None for w in walls):
        return float(sum(walls))
    return task_field(task, "run_stats", "overall", "elapsed_time")


def _ml_attempts(task: Any) -> list[ArmAttempt]:
    """One entry per SCF attempt of the ML arm, with the start each attempt used."""
    record = task_field(task, "additional_json", "ml_start") or {}
    events = record.get("events") or []
    density = record.get("density") or {}
    from_atoms = record.get("start") == "atomic" or density.get("error") or density.get("fallback")
    out, start = [], "atomic" if from_atoms else "ml"
    donor = task_field(task, "additional_json", "ml_start", "occupancy_donor") or {}
    for attempt in _donor_attempts(task):  # paid for, never the accepted run
        out.append(ArmAttempt(
            start="atomic", scf_iterations=attempt["scf_iterations"], converged=False,
            wall_s=attempt.get("wall_s"), density_read_from_file=False,
            start_evidence=(attempt.get("start_evidence") or {}).get("evidence"),
            dir_name=donor.get("dir_name"),
            rejected="occupancy donor: one step from atoms for the PAW occupancies of the "
            "ML start (not an SCF)",
        ))
    for i, attempt in enumerate(_attempts(task)):
        if i > 0:
            start = "ml" if events[i - 1].get("action") == "restored" else "atomic"
        last = i == len(_attempts(task)) - 1
        evidence = attempt.get("start_evidence") or {}
        read = evidence.get("density_read")  # None: VASP's output does not say
        meant_ml = start == "ml"
        if meant_ml and read is False:
            start = "atomic"  # VASP discarded the CHGCAR: this attempt ran from atoms
        out.append(ArmAttempt(
            start=start,
            scf_iterations=attempt["scf_iterations"],
            energy_eV=task_field(task, "output", "energy") if last else None,
            converged=task_successful(task) if last else False,
            total_magnetization=task_magnetization(task) if last else None,
            wall_s=attempt.get("wall_s"),
            density_read_from_file=read if meant_ml else False,
            start_evidence=evidence.get("evidence"),
            dir_name=task_field(task, "dir_name"),
            rejected=None if last else (events[i].get("reason") if i < len(events) else None),
        ))
    return out


def _start_evidence(task: Any) -> dict[str, Any] | None:
    """What VASP's output says about the accepted run's start (the ML-start record's)."""
    record = task_field(task, "additional_json", "ml_start") or {}
    evidence = record.get("start_evidence")
    if evidence is None:
        attempts = _attempts(task)
        evidence = attempts[-1].get("start_evidence") if attempts else None
    return evidence


def _ml_density_used(task: Any) -> bool | None:
    """True only if the accepted run started from the placed CHGCAR: ICHARG=1 as VASP
    echoed, and not discarded according to its OUTCAR/stdout. Where those files show no
    start at all (mocked runs) the record's ``start_evidence`` says ``unverified``."""
    if task is None:
        return None
    record = task_field(task, "additional_json", "ml_start") or {}
    icharg = task_field(_calc(task), "input", "parameters", "ICHARG")
    evidence = _start_evidence(task) or {}
    if evidence.get("density_read") is False:  # VASP echoes ICHARG=1 even then
        return False
    return record.get("status") in ACTIVE_STATUSES and icharg is not None and int(icharg) == 1


class VaspArmReader(ArmReader):
    """Reads atomate2 TaskDocs (custodian attempts in ``additional_json``) and the prediction."""

    engine = "vasp"

    def scf_iterations(self, arm: str, out: Any) -> int | None:  # noqa: D102
        return _total_scf(out)

    def wall_s(self, arm: str, out: Any) -> float | None:  # noqa: D102
        return _wall(out)

    def energy_eV(self, out: Any) -> float | None:  # noqa: D102
        return task_field(out, "output", "energy")

    def converged(self, out: Any) -> bool | None:  # noqa: D102
        return task_successful(out)

    def total_magnetization(self, out: Any) -> float | None:  # noqa: D102
        return task_magnetization(out)

    def band_gap_eV(self, out: Any) -> float | None:  # noqa: D102
        return task_field(out, "output", "bandgap")

    def ml_attempts(self, ml: Any) -> list[ArmAttempt]:  # noqa: D102
        return _ml_attempts(ml)

    def ml_density_used(self, ml: Any) -> bool | None:  # noqa: D102
        return _ml_density_used(ml)

    def fallback(self, prediction: Any, ml: Any) -> str | None:  # noqa: D102
        record = task_field(ml, "additional_json", "ml_start") or {}
        error = task_field(prediction, "error")
        evidence = _start_evidence(ml) or {}
        discarded = (discarded_reason(evidence) if evidence.get("density_read") is False
                     and record.get("status") in ACTIVE_STATUSES else None)
        return record.get("fallback") or task_field(prediction, "fallback") or (
            f"prediction failed: {error}" if error else None
        ) or discarded

    def protocol(self, arms: dict[str, Any]) -> dict[str, Any] | None:  # noqa: D102
        params = task_field(_calc(arms["baseline"]), "input", "parameters") or {}
        return {k: params.get(k) for k in PROTOCOL_KEYS if k in params} or None

    def details(self, arms: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        params = task_field(_calc(arms["baseline"]), "input", "parameters") or {}
        prediction = arms["predict"]
        return {
            "nelmdl": params.get("NELMDL"),
            "predictor": task_field(prediction, "predictor"),
            "nelect": {"potcar": task_field(prediction, "nelect"),
                       "predicted": task_field(prediction, "n_electrons")
                       or task_field(prediction, "n_electrons_predicted")},
            "valence_mismatch": task_field(prediction, "valence_mismatch") or {},
            "ml_start_evidence": _evidence_summary(arms.get("ml")),
            "paw_occupancies": task_field(arms.get("ml"), "additional_json", "ml_start",
                                          "density", "paw_occupancies")
            or task_field(prediction, "paw_occupancies"),
        }


def _evidence_summary(ml: Any) -> dict[str, Any] | None:
    """``{"status": "read" | "discarded" | "unverified", "evidence": ...}`` of the ML arm."""
    if ml is None:
        return None
    evidence = _start_evidence(ml)
    if evidence is None:
        return {"status": "unverified", "evidence": "unverified: no start evidence recorded"}
    return {k: evidence.get(k) for k in ("status", "evidence", "messages", "files")}


@dataclass
class VaspComparisonMaker(BaseComparisonMaker):
    """Baseline vs ML-started VASP static (optionally oracle and NSCF check) for one structure.

    Parameters (beyond :class:`BaseComparisonMaker`'s)
    -----------------------------------------------------
    input_set_generator
        Static input set shared by every SCF arm (default: atomate2's StaticSetGenerator).
    nscf_input_set_generator
        Non-SCF input set shared by the three NSCF arms.
    predictor, zval
        Passed to :class:`~mlcharge_workflows.engines.vasp.jobs.MLDensityMaker`.
    spin
        Start for magnetic cells (see :class:`MLDensityMaker`): with the default
        ``"atomic"`` the ML arm of a magnetic cell runs from atoms and records
        ``fallback = "atomic_spin_start: ..."``.
    policy
        Tolerances for trusting the ML static against the baseline.
    paw_occupancies
        Where the ML static's PAW occupancies come from (see :class:`MLStaticMaker`;
        default ``"auto"``: no prev_dir here, so a one-step donor run, counted in the ML
        arm's iterations and wall time). The oracle keeps the baseline CHGCAR's own.
    """

    name: str = "vasp comparison"
    input_set_generator: VaspInputGenerator = field(default_factory=StaticSetGenerator)
    nscf_input_set_generator: VaspInputGenerator = field(default_factory=NonSCFSetGenerator)
    predictor: Any = "model"
    zval: dict[str, float] | None = None
    max_ml_restarts: int = 1
    spin: str | None = None
    policy: FallbackPolicy = field(default_factory=FallbackPolicy)
    paw_occupancies: str = "auto"

    def reader(self) -> ArmReader:  # noqa: D102
        return VaspArmReader()

    def baseline_job(self, structure: Structure) -> Job:  # noqa: D102
        return BaselineStaticMaker(input_set_generator=self.input_set_generator).make(structure)

    def predict_job(self, structure: Structure) -> Job:  # noqa: D102
        return MLDensityMaker(
            input_set_generator=self.input_set_generator, predictor=self.predictor,
            model_path=self.model_path, zval=self.zval, allow_failure=True, spin=self.spin,
        ).make(structure)

    def _static(self, **kw: Any) -> MLStaticMaker:
        return MLStaticMaker(input_set_generator=self.input_set_generator, density_maker=None,
                             max_ml_restarts=self.max_ml_restarts, zval=self.zval, **kw)

    def ml_job(self, structure: Structure, prediction: Any, reference: Any) -> Job:  # noqa: D102
        return self._static(fallback_policy=self.policy,
                            paw_occupancies=self.paw_occupancies).make(
            structure, ml_density=prediction, reference=reference
        )

    def oracle_job(self, structure: Structure, baseline: Any) -> Job:  # noqa: D102
        return self._static(name="oracle static", paw_occupancies="none").make(
            structure, ml_density=baseline.dir_name)

    def nscf_jobs(self, structure: Structure, baseline: Any, prediction: Any) -> tuple[Job, Job, Job]:  # noqa: D102
        # every arm reads the baseline SCF's run (prev_dir): its ISPIN and moments, NBANDS,
        # smearing and k-mesh settings, so the three differ only in their density
        gen, mode, prev = self.nscf_input_set_generator, self.nscf_mode, baseline.dir_name
        return (
            MLNonSCFMaker(input_set_generator=gen, density_maker=None).make(
                structure, prev_dir=prev, mode=mode, ml_density=baseline.dir_name),
            MLNonSCFMaker(input_set_generator=gen, density_maker=None, zval=self.zval).make(
                structure, prev_dir=prev, mode=mode, ml_density=prediction),
            AtomicNonSCFMaker(input_set_generator=gen).make(structure, prev_dir=prev, mode=mode),
        )
