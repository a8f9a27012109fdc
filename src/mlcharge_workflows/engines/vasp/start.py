"""Placing the ML start of a run: the predicted CHGCAR and where its PAW occupancies come from.

Shared by the ML static (:mod:`.static`) and the ML non-SCF (:mod:`.nscf`) Makers: both copy
the predicted density in (:func:`~.placement.place_density`), then decide from the Maker's
``paw_occupancies`` mode whether the file can run as placed, needs a donor run's
occupancies merged in, must first run a donor, or is refused
(:func:`~.placement.occupancy_action`).
"""

from __future__ import annotations

from typing import Any

from jobflow import Response
from pymatgen.io.vasp.inputs import VaspInput

from mlcharge_workflows.engines.vasp.baseline import donor_dir
from mlcharge_workflows.engines.vasp.density import is_paw
from mlcharge_workflows.engines.vasp.handlers import write_ml_start_record
from mlcharge_workflows.engines.vasp.placement import (
    PAW_OCCUPANCY_MODES,
    chgcar_titles,
    occupancy_action,
    place_density,
)
from mlcharge_workflows.engines.vasp.predict import prediction_info

__all__ = ["check_paw_mode", "place_ml_start", "store_ml_start_record"]


def check_paw_mode(mode: str) -> None:
    """``ValueError`` unless ``mode`` is one of :data:`~.placement.PAW_OCCUPANCY_MODES`."""
    if mode not in PAW_OCCUPANCY_MODES:
        raise ValueError(f"paw_occupancies must be one of {PAW_OCCUPANCY_MODES}, got {mode!r}")


def place_ml_start(
    source: str,
    vis: VaspInput,
    functional: str,
    ml_density: Any,
    occupancy_donor: Any,
    paw_mode: str,
    zval: dict[str, float] | None = None,
    names: tuple[str, ...] = ("CHGCAR",),
    info_keys: tuple[str, ...] | None = None,
) -> tuple[dict[str, Any], str, str | None]:
    """Copy the predicted density ``source`` in as ``names`` and decide its occupancies.

    Returns ``(placed, action, donor)``: what :func:`~.placement.place_density` recorded
    (with the prediction's ``info_keys``, all of them when None), the occupancy action
    (``"keep"``, ``"merge"``, ``"donor"`` or ``"refuse"``) and the donor run's folder.
    """
    placed = place_density(source, vis, ".", functional, zval, names)
    info = prediction_info(ml_density)
    placed.update(info if info_keys is None else {k: v for k, v in info.items() if k in info_keys})
    donor = donor_dir(occupancy_donor)
    paw = placed.get("paw")
    action = occupancy_action(paw_mode, placed["has_paw_occupancies"],
                              is_paw(chgcar_titles(source)) if paw is None else paw, donor)
    return placed, action, donor


def store_ml_start_record(response: Response, record: dict[str, Any]) -> Response:
    """Write ``record`` to the run folder and into the task document's ``additional_json``."""
    write_ml_start_record(record)
    doc = response.output
    extra = dict(getattr(doc, "additional_json", None) or {})
    extra["ml_start"] = record
    doc.additional_json = extra
    return response
