"""VASP non-SCF runs (band structure, uniform DOS mesh) that skip the SCF.

* :class:`MLNonSCFMaker` - atomate2 ``NonSCFMaker`` (``ICHARG = 11``, line or uniform)
  on the predicted density instead of a previous run's CHGCAR;
* :class:`AtomicNonSCFMaker` - the same from the superposition of atomic densities
  (``ICHARG = 12``), the control of the NSCF check.

Both pin the fine grid and never copy the previous run's CHGCAR: ``prev_dir`` only
informs NBANDS, ISPIN and smearing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomate2.vasp.jobs.base import vasp_job
from atomate2.vasp.jobs.core import NonSCFMaker
from jobflow import Response
from pymatgen.core import Structure

from mlcharge_workflows.engines.vasp.base import copy_maker
from mlcharge_workflows.engines.vasp.handlers import new_ml_start_record, write_ml_start_record
from mlcharge_workflows.engines.vasp.placement import place_density
from mlcharge_workflows.engines.vasp.predict import (
    MLDensityMaker,
    density_path,
    predict_then,
    prediction_info,
)
from mlcharge_workflows.engines.vasp.sets import (
    ATOMIC_NSCF_INCAR,
    ML_NSCF_INCAR,
    grid_incar,
    input_fine_grid,
    input_set,
    potcar_functional,
    with_incar,
)

__all__ = ["AtomicNonSCFMaker", "MLNonSCFMaker"]


def _nscf_maker(maker: NonSCFMaker, structure: Structure, prev_dir: Any, mode: str, start: dict):
    gen = copy.deepcopy(maker.input_set_generator)
    gen.mode = mode
    gen = with_incar(gen, start)
    vis = input_set(gen, structure, prev_dir)
    new = copy_maker(maker, with_incar(gen, grid_incar(input_fine_grid(vis))))
    new.copy_vasp_kwargs["additional_vasp_files"] = ()  # never the previous run's CHGCAR
    return new, vis


@dataclass
class MLNonSCFMaker(NonSCFMaker):
    """atomate2 non-SCF (``ICHARG = 11``) on a predicted CHGCAR, skipping the SCF.

    ``prev_dir`` is optional (it only informs NBANDS, ISPIN, smearing); the density
    is always ``ml_density``, predicted by ``density_maker`` when not given.
    """

    name: str = "ml non-scf"
    density_maker: MLDensityMaker | None = field(default_factory=MLDensityMaker)
    zval: dict[str, float] | None = None

    @vasp_job
    def make(
        self,
        structure: Structure,
        prev_dir: str | Path | None = None,
        mode: str = "uniform",
        ml_density: Any = None,
    ) -> Response:
        """Run the non-SCF job in ``mode`` ("line" or "uniform") on ``ml_density``."""
        if ml_density is None:
            return predict_then(self, structure, prev_dir, mode=mode)
        source = density_path(ml_density)
        if source is None:
            raise ValueError(f"{self.name}: no predicted density ({prediction_info(ml_density)})")
        maker, vis = _nscf_maker(self, structure, prev_dir, mode, ML_NSCF_INCAR)
        functional = potcar_functional(maker.input_set_generator)
        placed = place_density(source, vis, ".", functional, self.zval)
        record = new_ml_start_record(placed, 0)
        record["status"] = "nscf"
        write_ml_start_record(record)
        return NonSCFMaker.make.original(maker, structure, prev_dir, mode)


@dataclass
class AtomicNonSCFMaker(NonSCFMaker):
    """atomate2 non-SCF on the superposition of atomic densities (``ICHARG = 12``)."""

    name: str = "atomic non-scf"

    @vasp_job
    def make(
        self, structure: Structure, prev_dir: str | Path | None = None, mode: str = "uniform"
    ) -> Response:
        """Run the non-SCF job in ``mode`` from atoms (the control of the NSCF check)."""
        maker, _ = _nscf_maker(self, structure, prev_dir, mode, ATOMIC_NSCF_INCAR)
        Path("CHGCAR").unlink(missing_ok=True)
        return NonSCFMaker.make.original(maker, structure, prev_dir, mode)
