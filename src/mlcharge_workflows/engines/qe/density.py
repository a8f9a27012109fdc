"""The predicted density for pw.x: predict on pw.x's grid, keep it, hand it to a run.

The counterpart of :mod:`mlcharge_workflows.engines.vasp.density`. The model (torch) is
imported on first use, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcharge_workflows.common.documents import get_field

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from mlcharge_workflows.density.grid import DensityGrid
    from mlcharge_workflows.engines.qe.sets import QEProtocol


# ---------------------------------------------------------------- grid <-> data-store dict
def grid_to_data(grid: DensityGrid) -> dict[str, Any]:
    """A JSON-ready dict of a :class:`DensityGrid` (for jobflow's data store)."""
    return {
        "structure": grid.structure.as_dict(),
        "shape": list(grid.shape),
        "total": grid.total.ravel().tolist(),
        "magnetization": None if grid.magnetization is None else grid.magnetization.ravel().tolist(),
        "metadata": {k: v for k, v in grid.metadata.items() if isinstance(v, (str, int, float))},
    }


def grid_from_data(data: dict[str, Any]) -> DensityGrid:
    """Inverse of :func:`grid_to_data`."""
    from pymatgen.core import Structure

    from mlcharge_workflows.density.grid import DensityGrid

    shape = tuple(data["shape"])
    mag = data.get("magnetization")
    return DensityGrid(
        Structure.from_dict(data["structure"]),
        np.asarray(data["total"], dtype=float).reshape(shape),
        None if mag is None else np.asarray(mag, dtype=float).reshape(shape),
        metadata=dict(data.get("metadata") or {}),
    )


# ---------------------------------------------------------------- the model, lazily
def load_density_model(model_path: str | None) -> Any:
    """The loaded density model (cached per file; torch is imported here, not at import)."""
    from mlcharge_workflows.model import load_model

    return load_model(model_path)


def unsupported_elements(structure: Structure, model_path: str | None = None) -> list[str]:
    """Elements of ``structure`` the model was not trained on (sorted)."""
    known = set(load_density_model(model_path).supported_elements)
    return sorted({site.specie.symbol for site in structure} - known)


def model_version(model_path: str | None = None) -> str:
    """The model's version string, with the weights file name."""
    from mlcharge_workflows.model import model_version as version_of

    return version_of(load_density_model(model_path))


def predict_grid(
    structure: Structure, shape: tuple[int, int, int], model_path: str | None, protocol: QEProtocol
) -> DensityGrid:
    """Predicted density (and magnetisation for spin-polarised runs) on ``shape`` (e/Å³).

    Starting moments follow the protocol (``magmom`` = fraction x valence of the species),
    so the predicted magnetic state is the one pw.x is asked to find.
    """
    from mlcharge_workflows.model import predict_density

    s = structure.copy()
    if protocol.is_spin_polarized(s):
        s.add_site_property("magmom", protocol.starting_moments(s))
    elif "magmom" in s.site_properties:
        s.remove_site_property("magmom")
    return predict_density(s, shape=shape, model=load_density_model(model_path))


def prediction_density(prediction: Any) -> str | DensityGrid | None:
    """The start density of a prediction: its file if this worker sees it, else its grid."""
    path = get_field(prediction, "path")
    if path and Path(path).is_file():
        return str(path)
    data = get_field(prediction, "density")
    return None if data is None else grid_from_data(data)
