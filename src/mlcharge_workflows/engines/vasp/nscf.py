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
from mlcharge_workflows.engines.vasp.baseline import donor_record, with_donor
from mlcharge_workflows.engines.vasp.handlers import new_ml_start_record, write_ml_start_record
from mlcharge_workflows.engines.vasp.parse import read_start_evidence
from mlcharge_workflows.engines.vasp.placement import add_paw_occupancies
from mlcharge_workflows.engines.vasp.predict import MLDensityMaker, density_path, predict_then
from mlcharge_workflows.engines.vasp.predict import prediction_info
from mlcharge_workflows.engines.vasp.start import (
    check_paw_mode,
    place_ml_start,
    store_ml_start_record,
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
    ``paw_occupancies``: as :class:`~.static.MLStaticMaker`'s (VASP stops for ICHARG=11
    on a CHGCAR without PAW occupancies); the donor run uses this job's generator on a
    uniform k-mesh (``mode = "uniform"``), so its POTCARs, LMAXMIX and ISPIN are this
    run's.
    """

    name: str = "ml non-scf"
    density_maker: MLDensityMaker | None = field(default_factory=MLDensityMaker)
    paw_occupancies: str = "auto"
    zval: dict[str, float] | None = None

    @vasp_job
    def make(
        self,
        structure: Structure,
        prev_dir: str | Path | None = None,
        mode: str = "uniform",
        ml_density: Any = None,
        occupancy_donor: Any = None,
    ) -> Response:
        """Run the non-SCF job in ``mode`` ("line" or "uniform") on ``ml_density``
        (``occupancy_donor``: see ``paw_occupancies``)."""
        check_paw_mode(self.paw_occupancies)
        if ml_density is None:
            return predict_then(self, structure, prev_dir, mode=mode)
        source = density_path(ml_density)
        if source is None:
            raise ValueError(f"{self.name}: no predicted density ({prediction_info(ml_density)})")
        maker, vis = _nscf_maker(self, structure, prev_dir, mode, ML_NSCF_INCAR)
        functional = potcar_functional(maker.input_set_generator)
        placed, action, donor = place_ml_start(
            source, vis, functional, ml_density, occupancy_donor, self.paw_occupancies,
            self.zval, info_keys=("paw", "paw_occupancies", "paw_occupancies_note"))
        if action == "donor":
            Path("CHGCAR").unlink(missing_ok=True)
            gen = copy.deepcopy(self.input_set_generator)
            gen.mode = "uniform"
            return with_donor(self, structure, prev_dir, ml_density, generator=gen, mode=mode)
        if action == "refuse":
            raise ValueError(
                f"{self.name}: the CHGCAR has no PAW occupancies and paw_occupancies="
                f"'prev_dir' allows no donor run ({placed.get('paw_occupancies_note')}): VASP "
                "would stop ('charge density could not be read from file CHGCAR for ICHARG>10')")
        if action == "merge":
            placed["paw_occupancies"] = {**add_paw_occupancies(donor, vis), "how": "donor"}
            placed["has_paw_occupancies"] = True
        record = new_ml_start_record(placed, 0)
        record["status"] = "nscf"
        if action == "merge":
            record["occupancy_donor"] = donor_record(donor)
        write_ml_start_record(record)
        try:
            response = NonSCFMaker.make.original(maker, structure, prev_dir, mode)
        except Exception as err:
            evidence = read_start_evidence(".")
            if evidence.density_read is False:  # VASP stops for ICHARG=11: name the cause
                raise RuntimeError(
                    f"{self.name}: VASP did not read the CHGCAR and stopped "
                    f"({'; '.join(evidence.messages)}); see docs/vasp-guide.md, first-run "
                    "checklist"
                ) from err
            raise
        return _with_start_evidence(response)


def _with_start_evidence(response: Response) -> Response:
    """Add what VASP's OUTCAR/stdout say about the start to the non-SCF record."""
    doc = response.output
    extra = dict(getattr(doc, "additional_json", None) or {})
    if doc is None or "ml_start" not in extra:
        return response
    record = dict(extra["ml_start"])
    record["start_evidence"] = read_start_evidence(".").as_dict()
    return store_ml_start_record(response, record)


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
