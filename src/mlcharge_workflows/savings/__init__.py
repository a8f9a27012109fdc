"""The savings report: tables, plots and the HTML report of the savings documents.

Modules: :mod:`.report` (read the store, one table and one HTML page), :mod:`.plots`.

The comparison itself lives below: the record and the fallback policy in
:mod:`mlcharge_workflows.common`, the Makers in :mod:`mlcharge_workflows.engines.qe`
and :mod:`mlcharge_workflows.engines.vasp`. Their old import paths
(``savings.schemas``, ``savings.fallback``, ``savings.jobs``, ``savings.flows`` and this
package) still resolve, lazily, through :data:`MOVED`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: Old name -> module that holds it now.
MOVED: dict[str, str] = {
    **dict.fromkeys(
        ["RECORD_KEYS", "RECORD_FORMAT_VERSION", "ArmAttempt", "SavingsDetails", "SavingsDocument",
         "SavingsRecord", "PredictionDocument", "error_record", "missing_arms"],
        "mlcharge_workflows.common.schemas"),
    **dict.fromkeys(
        ["FallbackPolicy", "FallbackOutcome", "RunSummary", "run_with_fallback", "UNSUPPORTED",
         "PREDICTION_FAILED", "ATOMIC_SPIN_START", "NOT_CONVERGED", "MAGNETIZATION", "ENERGY",
         "NOT_READ", "ML_RUN_FAILED"],
        "mlcharge_workflows.common.fallback"),
    **dict.fromkeys(["SAVINGS_JOB_NAME", "savings_document"], "mlcharge_workflows.common.documents"),
    **dict.fromkeys(["run_flow_collect", "save_to_store", "save_record_only", "savings_documents"],
                    "mlcharge_workflows.common.store"),
    **dict.fromkeys(["QEPredictDensityMaker", "MLQEStaticMaker", "MLQENonSCFMaker",
                     "QEAtomicNonSCFMaker", "PREDICTED_FILE"], "mlcharge_workflows.engines.qe.jobs"),
    **dict.fromkeys(["grid_to_data", "grid_from_data", "predict_grid", "prediction_density",
                     "unsupported_elements", "model_version"], "mlcharge_workflows.engines.qe.density"),
    "MLStaticDocument": "mlcharge_workflows.engines.qe.schemas",
    "default_nbnd": "mlcharge_workflows.engines.qe.sets",
    **dict.fromkeys(["QEComparisonMaker", "MLQEBandStructureMaker"],
                    "mlcharge_workflows.engines.qe.flows"),
    "comparison_flow": "mlcharge_workflows.catalogue",
    "project_job_store": "mlcharge_workflows.submit.config",
}

__all__ = sorted(MOVED)


def moved(name: str, where: str) -> Any:
    """The object an old ``savings`` path named (``where``: the old module, for errors)."""
    if name not in MOVED:
        raise AttributeError(f"module {where!r} has no attribute {name!r}")
    return getattr(import_module(MOVED[name]), name)


def __getattr__(name: str) -> Any:
    return moved(name, __name__)
