"""The prediction job of the QE engine: a structure -> the start density pw.x reads.

:class:`QEPredictDensityMaker` predicts the density, writes it once as
``out/pwscf.save/charge-density.dat`` (:data:`PREDICTED_FILE`) in its folder, exactly as
pw.x takes it (:func:`~mlcharge_workflows.engines.qe.core.write_start_density`; the SCF
copies it as is) and returns a small
:class:`~mlcharge_workflows.common.schemas.PredictionDocument`; the grid itself goes to
jobflow's additional ``"data"`` store (key ``density``). torch is imported inside the job,
and ``manager_config`` routes it to a GPU worker. The ML static and non-SCF Makers
(:mod:`.static`, :mod:`.nscf`) start from what it returns.

>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> predict = QEPredictDensityMaker(manager_config={"_fworker": "gpu"}).make(si)
>>> predict.config.manager_config
{'_fworker': 'gpu'}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jobflow import Maker, job

from mlcharge_workflows.common.fallback import ATOMIC_SPIN_START, PREDICTION_FAILED, UNSUPPORTED
from mlcharge_workflows.common.schemas import PredictionDocument
from mlcharge_workflows.density.qe_gvectors import qe_fft_grid
from mlcharge_workflows.engines.qe.core import write_start_density
from mlcharge_workflows.engines.qe.density import (
    load_density_model,
    model_version,
    predict_grid,
    unsupported_elements,
)
from mlcharge_workflows.engines.qe.sets import OUTDIR, PREFIX, QEProtocol
from mlcharge_workflows.pseudo import pseudo_record

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["PREDICTED_FILE", "UNSUPPORTED_DEFAULT", "QEPredictDensityMaker"]

#: What the prediction does for elements the model does not know (see
#: :class:`QEPredictDensityMaker`): measured in docs/benchmarks.md ("Unsupported elements").
UNSUPPORTED_DEFAULT: Literal["partial", "atoms"] = "partial"

#: File the prediction job writes, relative to its folder.
PREDICTED_FILE = f"{OUTDIR}/{PREFIX}.save/charge-density.dat"


@dataclass
class QEPredictDensityMaker(Maker):
    """Predict the density of a structure and write it for pw.x.

    Parameters
    ----------
    model_path
        Weights file; None uses ``MLCHARGE_MODEL_PATH`` or the shipped model.
    manager_config
        jobflow manager settings of the job, e.g. ``{"_fworker": "gpu"}`` for FireWorks.
    unsupported
        Elements the model does not know: ``"partial"`` (their atoms get the reference
        density of their pseudopotential, the others the learned one; the document's
        ``partial_start`` lists them) or ``"atoms"`` (no ML start: ``fallback`` names them
        and the SCF starts from atoms). A cell with no known element always falls back.
    """

    name: str = "predict density"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    model_path: str | None = None
    manager_config: dict = field(default_factory=dict)
    unsupported: Literal["partial", "atoms"] = UNSUPPORTED_DEFAULT

    def make(self, structure: Structure):  # noqa: D102 - see _predict
        job_ = self._predict(structure)
        job_.update_config({"manager_config": dict(self.manager_config)})
        return job_

    @job(output_schema=PredictionDocument, data="density")
    def _predict(self, structure: Structure) -> PredictionDocument:
        """Predict in the job's folder; unsupported elements give ``fallback`` and no density."""
        cwd = Path.cwd()
        base = dict(dir_name=str(cwd), formula=structure.composition.reduced_formula,
                    n_atoms=len(structure))
        t0 = time.perf_counter()
        load_density_model(self.model_path)  # import torch and load the weights once per process
        base.update(model_version=model_version(self.model_path),
                    model_load_s=time.perf_counter() - t0)
        missing = unsupported_elements(structure, self.model_path)
        if self.unsupported not in ("partial", "atoms"):
            raise ValueError(f"unsupported must be 'partial' or 'atoms', got {self.unsupported!r}")
        known = {site.specie.symbol for site in structure} - set(missing)
        if missing and (self.unsupported == "atoms" or not known):
            return PredictionDocument(**base, fallback=f"{UNSUPPORTED}: {', '.join(missing)}")
        t0, c0 = time.perf_counter(), time.process_time()
        _, ecutrho = self.protocol.cutoffs(structure)
        shape = qe_fft_grid(structure.lattice.matrix, ecutrho)
        try:
            grid = predict_grid(structure, shape, self.model_path, self.protocol,
                                partial=bool(missing))
        except ValueError as exc:
            return PredictionDocument(**base, fallback=f"{PREDICTION_FAILED}: {exc}")
        if grid.metadata.get("spin_start") == "atomic":
            return PredictionDocument(
                **base,
                fallback=f"{ATOMIC_SPIN_START}: the model returns the atomic superposition for "
                "magnetic cells (MLCHARGE_MODEL_SPIN=model uses its learned rho and m)",
            )
        n_pred = grid.n_electrons
        grid = grid.normalized(self.protocol.n_electrons(structure))  # grid sum vs exact count only
        # placed once: pw.x's frame, G order and electron count, copied as is by the SCF
        out = write_start_density(structure, cwd / PREDICTED_FILE.rsplit("/", 1)[0], grid,
                                  self.protocol)
        return PredictionDocument(
            **base,
            path=str(out),
            n_electrons=n_pred,
            total_magnetization=grid.total_magnetization if grid.is_spin_polarized else None,
            grid_shape=list(grid.shape),
            predict_wall_s=time.perf_counter() - t0,
            predict_cpu_s=time.process_time() - c0,
            density=grid,
            reference=grid.metadata.get("reference"),
            pseudopotentials=pseudo_record(self.protocol.pseudos(structure)),
            partial_start=missing or None,
        )
