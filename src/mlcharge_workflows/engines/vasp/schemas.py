"""Documents of the VASP jobs beyond atomate2's ``TaskDoc``.

:class:`MLDensityDocument` is the engine-neutral
:class:`~mlcharge_workflows.common.schemas.PredictionDocument` plus what VASP needs to
place a CHGCAR (NELECT and its source, POTCAR valences, the input set's INCAR).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator
from pymatgen.core import Structure

from mlcharge_workflows.common.schemas import PredictionDocument

__all__ = ["MLDensityDocument"]


class MLDensityDocument(PredictionDocument):
    """Output of :class:`~mlcharge_workflows.engines.vasp.jobs.MLDensityMaker`.

    Small: the grid is a file (``path``), or in the ``data`` store when requested.
    ``n_electrons`` is the prediction's integral, equal to ``nelect`` (predictions are
    built on the run's POTCARs and never rescaled; read also under its old name
    ``n_electrons_predicted``); ``predict_wall_s`` is
    ``timings["total_s"]``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    spin_start: str | None = Field(
        None, description="Magnetic cells: 'atomic' (superposition) or 'model' (learned rho, m)."
    )
    structure: Structure | None = Field(None, description="POSCAR structure of the input set.")
    nelect: float | None = Field(None, description="Electrons the CHGCAR integrates to (NELECT).")
    nelect_source: str | None = Field(None, description="INCAR, POTCAR, table or zval.")
    zval_potcar: dict[str, float] = Field(default_factory=dict)
    valence_mismatch: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="Elements whose model and POTCAR valences differ."
    )
    scale: float | None = None
    predictor: str
    incar: dict[str, Any] = Field(default_factory=dict)
    potcar_symbols: list[str] = Field(default_factory=list)
    reference: dict[str, Any] = Field(
        default_factory=dict,
        description="Atomic reference of the prediction: source (POTCAR), each POTCAR's "
        "symbol/title/ZVAL/sha256, whether it differs from the training pseudopotentials.",
    )
    device: str | None = Field(None, description="torch device of the prediction.")
    paw_occupancies: dict[str, Any] | None = Field(
        None, description="PAW occupancies written into the CHGCAR: source CHGCAR, blocks, "
        "how ('prev_dir' or 'given'); None: none (VASP discards such a CHGCAR for PAW POTCARs).")
    paw_occupancies_note: str | None = Field(
        None, description="Why these occupancies, or why none (e.g. prev_dir's LMAXMIX differs).")
    paw: bool | None = Field(None, description="The run's POTCARs are PAW datasets.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds.")

    @model_validator(mode="after")
    def _wall_from_timings(self) -> MLDensityDocument:
        if self.predict_wall_s is None and "total_s" in self.timings:
            self.predict_wall_s = self.timings["total_s"]
        return self
