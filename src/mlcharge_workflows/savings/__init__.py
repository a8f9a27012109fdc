"""Baseline-vs-ML comparison flows, the savings record, fallback logic, report and plots.

Modules: :mod:`.schemas` (the public record, light to import), :mod:`.fallback`
(when an ML-started SCF is rerun from atoms), :mod:`.jobs` (predict / ML-started SCF /
non-SCF makers for QE), :mod:`.flows` (comparison flows and running them). Makers are
imported lazily from here so that reading records needs neither jobflow nor torch.
"""

from __future__ import annotations

from typing import Any

from mlcharge_workflows.savings.schemas import (
    RECORD_KEYS,
    SavingsDetails,
    SavingsDocument,
    SavingsRecord,
)

_LAZY = {
    "FallbackPolicy": "fallback",
    "QEPredictDensityMaker": "jobs",
    "MLQEStaticMaker": "jobs",
    "MLQENonSCFMaker": "jobs",
    "QEAtomicNonSCFMaker": "jobs",
    "QEComparisonMaker": "flows",
    "MLQEBandStructureMaker": "flows",
    "comparison_flow": "flows",
    "run_flow_collect": "flows",
    "savings_documents": "flows",
}

__all__ = ["RECORD_KEYS", "SavingsDetails", "SavingsDocument", "SavingsRecord", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"mlcharge_workflows.savings.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mlcharge_workflows.savings' has no attribute {name!r}")
