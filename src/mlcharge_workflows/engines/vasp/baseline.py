"""VASP statics from atoms: the baseline arm, and the rerun that replaces a distrusted
ML-started static.

* :class:`BaselineStaticMaker` - atomate2 ``StaticMaker`` started from the superposition
  of atomic densities (``ICHARG = 2``, ``ISTART = 0``) on the same pinned fine grid as the
  ML arm, so the arms differ only in their starting density;
* :class:`MLFallbackStaticMaker` - the same run, carrying the rejected ML attempt (its
  record, SCF attempts, folder, energy and moment) in its task document.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomate2.vasp.jobs.base import vasp_job
from atomate2.vasp.jobs.core import StaticMaker
from jobflow import Response
from pymatgen.core import Structure

from mlcharge_workflows.engines.vasp.base import annotate_attempts, copy_maker
from mlcharge_workflows.engines.vasp.handlers import new_ml_start_record, write_ml_start_record
from mlcharge_workflows.engines.vasp.sets import (
    BASELINE_START_INCAR,
    grid_incar,
    input_fine_grid,
    input_set,
    with_incar,
)

__all__ = ["BaselineStaticMaker", "MLFallbackStaticMaker"]


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
