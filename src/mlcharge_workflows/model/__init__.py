"""The e3nn density model: SAD plus an equivariant correction in atom-centred Gaussian orbitals.

Public API (torch is imported here; import this package lazily from workflow code)::

    model = load_model()                       # shipped weights, offline
    grid = predict_density(structure)          # DensityGrid on pw.x's FFT grid
    grid = predict_density(structure, (n1, n2, n3))
    total, mag = predict_qe_coefficients(structure, mill)
    model.supported_elements
"""

from __future__ import annotations

from mlcharge_workflows.model.core import Cell, DensityModel, ModelConfig
from mlcharge_workflows.model.io import DEFAULT_WEIGHTS, load_weights, model_version, save_model
from mlcharge_workflows.model.predict import (
    default_grid,
    load_model,
    predict_density,
    predict_qe_coefficients,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "Cell",
    "DensityModel",
    "ModelConfig",
    "default_grid",
    "load_model",
    "load_weights",
    "model_version",
    "predict_density",
    "predict_qe_coefficients",
    "save_model",
]
