"""When an ML-started SCF is rerun from atoms, and what is recorded (no pw.x: callables)."""

from __future__ import annotations

import pytest

from mlcharge_workflows.common.fallback import (
    FallbackPolicy,
    RunSummary,
    run_with_fallback,
)


def task(**kw):
    base = {"converged": True, "scf_iterations": 5, "energy_eV": -100.0,
            "total_magnetization": 0.0, "density_read_from_file": True}
    return {**base, **kw}


class Runs:
    """Records which runs happened."""

    def __init__(self, ml=None, atomic=None, ml_error=None):
        self.calls: list[str] = []
        self._ml, self._atomic, self._ml_error = ml, atomic or task(density_read_from_file=False), ml_error

    def ml(self):
        self.calls.append("ml")
        if self._ml_error:
            raise self._ml_error
        return self._ml

    def atomic(self):
        self.calls.append("atomic")
        return self._atomic


def test_trusted_ml_run_is_accepted_without_rerun() -> None:
    runs = Runs(ml=task(energy_eV=-100.00001))
    out = run_with_fallback(runs.ml, runs.atomic, 2, reference_energy_eV=-100.0,
                            reference_magnetization=0.0)
    assert runs.calls == ["ml"]
    assert out.ml_density_used and out.fallback is None and out.accepted_start == "ml"


def test_unconverged_ml_run_is_rerun_from_atoms_and_kept() -> None:
    bad = task(converged=False, scf_iterations=None)
    runs = Runs(ml=bad)
    out = run_with_fallback(runs.ml, runs.atomic, 2)
    assert runs.calls == ["ml", "atomic"]
    assert out.fallback.startswith("not_converged")
    assert not out.ml_density_used and out.accepted is runs._atomic
    assert out.attempts[0] == ("ml", bad, out.fallback)  # no result lost


@pytest.mark.parametrize(
    ("ml_moment", "ref", "pred", "rerun"),
    [
        (0.0, 0.6, None, True),  # lost the moment vs the baseline
        (0.75, 0.6, None, True),  # same state, but 0.15 μB/cell off the baseline
        (0.65, 0.6, None, False),  # within 0.1 μB/cell
        (0.0, 0.0, 2.0, False),  # the baseline wins over the prediction
        # no baseline: only a different state than the predicted one counts
        (0.0, None, 3.0, True),  # collapsed to non-magnetic
        (-0.9, None, 3.0, True),  # flipped
        (1.2, None, 0.0, True),  # magnetic where none was predicted
        (0.94, None, 3.04, False),  # fcc Ni: the predicted moment is only a start
    ],
)
def test_magnetic_state_check(ml_moment, ref, pred, rerun) -> None:
    runs = Runs(ml=task(total_magnetization=ml_moment))
    out = run_with_fallback(runs.ml, runs.atomic, 2, reference_magnetization=ref,
                            predicted_magnetization=pred)
    assert (runs.calls == ["ml", "atomic"]) is rerun
    assert (out.fallback or "").startswith("magnetization_mismatch") is rerun


def test_energy_check_scales_with_atoms() -> None:
    policy = FallbackPolicy(energy_tol_eV_per_atom=1e-3)
    run = RunSummary(converged=True, energy_eV=-100.005)
    assert policy.check(run, n_atoms=2, reference_energy_eV=-100.0).startswith("energy_mismatch")
    assert policy.check(run, n_atoms=8, reference_energy_eV=-100.0) is None
    assert policy.check(run, n_atoms=2) is None  # nothing expected, nothing to check


def test_unread_density_is_never_counted_as_ml() -> None:
    runs = Runs(ml=task(density_read_from_file=False))
    out = run_with_fallback(runs.ml, runs.atomic, 2, reference_energy_eV=-100.0)
    assert runs.calls == ["ml"]  # a valid run from atoms: kept, not repeated
    assert not out.ml_density_used and out.accepted_start == "atomic"
    assert out.fallback.startswith("ml_density_not_read")


def test_crashed_ml_run_falls_back() -> None:
    runs = Runs(ml_error=RuntimeError("pw.x exploded"))
    out = run_with_fallback(runs.ml, runs.atomic, 2)
    assert runs.calls == ["ml", "atomic"]
    assert "pw.x exploded" in out.fallback and out.attempts[0][1] is None
    with pytest.raises(RuntimeError, match="exploded"):
        run_with_fallback(Runs(ml_error=RuntimeError("exploded")).ml, runs.atomic, 2,
                          FallbackPolicy(rerun_on_failure=False))


def test_no_prediction_runs_from_atoms_with_the_reason() -> None:
    runs = Runs()
    out = run_with_fallback(None, runs.atomic, 2, skip_reason="unsupported_elements: Al")
    assert runs.calls == ["atomic"]
    assert out.fallback == "unsupported_elements: Al" and not out.ml_density_used


def test_run_summary_reads_task_documents_and_aliases() -> None:
    s = RunSummary.from_task({"converged": True, "magnetisation": {"total": 1.5}})
    assert s.total_magnetization == 1.5
    with pytest.raises(ValueError, match="positive"):
        FallbackPolicy(magnetization_tol=0)


def test_unconverged_run_names_the_iterations_it_ran() -> None:
    # pw.x prints no "convergence has been achieved in N": the accuracy history counts them
    s = RunSummary.from_task({"converged": False, "scf_iterations": None,
                              "scf_accuracy_Ry": [1e-2] * 100})
    assert s.scf_iterations == 100
    assert FallbackPolicy().check(s, n_atoms=2).endswith("did not converge in 100 iterations")


def test_failed_rerun_keeps_the_ml_attempt() -> None:
    bad = task(converged=False)

    def atomic_fails():
        raise RuntimeError("pw.x did not converge either")

    out = run_with_fallback(lambda: bad, atomic_fails, 2)
    assert out.accepted is None and not out.ml_density_used
    assert out.attempts[0] == ("ml", bad, out.attempts[0][2])
    assert "atomic rerun failed: RuntimeError" in out.fallback
    with pytest.raises(RuntimeError, match="either"):  # nothing to keep without an ML run
        run_with_fallback(None, atomic_fails, 2)


def test_another_magnetic_order_with_the_same_total_moment_is_caught() -> None:
    from mlcharge_workflows.common.fallback import FallbackPolicy, RunSummary, run_with_fallback

    policy = FallbackPolicy()
    # the baseline converged antiferromagnetic (M = 0, |m| = 4.4); the ML start non-magnetic
    ml = {"converged": True, "energy_eV": -100.0, "total_magnetization": 0.0,
          "absolute_magnetization": 0.02, "density_read_from_file": True, "scf_iterations": 7}
    summary = RunSummary.from_task(ml)
    assert summary.absolute_magnetization == 0.02
    reason = policy.check(summary, 2, reference_energy_eV=-100.0, reference_magnetization=0.0,
                          reference_absolute_magnetization=4.4)
    assert reason is not None and reason.startswith("magnetization_mismatch")
    assert "absolute magnetization" in reason
    # the same order is accepted
    assert policy.check(summary, 2, reference_energy_eV=-100.0, reference_magnetization=0.0,
                        reference_absolute_magnetization=0.3) is None
    atomic = {**ml, "absolute_magnetization": 4.4, "density_read_from_file": None}
    out = run_with_fallback(lambda: ml, lambda: atomic, 2, policy, reference_energy_eV=-100.0,
                            reference_magnetization=0.0, reference_absolute_magnetization=4.4)
    assert out.accepted is atomic and "absolute magnetization" in out.fallback
