"""VASP comparison flow: baseline (atoms) vs ML-started SCF, optional oracle and NSCF check.

Per structure (:class:`VaspComparisonMaker`)::

    baseline static (ICHARG=2) ─┬─> [oracle static: ICHARG=1 from its CHGCAR] ┐
                                ├─> [NSCF on the converged density]          │
                                └──────────┐ (reference energy, moment)      │
    ml density ─┬─> ml static (ICHARG=1, fallback handler, check) ──────────├─> savings document
                └─> [NSCF on the predicted density]                          │
    [NSCF from atoms, ICHARG=12] ────────────────────────────────────────────┘

All SCF arms share one input set generator, the pinned fine grid and ``ISTART = 0``;
all NSCF arms share one non-SCF generator and mode. The savings document follows
:mod:`mlcharge_workflows.savings.schemas` (``engine = "vasp"``); SCF iterations count
every attempt an arm paid for (custodian reruns included). The ML static is checked
against the baseline (``FallbackPolicy``: magnetic state, energy per atom); a distrusted
result is kept in the store and the arm is rerun from atoms (recorded in ``fallback``).

>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> flow = VaspComparisonMaker(oracle=True).make(si, label="Si")
>>> [j.name for j in flow.jobs]
['baseline static', 'ml density', 'ml static', 'oracle static', 'savings document']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atomate2.vasp.sets.core import NonSCFSetGenerator, StaticSetGenerator
from jobflow import Flow, Maker, OnMissing, job

from mlcharge_workflows.engines.vasp.handlers import ACTIVE_STATUSES
from mlcharge_workflows.engines.vasp.jobs import (
    AtomicNonSCFMaker,
    BaselineStaticMaker,
    MLDensityMaker,
    MLNonSCFMaker,
    MLStaticMaker,
)
from mlcharge_workflows.engines.vasp.parse import task_field, task_magnetization, task_successful
from mlcharge_workflows.savings.fallback import FallbackPolicy
from mlcharge_workflows.savings.schemas import (
    ArmAttempt,
    SavingsDetails,
    SavingsDocument,
    missing_arms,
)

if TYPE_CHECKING:
    from atomate2.vasp.sets.base import VaspInputGenerator
    from pymatgen.core import Structure

__all__ = ["VaspComparisonMaker", "vasp_savings_document"]

#: INCAR keys recorded as the protocol shared by all arms.
PROTOCOL_KEYS = ("ENCUT", "PREC", "EDIFF", "NELM", "ALGO", "ISPIN", "ISMEAR", "SIGMA", "GGA",
                 "METAGGA", "LASPH", "NGXF", "NGYF", "NGZF", "ISTART")


def _calc(task: Any) -> Any:
    calcs = task_field(task, "calcs_reversed")
    return calcs[0] if calcs else None


def _attempts(task: Any) -> list[dict]:
    return list(task_field(task, "additional_json", "scf_attempts") or [])


def _total_scf(task: Any) -> int | None:
    if task is None:
        return None
    attempts = _attempts(task)
    if attempts:
        return int(sum(a["scf_iterations"] for a in attempts))
    steps = task_field(_calc(task), "output", "num_electronic_steps")
    return int(steps[0]) if steps else None


def _wall(task: Any) -> float | None:
    """VASP wall time of every attempt (OUTCAR "Elapsed time"), else the task's run stats."""
    if task is None:
        return None
    walls = [a.get("wall_s") for a in _attempts(task)]
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
    for i, attempt in enumerate(_attempts(task)):
        if i > 0:
            start = "ml" if events[i - 1].get("action") == "restored" else "atomic"
        last = i == len(_attempts(task)) - 1
        out.append(ArmAttempt(
            start=start,
            scf_iterations=attempt["scf_iterations"],
            energy_eV=task_field(task, "output", "energy") if last else None,
            converged=task_successful(task) if last else False,
            total_magnetization=task_magnetization(task) if last else None,
            wall_s=attempt.get("wall_s"),
            density_read_from_file=(start == "ml"),
            dir_name=task_field(task, "dir_name"),
            rejected=None if last else (events[i].get("reason") if i < len(events) else None),
        ))
    return out


def _ml_density_used(task: Any) -> bool | None:
    """True only if the accepted run started from the placed CHGCAR (ICHARG=1 as VASP echoed)."""
    if task is None:
        return None
    record = task_field(task, "additional_json", "ml_start") or {}
    icharg = task_field(_calc(task), "input", "parameters", "ICHARG")
    return record.get("status") in ACTIVE_STATUSES and icharg is not None and int(icharg) == 1


@job(output_schema=SavingsDocument)
def vasp_savings_document(
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
) -> SavingsDocument:
    """Savings document of one structure from the arms' outputs (None: arm did not finish)."""
    arms = {"baseline": baseline, "predict": prediction, "ml": ml, "oracle": oracle,
            "nscf_scf": nscf_scf, "nscf_ml": nscf_ml, "nscf_atomic": nscf_atomic}
    skipped = bool(task_field(prediction, "error") or task_field(prediction, "fallback"))
    missing = missing_arms(arms, requested or {}, prediction_skipped=skipped)
    record = task_field(ml, "additional_json", "ml_start") or {}
    fallback = record.get("fallback") or task_field(prediction, "fallback") or (
        f"prediction failed: {task_field(prediction, 'error')}" if task_field(prediction, "error") else None
    )
    base_calc = _calc(baseline)
    params = task_field(base_calc, "input", "parameters") or {}
    details = SavingsDetails(
        converged={k: task_successful(arms[k]) for k in ("baseline", "ml", "oracle")},
        total_magnetization={k: task_magnetization(arms[k]) for k in ("baseline", "ml", "oracle")},
        ml_attempts=_ml_attempts(ml) if ml is not None else [],
        model_version=task_field(prediction, "model_version"),
        nelmdl=params.get("NELMDL"),
        protocol={k: params.get(k) for k in PROTOCOL_KEYS if k in params} or None,
        dir_names={k: task_field(v, "dir_name") for k, v in arms.items()},
        input_structure=structure.as_dict(),
        predictor=task_field(prediction, "predictor"),
        nelect={"potcar": task_field(prediction, "nelect"),
                "predicted": task_field(prediction, "n_electrons_predicted")},
        valence_mismatch=task_field(prediction, "valence_mismatch") or {},
        wall_s_oracle=_wall(oracle),
    )
    return SavingsDocument(
        structure=label,
        formula=structure.composition.reduced_formula,
        n_atoms=len(structure),
        engine="vasp",
        scf_iterations={"baseline": _total_scf(baseline), "ml": _total_scf(ml),
                        "oracle": _total_scf(oracle)},
        energy_eV={"baseline": task_field(baseline, "output", "energy"),
                   "ml": task_field(ml, "output", "energy")},
        wall_s={"baseline": _wall(baseline), "ml": _wall(ml),
                "predict": task_field(prediction, "timings", "total_s")},
        ml_density_used=_ml_density_used(ml),
        fallback=fallback,
        band_gap_eV={"scf": task_field(nscf_scf, "output", "bandgap"),
                     "nscf_ml": task_field(nscf_ml, "output", "bandgap"),
                     "nscf_atomic": task_field(nscf_atomic, "output", "bandgap")},
        error=("arm(s) did not finish: " + ", ".join(missing)) if missing else None,
        details=details,
    )


@dataclass
class VaspComparisonMaker(Maker):
    """Baseline vs ML-started VASP static (optionally oracle and NSCF check) for one structure.

    Parameters
    ----------
    input_set_generator
        Static input set shared by every SCF arm (default: atomate2's StaticSetGenerator).
    nscf_input_set_generator
        Non-SCF input set shared by the three NSCF arms.
    oracle
        Add a static restarted from the baseline's converged CHGCAR (the ceiling).
    nscf
        Add band gaps from non-SCF runs (``nscf_mode``) on the converged, the predicted
        and the atomic densities.
    predictor, model_path, zval
        Passed to :class:`~mlcharge_workflows.engines.vasp.jobs.MLDensityMaker`.
    predict_manager_config
        ``manager_config`` of the prediction job, e.g. ``{"_fworker": "gpu"}``.
    spin
        Start for magnetic cells (see :class:`MLDensityMaker`): with the default
        ``"atomic"`` the ML arm of a magnetic cell runs from atoms and records
        ``fallback = "atomic_spin_start: ..."``.
    fallback_policy
        Tolerances for trusting the ML static against the baseline.
    """

    name: str = "vasp comparison"
    input_set_generator: VaspInputGenerator = field(default_factory=StaticSetGenerator)
    nscf_input_set_generator: VaspInputGenerator = field(default_factory=NonSCFSetGenerator)
    oracle: bool = False
    nscf: bool = False
    nscf_mode: str = "line"
    predictor: Any = "model"
    model_path: str | None = None
    zval: dict[str, float] | None = None
    max_ml_restarts: int = 1
    predict_manager_config: dict = field(default_factory=dict)
    spin: str | None = None
    fallback_policy: FallbackPolicy = field(default_factory=FallbackPolicy)

    def make(self, structure: Structure, label: str | None = None) -> Flow:
        """The comparison flow; its output is the :class:`SavingsDocument`."""
        label = label or structure.composition.reduced_formula
        gen = self.input_set_generator
        baseline = BaselineStaticMaker(input_set_generator=gen).make(structure)
        predict = MLDensityMaker(
            input_set_generator=gen, predictor=self.predictor, model_path=self.model_path,
            zval=self.zval, allow_failure=True, spin=self.spin,
        ).make(structure)
        if self.predict_manager_config:
            predict.update_config({"manager_config": dict(self.predict_manager_config)})
        ml = MLStaticMaker(
            input_set_generator=gen, density_maker=None, max_ml_restarts=self.max_ml_restarts,
            zval=self.zval, fallback_policy=self.fallback_policy,
        ).make(structure, ml_density=predict.output, reference=baseline.output)
        jobs = [baseline, predict, ml]
        outputs: dict[str, Any] = {}
        if self.oracle:
            oracle = MLStaticMaker(
                name="oracle static", input_set_generator=gen, density_maker=None,
                max_ml_restarts=self.max_ml_restarts, zval=self.zval,
            ).make(structure, ml_density=baseline.output.dir_name)
            jobs.append(oracle)
            outputs["oracle"] = oracle.output
        if self.nscf:
            ngen, mode = self.nscf_input_set_generator, self.nscf_mode
            scf_gap = MLNonSCFMaker(
                name=f"converged non-scf {mode}", input_set_generator=ngen, density_maker=None
            ).make(structure, mode=mode, ml_density=baseline.output.dir_name)
            ml_gap = MLNonSCFMaker(
                name=f"ml non-scf {mode}", input_set_generator=ngen, density_maker=None,
                zval=self.zval,
            ).make(structure, mode=mode, ml_density=predict.output)
            atomic_gap = AtomicNonSCFMaker(
                name=f"atomic non-scf {mode}", input_set_generator=ngen
            ).make(structure, mode=mode)
            jobs += [scf_gap, ml_gap, atomic_gap]
            outputs.update(nscf_scf=scf_gap.output, nscf_ml=ml_gap.output,
                           nscf_atomic=atomic_gap.output)
        requested = {"baseline": True, "predict": True, "ml": True, "oracle": self.oracle,
                     "nscf_scf": self.nscf, "nscf_ml": self.nscf, "nscf_atomic": self.nscf}
        doc = vasp_savings_document(
            label, structure, baseline.output, predict.output, ml.output,
            requested=requested, **outputs,
        )
        doc.name = "savings document"
        doc.update_config({"on_missing_references": OnMissing.NONE})
        return Flow([*jobs, doc], output=doc.output, name=f"{self.name} {label}")
