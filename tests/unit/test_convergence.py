"""Thresholds read from pw.x's accuracy history, and the two savings definitions."""

from __future__ import annotations

import math

import pytest

from mlcharge_workflows.convergence import (
    THRESHOLDS,
    drop_of_median,
    iterations_by_threshold,
    iterations_to,
    median_saving,
    savings_summary,
)
from mlcharge_workflows.units import RY_TO_EV


def test_first_iteration_strictly_below_threshold():
    history = [1e-3, 1e-6, 9.9e-7, 1e-9]
    assert iterations_to(history, 1e-6) == 3  # pw.x stops when accuracy < conv_thr
    assert iterations_to(history, 1e-2) == 1
    assert iterations_to(history, 1e-10) is None
    assert iterations_to([], 1e-6) is None


def test_a_converged_run_printed_at_its_threshold_reaches_it():
    """pw.x printed "2.0E-09" at the iteration it converged with conv_thr = 2e-9 (Fe3P,
    4 atoms, session 11): the protocol's row of the record must not lose that run."""
    history = [0.1, 6e-8, 1e-8, 2.0e-9]
    assert iterations_to(history, 2e-9) is None
    assert iterations_to(history, 2e-9, converged=True) == 4
    assert iterations_to(history, 1e-9, converged=True) is None  # tighter: not reached
    assert iterations_by_threshold(history, 4, converged=True)["protocol"] == 4


def test_per_atom_thresholds_scale_with_cell_and_mp_is_in_ry():
    by_name = {t.name: t for t in THRESHOLDS}
    assert by_name["protocol"].cell_ry(8) == pytest.approx(4e-9)
    assert by_name["qe_default"].cell_ry(8) == pytest.approx(1e-6)
    # MP's 5e-5 eV/atom is about 3.7e-6 Ry/atom.
    assert by_name["mp"].cell_ry(1) == pytest.approx(5e-5 / RY_TO_EV)
    assert 3.6e-6 < by_name["mp"].cell_ry(1) < 3.8e-6


def test_table_is_monotone_in_threshold():
    history = [10.0 ** (-k / 2) for k in range(2, 30)]
    table = iterations_by_threshold(history, n_atoms=4)
    ordered = sorted(THRESHOLDS, key=lambda t: -t.cell_ry(4))
    counts = [table[t.name] for t in ordered]
    assert counts == sorted(counts)
    assert table["qe_default"] < table["aiida_moderate"]


def test_two_definitions_differ_as_documented():
    base = [10, 20, 12]
    ml = [5, 19, 12]
    # per structure: 0.5, 0.05, 0.0 -> median 0.05
    assert median_saving(base, ml) == pytest.approx(0.05)
    # medians 12 -> 12: the drop of the median is 0
    assert drop_of_median(base, ml) == pytest.approx(0.0)
    summary = savings_summary(base + [None], ml + [3])
    assert summary["n"] == 3
    assert summary["faster"] == pytest.approx(2 / 3)
    assert summary["slower"] == 0
    assert summary["worst_slowdown"] == pytest.approx(0.0)
    empty = savings_summary([None], [None])
    assert empty["n"] == 0 and empty["median_saving"] is None
    assert not math.isnan(summary["median_saving"])
