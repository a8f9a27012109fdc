"""jobflow Makers of the VASP engine: predict a density, and static / non-SCF runs from it.

One module per concept; every Maker is importable from here (the path scripts, docs and
serialised jobflow / FireWorks documents written before the split use):

* :class:`MLDensityMaker` (:mod:`.predict`) - structure -> CHGCAR in its job folder + a
  small :class:`MLDensityDocument` (:mod:`.schemas`);
* :class:`MLStaticMaker` (:mod:`.static`) - atomate2 ``StaticMaker`` from the predicted
  CHGCAR (``ICHARG = 1``), custodian and policy fallback to atoms;
* :class:`BaselineStaticMaker`, :class:`MLFallbackStaticMaker` (:mod:`.baseline`) - the
  static from atoms (``ICHARG = 2``), and the rerun that replaces a distrusted ML start;
  :class:`OccupancyDonorMaker` - one step from atoms whose CHGCAR lends an ML start the
  PAW occupancies VASP needs;
* :class:`MLNonSCFMaker`, :class:`AtomicNonSCFMaker` (:mod:`.nscf`) - non-SCF
  (``ICHARG = 11`` / ``12``) on the prediction / on atoms, skipping the SCF.

Every VASP arm pins the same fine grid and sets ``ISTART = 0`` (no WAVECAR read), so
the arms differ only in their starting density. What the run Makers share is in
:mod:`.base`.
"""

from __future__ import annotations

from mlcharge_workflows.engines.vasp.baseline import (
    BaselineStaticMaker,
    MLFallbackStaticMaker,
    OccupancyDonorMaker,
)
from mlcharge_workflows.engines.vasp.nscf import AtomicNonSCFMaker, MLNonSCFMaker
from mlcharge_workflows.engines.vasp.predict import MLDensityMaker
from mlcharge_workflows.engines.vasp.schemas import MLDensityDocument
from mlcharge_workflows.engines.vasp.static import MLStaticMaker

__all__ = [
    "AtomicNonSCFMaker",
    "BaselineStaticMaker",
    "MLDensityDocument",
    "MLDensityMaker",
    "MLFallbackStaticMaker",
    "MLNonSCFMaker",
    "MLStaticMaker",
    "OccupancyDonorMaker",
]
