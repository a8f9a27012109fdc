"""VASP statics from atoms: the baseline arm, and the rerun that replaces a distrusted
ML-started static.

* :class:`BaselineStaticMaker` - atomate2 ``StaticMaker`` started from the superposition
  of atomic densities (``ICHARG = 2``, ``ISTART = 0``) on the same pinned fine grid as the
  ML arm, so the arms differ only in their starting density;
* :class:`MLFallbackStaticMaker` - the same run, carrying the rejected ML attempt (its
  record, SCF attempts, folder, energy and moment) in its task document;
* :class:`OccupancyDonorMaker` - one electronic step from atoms (``NELM = 1``,
  ``LCHARG``) whose CHGCAR gives an ML start the PAW occupancies VASP needs (the ML arm
  pays for it: its steps and wall time are counted there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomate2.vasp.jobs.base import vasp_job
from atomate2.vasp.jobs.core import StaticMaker
from jobflow import Flow, Response
from pymatgen.core import Structure

from mlcharge_workflows._compat import allow_replacement_output
from mlcharge_workflows.engines.vasp.base import annotate_attempts, copy_maker
from mlcharge_workflows.engines.vasp.parse import count_attempts, task_field
from mlcharge_workflows.engines.vasp.handlers import new_ml_start_record, write_ml_start_record
from mlcharge_workflows.engines.vasp.sets import (
    BASELINE_START_INCAR,
    DONOR_INCAR,
    grid_incar,
    input_fine_grid,
    input_set,
    local_dir,
    with_incar,
)

__all__ = [
    "DONOR_NAME",
    "BaselineStaticMaker",
    "MLFallbackStaticMaker",
    "OccupancyDonorMaker",
    "donor_dir",
    "donor_record",
    "with_donor",
]

#: Job name of the occupancy donor run.
DONOR_NAME = "occupancy donor"


@dataclass
class BaselineStaticMaker(StaticMaker):
    """atomate2 static started from atoms (``ICHARG = 2``, ``ISTART = 0``) on a pinned grid."""

    name: str = "baseline static"

    @vasp_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Response:
        """Run the static from the superposition of atomic densities."""
        gen = with_incar(self.input_set_generator, BASELINE_START_INCAR)
        shape = input_fine_grid(input_set(gen, structure, prev_dir))
        for stale in ("CHGCAR", "WAVECAR"):
            Path(stale).unlink(missing_ok=True)
        maker = copy_maker(self, with_incar(gen, grid_incar(shape)))
        response = super(BaselineStaticMaker, maker).make.original(maker, structure, prev_dir)
        return annotate_attempts(response)


@dataclass
class MLFallbackStaticMaker(BaselineStaticMaker):
    """The rerun from atoms that replaces a distrusted ML-started static.

    Its task document carries the ML start record (``status = "abandoned"``, the
    reason in ``fallback``), every SCF attempt paid for (the rejected ML run's first)
    and the rejected run's folder, energy and moment in ``rejected_ml_run``.
    """

    name: str = "ml static rerun from atoms"

    @vasp_job
    def make(
        self, structure: Structure, prev_dir: str | Path | None = None,
        rejected: dict[str, Any] | None = None,
    ) -> Response:
        """Run the static from atoms and record the rejected ML attempt."""
        rejected = dict(rejected or {})
        record = dict(rejected.pop("record", None) or new_ml_start_record({}, 0))
        record.update(status="abandoned", rerun_from_atoms=True)
        write_ml_start_record(record)
        response = BaselineStaticMaker.make.original(self, structure, prev_dir)
        doc = response.output
        if doc is not None:
            extra = dict(doc.additional_json or {})
            extra["ml_start"] = record
            extra["scf_attempts"] = [*rejected.pop("scf_attempts", []),
                                     *extra.get("scf_attempts", [])]
            extra["rejected_ml_run"] = rejected
            doc.additional_json = extra
        return response


@dataclass
class OccupancyDonorMaker(BaselineStaticMaker):
    """One electronic step from atoms whose CHGCAR lends its PAW occupancies to an ML start.

    VASP discards a CHGCAR without PAW occupancies (docs/vasp-guide.md, "The CHGCAR VASP
    reads"); a prediction has none. This run uses the ML run's own generator (same POSCAR,
    POTCARs, LMAXMIX, ISPIN, pinned grid) with :data:`~.sets.DONOR_INCAR` (``ICHARG = 2``,
    ``NELM = 1``, ``LCHARG``, no WAVECAR/AECCAR/LOCPOT), so its CHGCAR holds occupancies with
    the count per ion VASP expects. Stopping at NELM is the point: no custodian handlers or
    validators, and an unconverged task document does not stop the flow. Whether VASP then
    reads the ML density with these occupancies is unverified here (no VASP): the ML run's
    OUTCAR/stdout decide (``start_evidence``).
    """

    name: str = DONOR_NAME
    run_vasp_kwargs: dict = field(default_factory=lambda: {"handlers": [], "validators": []})
    stop_children_kwargs: dict = field(default_factory=lambda: {"handle_unsuccessful": False})

    @vasp_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Response:
        """Run one step from atoms and keep its CHGCAR (occupancies)."""
        gen = with_incar(self.input_set_generator, DONOR_INCAR)
        shape = input_fine_grid(input_set(gen, structure, prev_dir))
        for stale in ("CHGCAR", "WAVECAR"):
            Path(stale).unlink(missing_ok=True)
        maker = copy_maker(self, with_incar(gen, grid_incar(shape)))
        response = StaticMaker.make.original(maker, structure, prev_dir)
        return annotate_attempts(response)


def donor_dir(occupancy_donor: Any) -> str | None:
    """Local folder of an occupancy donor given as a folder or its task document."""
    if occupancy_donor is None:
        return None
    folder = task_field(occupancy_donor, "dir_name") if not isinstance(
        occupancy_donor, str | Path) else occupancy_donor
    return local_dir(folder)


def donor_record(folder: str) -> dict[str, Any]:
    """What the ML arm's record keeps of its donor: folder and every SCF attempt (the ML
    arm pays for them)."""
    try:
        attempts = count_attempts(folder)
    except (OSError, ValueError) as err:
        return {"dir_name": folder, "scf_attempts": [], "error": str(err)}
    return {"dir_name": folder, "scf_attempts": attempts}


def with_donor(maker: Any, structure: Structure, prev_dir: Any, ml_density: Any,
               generator: Any = None, **kwargs: Any) -> Response:
    """Replace the current ML job by [occupancy donor, the same job with its occupancies].

    ``generator``: the donor's input set generator (default: the maker's own, so POTCARs,
    LMAXMIX, ISPIN and grid are the ML run's). The prediction is passed on as a plain
    dict without the grid (the CHGCAR path is what the job reads).
    """
    run_kwargs = {**maker.run_vasp_kwargs, "handlers": [], "validators": []}
    donor = OccupancyDonorMaker(
        input_set_generator=generator or maker.input_set_generator, run_vasp_kwargs=run_kwargs,
    ).make(structure, prev_dir=prev_dir)
    if hasattr(ml_density, "model_dump"):
        ml_density = ml_density.model_dump()
    if isinstance(ml_density, dict):
        ml_density = {k: v for k, v in ml_density.items() if k != "density"}
    run = maker.make(structure, prev_dir=prev_dir, ml_density=ml_density,
                     occupancy_donor=donor.output.dir_name, **kwargs)
    allow_replacement_output()  # run.output itself is a validated TaskDoc
    return Response(replace=Flow([donor, run], output=run.output, name=maker.name))
