"""When to distrust an ML-started SCF, and the rerun-from-atoms logic (engine-agnostic).

An ML-started SCF is rerun from atoms when it

* did not converge, or stalled: its accuracy stopped improving (a
  :class:`~mlcharge_workflows.convergence.StallRule`; the engine stops such a run early
  instead of letting it run to its iteration limit),
* landed in a different magnetic state: ``|ΔM| > magnetization_tol`` μB/cell against the
  baseline when known; without a baseline, against the predicted density's moment, where
  only a different *state* counts (magnetic vs non-magnetic, or the sign of the moment
  flipped): a predicted moment is a starting guess, not a converged value (the interim
  model predicts 3.0 μB for fcc Ni, which converges to 0.94 μB from either start),
* landed in another magnetic order with the same total moment (antiferromagnetic vs
  non-magnetic): ``|Δ∫|m|| > absolute_magnetization_tol`` against the baseline,
* landed at a different energy than expected: ``|ΔE| > energy_tol_eV_per_atom * n_atoms``
  against the baseline (or a given expected energy).

A run whose engine did not read the predicted density is a run from atoms: it is kept,
but never counted as ML-initialised. Every attempt is returned, so no result is lost.

>>> policy = FallbackPolicy()
>>> policy.check(RunSummary(converged=False, scf_iterations=100), n_atoms=2)
'not_converged: the ML-started SCF did not converge in 100 iterations'
>>> policy.check(RunSummary(converged=False, scf_iterations=41, stall_reason="the SCF stalled"),
...              n_atoms=2)
'stalled: the SCF stalled'
>>> policy.check(RunSummary(converged=True, energy_eV=-10.0, total_magnetization=0.0),
...              n_atoms=2, reference_magnetization=0.6) is not None
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlcharge_workflows.common.schemas import get_field
from mlcharge_workflows.convergence import StallRule

#: fallback reason prefixes (the part before ':' in the record's "fallback" field)
UNSUPPORTED = "unsupported_elements"
PREDICTION_FAILED = "prediction_failed"
#: The model handed back the atomic superposition (magnetic cells, ``spin_start="atomic"``):
#: such a start is pw.x's own, so the ML arm runs from atoms and is not counted as ML.
ATOMIC_SPIN_START = "atomic_spin_start"
NOT_CONVERGED = "not_converged"
#: The ML-started SCF stopped improving and was stopped early (a StallRule).
STALLED = "stalled"
MAGNETIZATION = "magnetization_mismatch"
ENERGY = "energy_mismatch"
NOT_READ = "ml_density_not_read"
ML_RUN_FAILED = "ml_run_failed"


@dataclass
class RunSummary:
    """What the fallback check needs to know about one SCF run (units: eV, μB per cell)."""

    converged: bool | None
    scf_iterations: int | None = None
    energy_eV: float | None = None
    total_magnetization: float | None = None
    density_read_from_file: bool | None = None
    absolute_magnetization: float | None = None
    stall_reason: str | None = None

    @classmethod
    def from_task(cls, task: Any) -> RunSummary:
        """Build from a task document (attributes or keys of the same names).

        ``total_magnetization`` is also looked up as ``magnetization`` / ``magnetisation``
        (a number, or a dict with a ``total`` entry).
        """

        def get(name: str) -> Any:
            return get_field(task, name)

        mag = get("total_magnetization")
        for alias in ("magnetization", "magnetisation"):
            if mag is None:
                mag = get(alias)
        if isinstance(mag, dict):
            mag = mag.get("total", mag.get("total_magnetization"))
        elif mag is not None and not isinstance(mag, (int, float)):
            mag = getattr(mag, "total", getattr(mag, "total_magnetization", None))
        iterations = get("scf_iterations")
        history = get("scf_accuracy_Ry")  # QE: one entry per iteration run, converged or not
        if iterations is None and isinstance(history, (list, tuple)) and history:
            iterations = len(history)
        return cls(
            converged=get("converged"),
            scf_iterations=iterations,
            energy_eV=get("energy_eV"),
            total_magnetization=None if mag is None else float(mag),
            density_read_from_file=get("density_read_from_file"),
            absolute_magnetization=get("absolute_magnetization"),
            stall_reason=get("stall_reason"),
        )


@dataclass
class FallbackPolicy:
    """Tolerances that decide whether an ML-started SCF is trusted.

    Parameters
    ----------
    magnetization_tol
        Largest accepted ``|M_ml - M_ref|`` in μB per cell.
    energy_tol_eV_per_atom
        Largest accepted ``|E_ml - E_ref|`` per atom (eV). Two converged SCF runs of
        the same state agree far better (≈ conv_thr); distinct SCF solutions (e.g.
        magnetic vs non-magnetic Ni, 68 meV/cell) differ far more.
    rerun_on_failure
        Rerun from atoms when the ML-started run crashes.
    absolute_magnetization_tol
        Largest accepted ``|∫|m_ml| - ∫|m_ref||`` in μB per cell: an antiferromagnetic and a
        non-magnetic state have the same total moment (0) and differ here by several μB.
    stall_window, stall_factor, stall_min_iterations
        The :class:`~mlcharge_workflows.convergence.StallRule` under which an ML-started
        pw.x SCF that no longer converges is stopped early (and rerun from atoms);
        ``stall_window=None`` lets it run to ``electron_maxstep``. VASP runs stop at
        ``NELM`` under custodian (:mod:`mlcharge_workflows.engines.vasp.handlers`).
    """

    magnetization_tol: float = 0.1
    energy_tol_eV_per_atom: float = 1e-3
    absolute_magnetization_tol: float = 0.5
    rerun_on_failure: bool = True
    stall_window: int | None = StallRule.window
    stall_factor: float = StallRule.factor
    stall_min_iterations: int = StallRule.min_iterations

    def __post_init__(self) -> None:
        if self.magnetization_tol <= 0 or self.energy_tol_eV_per_atom <= 0:
            raise ValueError(
                f"fallback tolerances must be positive, got magnetization_tol="
                f"{self.magnetization_tol}, energy_tol_eV_per_atom={self.energy_tol_eV_per_atom}"
            )
        self.stall_rule()  # a bad rule is refused here, not in the middle of a run

    def stall_rule(self) -> StallRule | None:
        """The rule that stops a stalled ML-started SCF (None: no early stop)."""
        if self.stall_window is None:
            return None
        return StallRule(self.stall_window, self.stall_factor, self.stall_min_iterations)

    def check(
        self,
        run: RunSummary,
        n_atoms: int,
        reference_energy_eV: float | None = None,
        reference_magnetization: float | None = None,
        predicted_magnetization: float | None = None,
        reference_absolute_magnetization: float | None = None,
    ) -> str | None:
        """Return why an ML-started run must be rerun from atoms, or None to accept it.

        ``reference_*`` come from the baseline (atomic start) when it is known;
        ``predicted_magnetization`` (the predicted density's moment) is used only when
        there is no reference moment, and only to detect a different state
        (magnetic vs non-magnetic, or a flipped moment).
        """
        if not run.converged:
            if run.stall_reason:
                return f"{STALLED}: {run.stall_reason}"
            n = "?" if run.scf_iterations is None else run.scf_iterations
            return f"{NOT_CONVERGED}: the ML-started SCF did not converge in {n} iterations"
        m, tol = run.total_magnetization, self.magnetization_tol
        if m is not None and reference_magnetization is not None:
            if abs(m - reference_magnetization) > tol:
                return (
                    f"{MAGNETIZATION}: total magnetization {m:.3f} μB/cell vs "
                    f"{reference_magnetization:.3f} from the baseline (|ΔM| > {tol})"
                )
        elif m is not None and predicted_magnetization is not None:
            p = predicted_magnetization
            if (abs(p) > tol) != (abs(m) > tol) or (abs(p) > tol and p * m < 0):
                return (
                    f"{MAGNETIZATION}: total magnetization {m:.3f} μB/cell, a different state "
                    f"from the predicted {p:.3f} (magnetic threshold {tol} μB/cell)"
                )
        a, a_ref = run.absolute_magnetization, reference_absolute_magnetization
        if a is not None and a_ref is not None and abs(a - a_ref) > self.absolute_magnetization_tol:
            return (
                f"{MAGNETIZATION}: absolute magnetization {a:.3f} μB/cell vs {a_ref:.3f} from "
                f"the baseline (another magnetic order; tolerance "
                f"{self.absolute_magnetization_tol} μB/cell)"
            )
        if reference_energy_eV is not None and run.energy_eV is not None:
            de = run.energy_eV - reference_energy_eV
            tol = self.energy_tol_eV_per_atom * max(n_atoms, 1)
            if abs(de) > tol:
                return (
                    f"{ENERGY}: energy differs from the expected one by {de:+.4f} eV "
                    f"(tolerance {tol:.4f} eV)"
                )
        return None


@dataclass
class FallbackOutcome:
    """Result of :func:`run_with_fallback`.

    ``attempts`` holds every run in order as ``(start, task_or_None, rejected_reason)``
    with start ``"ml"`` or ``"atomic"``; ``accepted`` is the task whose results count
    (None when the rerun from atoms failed too: the ML attempt is still in ``attempts``).
    """

    accepted: Any
    accepted_start: str
    ml_density_used: bool
    fallback: str | None
    attempts: list[tuple[str, Any, str | None]]


def run_with_fallback(
    run_ml: Callable[[], Any] | None,
    run_atomic: Callable[[], Any],
    n_atoms: int,
    policy: FallbackPolicy | None = None,
    reference_energy_eV: float | None = None,
    reference_magnetization: float | None = None,
    predicted_magnetization: float | None = None,
    skip_reason: str | None = None,
    reference_absolute_magnetization: float | None = None,
) -> FallbackOutcome:
    """Run the ML-started SCF and, if it is not trusted, the same SCF from atoms.

    Parameters
    ----------
    run_ml, run_atomic
        Callables running one SCF and returning its task document. ``run_ml`` is None
        when there is no predicted density (then ``skip_reason`` says why).
    skip_reason
        Fallback reason recorded when ``run_ml`` is None (e.g. unsupported elements).

    Returns
    -------
    FallbackOutcome
        The accepted task, whether it really started from the ML density, the
        fallback reason (None if the ML run was accepted) and every attempt.
    """
    policy = policy or FallbackPolicy()
    attempts: list[tuple[str, Any, str | None]] = []
    if run_ml is None:
        task = run_atomic()
        attempts.append(("atomic", task, None))
        return FallbackOutcome(task, "atomic", False, skip_reason or "no_prediction", attempts)

    try:
        ml_task = run_ml()
    except Exception as exc:  # a crashed ML start must not lose the structure
        if not policy.rerun_on_failure:
            raise
        reason = f"{ML_RUN_FAILED}: {type(exc).__name__}: {exc}"
        attempts.append(("ml", None, reason))
        return _rerun(run_atomic, reason, attempts)

    summary = RunSummary.from_task(ml_task)
    if summary.density_read_from_file is False:
        # pw.x silently started from atoms: a valid atomic-start run, never counted as ML
        attempts.append(("ml", ml_task, None))
        reason = f"{NOT_READ}: the engine did not read the predicted density (started from atoms)"
        if policy.check(summary, n_atoms, reference_energy_eV, reference_magnetization,
                        reference_absolute_magnetization=reference_absolute_magnetization) is None:
            return FallbackOutcome(ml_task, "atomic", False, reason, attempts)
        attempts[-1] = ("ml", ml_task, reason)
        return _rerun(run_atomic, reason, attempts)

    reason = policy.check(
        summary, n_atoms, reference_energy_eV, reference_magnetization, predicted_magnetization,
        reference_absolute_magnetization=reference_absolute_magnetization,
    )
    if reason is None:
        attempts.append(("ml", ml_task, None))
        return FallbackOutcome(ml_task, "ml", True, None, attempts)
    attempts.append(("ml", ml_task, reason))
    return _rerun(run_atomic, reason, attempts)


def _rerun(
    run_atomic: Callable[[], Any], reason: str, attempts: list[tuple[str, Any, str | None]]
) -> FallbackOutcome:
    """The rerun from atoms; if it fails too, the ML attempt is kept (``accepted`` None)."""
    try:
        task = run_atomic()
    except Exception as exc:
        if all(t is None for _, t, _ in attempts):
            raise
        failed = f"atomic rerun failed: {type(exc).__name__}: {exc}"
        attempts.append(("atomic", None, failed))
        return FallbackOutcome(None, "atomic", False, f"{reason}; {failed}", attempts)
    attempts.append(("atomic", task, None))
    return FallbackOutcome(task, "atomic", False, reason, attempts)
