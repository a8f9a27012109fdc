"""jobflow Makers of the QE engine (pw.x), in atomate2's conventions (a small dataclass
with ``name`` and ``make``).

One module per concept; every Maker is importable from here (the path scripts, docs and
serialised jobflow / FireWorks documents written before the split use: MSONable writes
the defining module into ``@module``, and this module resolves it):

* :class:`QEPredictDensityMaker` (:mod:`.predict`) - the density predicted and written
  once as pw.x reads it, plus a small
  :class:`~mlcharge_workflows.common.schemas.PredictionDocument`;
* :class:`QEStaticMaker`, :class:`MLQEStaticMaker` (:mod:`.static`) - one SCF from atoms
  or a density on disk; the SCF from the prediction, rerun from atoms when not trusted;
* :class:`QENonSCFMaker`, :class:`MLQENonSCFMaker`, :class:`QEAtomicNonSCFMaker`
  (:mod:`.nscf`) - bands or a uniform nscf from a density on disk, from the prediction,
  from atoms.

>>> from mlcharge_workflows.engines.qe.static import QEStaticMaker as Static
>>> QEStaticMaker is Static and QEStaticMaker.__module__
'mlcharge_workflows.engines.qe.static'
"""

from __future__ import annotations

from mlcharge_workflows.engines.qe.nscf import MLQENonSCFMaker, QEAtomicNonSCFMaker, QENonSCFMaker
from mlcharge_workflows.engines.qe.predict import (
    PREDICTED_FILE,
    UNSUPPORTED_DEFAULT,
    QEPredictDensityMaker,
)
from mlcharge_workflows.engines.qe.static import MLQEStaticMaker, QEStaticMaker

__all__ = [
    "PREDICTED_FILE",
    "UNSUPPORTED_DEFAULT",
    "MLQENonSCFMaker",
    "MLQEStaticMaker",
    "QEAtomicNonSCFMaker",
    "QENonSCFMaker",
    "QEPredictDensityMaker",
    "QEStaticMaker",
]
