"""SCF convergence thresholds of the field, and the iterations a run needs to reach each.

pw.x prints its "estimated scf accuracy" (Ry, per cell) after every SCF iteration and stops
at the first one below ``conv_thr``. One history of a run converged tightly therefore gives
the iterations the same run would have needed at any looser threshold: the first iteration
whose accuracy is below it. (The diagonalisation threshold of an iteration depends on the
previous accuracy, not on ``conv_thr``, so the history up to that point is the same; this
is checked against real runs in ``benchmarks/thresholds_check.py``.)

Savings are summarised in the two ways the field quotes them: the **median of the
per-structure savings** ``1 - ml/baseline``, and the **drop of the median**
``1 - median(ml)/median(baseline)`` (ChargE3Net's definition).

>>> history = [1e-2, 3e-4, 2e-6, 5e-8, 4e-10, 1e-11]
>>> iterations_to(history, 1e-6)
4
>>> iterations_to(history, 1e-12) is None
True
>>> table = iterations_by_threshold(history, n_atoms=2)
>>> table["qe_default"], table["protocol"]
(4, 5)
>>> round(drop_of_median([12, 10, 14], [6, 9, 7]), 3)
0.417

An SCF that has stopped converging (:class:`StallRule`) is stopped early instead of running
to ``electron_maxstep`` (the ML start's fallback then reruns it from atoms):

>>> rule = StallRule(window=3, factor=2.0, min_iterations=4)
>>> rule.stalled_at([1.0, 0.1, 0.05, 0.06, 0.05, 0.07, 0.06]) is None  # 0.05 -> 0.05
False
>>> rule.stalled_at([1.0, 0.1, 0.01, 1e-3, 1e-4]) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Literal

from mlcharge_workflows.units import EV_TO_RY


@dataclass(frozen=True)
class Threshold:
    """A convergence threshold on pw.x's estimated SCF accuracy (or VASP's energy change).

    Attributes
    ----------
    name
        Key used in records and reports.
    value
        The threshold in ``unit`` (Ry or eV), per ``per`` (cell or atom).
    source
        Who uses it.
    """

    name: str
    value: float
    unit: Literal["Ry", "eV"]
    per: Literal["cell", "atom"]
    source: str

    def cell_ry(self, n_atoms: int) -> float:
        """The threshold for a whole cell of ``n_atoms`` atoms, in Ry."""
        value = self.value * (EV_TO_RY if self.unit == "eV" else 1.0)
        return value * (n_atoms if self.per == "atom" else 1)


#: The thresholds reported, loosest convention first.
THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("qe_default", 1e-6, "Ry", "cell", "pw.x default conv_thr"),
    Threshold("mp", 5e-5, "eV", "atom", "Materials Project EDIFF (ChargE3Net's anchor)"),
    Threshold("quacc", 1e-8, "Ry", "cell", "quacc espresso recipes"),
    Threshold("aiida_fast", 4e-10, "Ry", "atom", "aiida-quantumespresso protocol 'fast'"),
    Threshold("protocol", 5e-10, "Ry", "atom", "this package's QEProtocol"),
    Threshold("aiida_moderate", 2e-10, "Ry", "atom", "aiida-quantumespresso protocol 'moderate'"),
)


#: pw.x prints small accuracies with two significant digits ("2.0E-09"): a run that
#: converged at ``conv_thr = 2e-9`` may show 2.0E-09 last. A converged history's last value
#: within this factor of a threshold counts as below it.
PRINT_ROUNDING = 1.05


def iterations_to(history_ry: Sequence[float], threshold_ry: float, converged: bool = False) -> int | None:
    """1-based index of the first iteration with accuracy below ``threshold_ry``.

    ``None`` when the history never gets there (the run stopped earlier or diverged).
    ``converged``: the run converged at its last iteration, so a last value printed as
    (nearly) the threshold itself counts (:data:`PRINT_ROUNDING`).

    >>> iterations_to([1e-3, 2e-8, 2.0e-9], 2e-9), iterations_to([1e-3, 2e-8, 2.0e-9], 2e-9, converged=True)
    (None, 3)
    """
    for i, acc in enumerate(history_ry, start=1):
        if acc < threshold_ry:
            return i
    if converged and history_ry and history_ry[-1] <= threshold_ry * PRINT_ROUNDING:
        return len(history_ry)
    return None


def iterations_by_threshold(
    history_ry: Sequence[float],
    n_atoms: int,
    thresholds: Sequence[Threshold] = THRESHOLDS,
    converged: bool = False,
) -> dict[str, int | None]:
    """Iterations to reach each threshold, read from one accuracy history (Ry per cell)."""
    return {t.name: iterations_to(history_ry, t.cell_ry(n_atoms), converged) for t in thresholds}


@dataclass(frozen=True)
class StallRule:
    """When an SCF counts as stalled: its best accuracy has not improved ``factor``-fold in
    the last ``window`` iterations, checked from iteration ``min_iterations`` on.

    The defaults are calibrated on the SCF histories of the realistic benchmark set
    (``benchmarks/stall_rule.py``, docs/benchmarks.md): they stop the ML starts that never
    converge (a 2-atom CoN stuck at 2.6 μB, 3e-7 Ry, for 70 iterations) after 30-40
    iterations, and none of the runs that converge after a long plateau (a Ni3BN4 cell sits
    at 4e-3 Ry for 20 iterations and at 1.5e-6 Ry for 15 before it converges in 83).

    Parameters
    ----------
    window
        Iterations without a ``factor``-fold new best before the SCF counts as stalled.
    factor
        Improvement of the best accuracy that counts as progress (> 1).
    min_iterations
        No SCF counts as stalled before this many iterations.
    """

    window: int = 30
    factor: float = 2.0
    min_iterations: int = 30

    def __post_init__(self) -> None:
        if self.window < 1 or self.factor <= 1.0 or self.min_iterations < 1:
            raise ValueError(
                f"StallRule needs window >= 1, factor > 1 and min_iterations >= 1, got "
                f"window={self.window}, factor={self.factor}, min_iterations={self.min_iterations}"
            )

    def stalled_at(self, history: Sequence[float]) -> int | None:
        """First iteration (1-based) at which ``history`` (accuracy per iteration, any unit
        where smaller is better) counts as stalled; None if it never does."""
        for i in range(max(self.window + 1, self.min_iterations), len(history) + 1):
            best_before = min(history[: i - self.window])  # best before the last window
            if min(history[i - self.window: i]) > best_before / self.factor:
                return i
        return None

    def describe(self, iteration: int, history: Sequence[float], quantity: str = "accuracy") -> str:
        """Why the SCF counts as stalled at ``iteration`` (for records and logs);
        ``quantity`` names what ``history`` holds."""
        best = min(history[:iteration])
        return (
            f"the SCF stalled: no {self.factor:g}-fold improvement of its best {quantity} "
            f"({best:.2e}) in the last {self.window} iterations, stopped at iteration {iteration}"
        )


#: Two converged SCF runs of the same solution agree to about the convergence threshold;
#: their energies count as equal within this many thresholds, and within at least
#: :data:`ENERGY_AGREEMENT_FLOOR_EV` per atom (the realistic set's arms agree to 2.3e-7 eV
#: per cell at the protocol's threshold; distinct solutions differ by 1e-4 eV and more).
ENERGY_AGREEMENT_THRESHOLDS = 10.0
ENERGY_AGREEMENT_FLOOR_EV = 1e-5


def energy_tolerance_eV(protocol: dict | None, n_atoms: int) -> float:
    """Largest energy difference (eV per cell) between arms that still counts as the same
    SCF solution, from the run's threshold: QE ``conv_thr_per_atom`` (Ry) or VASP ``EDIFF``."""
    per_cell = 0.0
    if protocol:
        if protocol.get("conv_thr_per_atom") is not None:
            per_cell = float(protocol["conv_thr_per_atom"]) / EV_TO_RY * n_atoms
        elif protocol.get("EDIFF") is not None:
            per_cell = float(protocol["EDIFF"])
    return max(ENERGY_AGREEMENT_THRESHOLDS * per_cell, ENERGY_AGREEMENT_FLOOR_EV * max(n_atoms, 1))


def energy_agreement(energies: dict[str, float | None], tolerance_eV: float) -> dict:
    """Whether the ML and oracle arms converged to the baseline's energy (same SCF solution).

    Returns ``{"tolerance_eV", "differences_eV": {arm: E_arm - E_baseline}, "verdict"}``, the
    verdict ``"agree"``, ``"baseline_higher"`` (every arm that differs lies lower: the run
    from atoms converged to a higher-energy solution, e.g. an eigenstate Davidson missed),
    ``"baseline_lower"`` or ``"mixed"``; ``None`` without a baseline energy and another arm's.

    >>> energy_agreement({"baseline": -262.4168, "ml": -262.4174, "oracle": -262.4174}, 2e-5)["verdict"]
    'baseline_higher'
    """
    base = energies.get("baseline")
    diffs = {arm: e - base for arm, e in energies.items()
             if arm != "baseline" and e is not None and base is not None}
    if not diffs:
        return {"tolerance_eV": tolerance_eV, "differences_eV": diffs, "verdict": None}
    off = [d for d in diffs.values() if abs(d) > tolerance_eV]
    verdict = ("agree" if not off else "baseline_higher" if all(d < 0 for d in off)
               else "baseline_lower" if all(d > 0 for d in off) else "mixed")
    return {"tolerance_eV": tolerance_eV, "differences_eV": diffs, "verdict": verdict}


def per_structure_savings(baseline: Sequence[int], ml: Sequence[int]) -> list[float]:
    """``1 - ml/baseline`` for each structure (pairs with a missing or zero baseline dropped)."""
    return [1.0 - m / b for b, m in zip(baseline, ml, strict=True) if b and m is not None]


def median_saving(baseline: Sequence[int], ml: Sequence[int]) -> float | None:
    """Median over structures of ``1 - ml/baseline``."""
    savings = per_structure_savings(baseline, ml)
    return median(savings) if savings else None


def drop_of_median(baseline: Sequence[int], ml: Sequence[int]) -> float | None:
    """``1 - median(ml)/median(baseline)`` (ChargE3Net's definition), over complete pairs."""
    pairs = [(b, m) for b, m in zip(baseline, ml, strict=True) if b and m is not None]
    if not pairs:
        return None
    return 1.0 - median(m for _, m in pairs) / median(b for b, _ in pairs)


def savings_summary(baseline: Sequence[int | None], ml: Sequence[int | None]) -> dict[str, float | int | None]:
    """Both definitions side by side, with the share of structures faster and slower."""
    pairs = [(b, m) for b, m in zip(baseline, ml, strict=True) if b and m is not None]
    n = len(pairs)
    b_list = [b for b, _ in pairs]
    m_list = [m for _, m in pairs]
    return {
        "n": n,
        "median_baseline": median(b_list) if n else None,
        "median_ml": median(m_list) if n else None,
        "median_saving": median_saving(b_list, m_list),
        "drop_of_median": drop_of_median(b_list, m_list),
        "faster": sum(m < b for b, m in pairs) / n if n else None,
        "slower": sum(m > b for b, m in pairs) / n if n else None,
        "worst_slowdown": max((m / b - 1.0 for b, m in pairs), default=None),
    }
