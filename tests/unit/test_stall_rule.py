"""The stall rule that stops an ML-started SCF that no longer converges (no pw.x)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlcharge_workflows.common.fallback import FallbackPolicy, RunSummary, run_with_fallback
from mlcharge_workflows.convergence import StallRule

HISTORIES = Path(__file__).resolve().parents[2] / "benchmarks/data/scf_histories_20261207.json"


def _runs() -> list[dict]:
    return json.loads(HISTORIES.read_text())["runs"]


def test_plateau_is_stalled_and_steady_convergence_is_not() -> None:
    rule = StallRule(window=5, factor=2.0, min_iterations=8)
    steady = [10.0 ** -k for k in range(12)]
    assert rule.stalled_at(steady) is None
    plateau = [1.0, 0.1, 0.01] + [0.008, 0.009, 0.007, 0.0095, 0.0085] * 3
    # iteration 8: the best of iterations 4-8 (0.007) has not halved the best before (0.01)
    assert rule.stalled_at(plateau) == 8
    assert rule.stalled_at(plateau[:7]) is None  # not before min_iterations
    assert StallRule(window=5, factor=1.2, min_iterations=8).stalled_at(plateau) == 9
    assert "no 2-fold improvement" in rule.describe(8, plateau)


def test_nothing_is_stalled_before_min_iterations() -> None:
    flat = [1.0] * 40
    assert StallRule(window=3, factor=2.0, min_iterations=25).stalled_at(flat) == 25
    assert StallRule(window=3, factor=2.0, min_iterations=2).stalled_at(flat) == 4


@pytest.mark.parametrize("kw", [{"window": 0}, {"factor": 1.0}, {"min_iterations": 0}])
def test_bad_rules_are_refused(kw) -> None:
    with pytest.raises(ValueError, match="StallRule needs"):
        StallRule(**kw)
    with pytest.raises(ValueError, match="StallRule needs"):
        FallbackPolicy(**{f"stall_{k}": v for k, v in kw.items()})


def test_default_rule_on_the_benchmark_histories() -> None:
    """The calibration of docs/benchmarks.md: every ML start that never converged is
    stopped, no run that converged is, however long its plateaus (Ni3BN4)."""
    rule = StallRule()
    runs = _runs()
    assert len(runs) > 100
    stopped_converging = [r for r in runs if r["converged"]
                          and (rule.stalled_at(r["history_Ry"]) or len(r["history_Ry"])) < len(r["history_Ry"])]
    assert stopped_converging == []
    never = [r for r in runs if not r["converged"] and r["arm"] != "atomic"]
    # Al3Fe (oC8) converges from no start, atoms included
    assert {r["structure"].split("-")[1] for r in never} == {"CoN", "FeCoH2", "Al3Fe"}
    for r in never:
        at = rule.stalled_at(r["history_Ry"])
        assert at is not None and at <= 60, (r["structure"], r["arm"], at)
    ni3bn4 = [r for r in runs if "Ni3BN4" in r["structure"] and r["arm"] == "atomic"]
    assert ni3bn4 and all(len(r["history_Ry"]) > 80 for r in ni3bn4)  # the long plateaus are there


def test_a_stalled_ml_run_is_rerun_from_atoms_with_its_reason() -> None:
    stalled = {"converged": False, "scf_iterations": None, "scf_accuracy_Ry": [1e-3] * 41,
               "stall_reason": "the SCF stalled: ...", "density_read_from_file": True}
    atomic = {"converged": True, "scf_iterations": 30, "energy_eV": -1.0, "density_read_from_file": False}
    out = run_with_fallback(lambda: stalled, lambda: atomic, 2)
    assert out.fallback == "stalled: the SCF stalled: ..."
    assert [a[0] for a in out.attempts] == ["ml", "atomic"] and out.attempts[0][1] is stalled
    assert RunSummary.from_task(stalled).scf_iterations == 41
    assert not out.ml_density_used


def test_policy_without_a_stall_rule() -> None:
    assert FallbackPolicy(stall_window=None).stall_rule() is None
    assert FallbackPolicy().stall_rule() == StallRule()
