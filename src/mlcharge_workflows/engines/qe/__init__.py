"""Quantum ESPRESSO (pw.x) engine: protocol, runs, parsing, jobflow makers.

Laid out like :mod:`mlcharge_workflows.engines.vasp`: ``sets`` (protocol, pw.x input),
``run`` (pw.x) and ``core`` (one SCF / non-SCF run), ``parse``, ``schemas``, ``density``
(the prediction on pw.x's grid), ``placement`` (a start density read, checked and put
where pw.x reads it), the Makers one concept a module - ``predict``
(``QEPredictDensityMaker``), ``static`` (``QEStaticMaker``, ``MLQEStaticMaker``), ``nscf``
(the three non-SCF Makers), all re-exported by ``jobs`` (the path older serialised
documents name) - and ``flows`` (the comparison).

The public API is re-exported here lazily (importing a submodule stays cheap):

>>> from mlcharge_workflows.engines.qe import QEProtocol, run_qe_scf  # doctest: +SKIP
>>> doc = run_qe_scf(structure, "run", start="atomic")                # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "core": ["read_converged_density", "run_qe_nscf", "run_qe_scf"],
    "density": ["grid_from_data", "grid_to_data", "predict_grid", "prediction_density"],
    "flows": ["MLQEBandStructureMaker", "QEArmReader", "QEComparisonMaker"],
    "nscf": ["MLQENonSCFMaker", "QEAtomicNonSCFMaker", "QENonSCFMaker"],
    "predict": ["QEPredictDensityMaker"],
    "static": ["MLQEStaticMaker", "QEStaticMaker"],
    "placement": ["align_density", "load_start_density", "write_start_density"],
    "parse": ["PwOutput", "band_edges", "band_gap", "parse_pw_output", "parse_pw_xml"],
    "run": ["run_pw"],
    "schemas": ["MLStaticDocument", "QETaskDocument"],
    "sets": ["QEProtocol", "default_nbnd", "pw_input", "qe_oriented"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


_NEUTRAL = {"check_structure", "get_pseudo", "n_valence_electrons", "supported_elements"}
__all__ = sorted(set(_WHERE) | _NEUTRAL)


def __getattr__(name: str) -> Any:
    if name in _NEUTRAL:  # the registry lives one layer down (mlcharge_workflows.pseudo)
        return getattr(importlib.import_module("mlcharge_workflows.pseudo"), name)
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
