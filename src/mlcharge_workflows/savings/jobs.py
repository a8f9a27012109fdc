"""jobflow Makers of the ML-initialised QE workflows: predict, ML-started SCF, non-SCF.

* :class:`QEPredictDensityMaker` writes the predicted density as
  ``out/pwscf.save/charge-density.dat`` in its folder (ready for ``startingpot='file'``)
  and returns a small :class:`PredictionDocument`; the grid itself goes to jobflow's
  additional ``"data"`` store (key ``density``), never the main document. torch is
  imported inside the job, and ``manager_config`` routes it to a GPU worker.
* :class:`MLQEStaticMaker` runs the SCF from the prediction and falls back to atoms
  (:mod:`mlcharge_workflows.savings.fallback`), keeping every attempt.
* :class:`MLQENonSCFMaker` runs bands (line) or a uniform nscf (DOS) straight from the
  prediction, skipping the SCF.

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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from jobflow import Maker, job
from pydantic import BaseModel, Field

from mlcharge_workflows.engines.qe.schemas import QETaskDocument
from mlcharge_workflows.engines.qe.sets import OUTDIR, PREFIX, QEProtocol
from mlcharge_workflows.savings.fallback import (
    ATOMIC_SPIN_START,
    PREDICTION_FAILED,
    UNSUPPORTED,
    FallbackPolicy,
    run_with_fallback,
)
from mlcharge_workflows.savings.schemas import ArmAttempt

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from mlcharge_workflows.density.grid import DensityGrid

#: File the prediction job writes, relative to its folder.
PREDICTED_FILE = f"{OUTDIR}/{PREFIX}.save/charge-density.dat"


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
def _model(model_path: str | None) -> Any:
    """The loaded density model (cached per file; torch is imported here, not at import)."""
    from mlcharge_workflows.model import load_model

    return load_model(model_path)


def unsupported_elements(structure: Structure, model_path: str | None = None) -> list[str]:
    """Elements of ``structure`` the model was not trained on (sorted)."""
    known = set(_model(model_path).supported_elements)
    return sorted({site.specie.symbol for site in structure} - known)


def model_version(model_path: str | None = None) -> str | None:
    """The model's version string, with the weights file name."""
    m = _model(model_path)
    version = (getattr(m, "metadata", None) or {}).get("version")
    name = Path(getattr(m, "weights_path", None) or model_path or "shipped").name
    return f"{name}:{version}" if version else name


def predict_grid(
    structure: Structure, shape: tuple[int, int, int], model_path: str | None, protocol: QEProtocol
) -> DensityGrid:
    """Predicted density (and magnetisation for spin-polarised runs) on ``shape`` (e/Å³).

    Starting moments follow the protocol (``magmom`` = fraction x valence of the species),
    so the predicted magnetic state is the one pw.x is asked to find.
    """
    from mlcharge_workflows.pseudo import get_pseudo
    from mlcharge_workflows.model import predict_density

    s = structure.copy()
    if protocol.is_spin_polarized(s):
        s.add_site_property("magmom", [
            protocol.starting_magnetization.get(site.specie.symbol, 0.0)
            * get_pseudo(site.specie.symbol).z_valence for site in s
        ])
    elif "magmom" in s.site_properties:
        s.remove_site_property("magmom")
    return predict_density(s, shape=shape, model=_model(model_path))


class PredictionDocument(BaseModel):
    """Output of :class:`QEPredictDensityMaker` (the grid is in the data store)."""

    dir_name: str
    path: str | None = Field(None, description="The written charge-density.dat (None: no prediction).")
    formula: str
    n_atoms: int
    n_electrons: float | None = Field(None, description="Integral of the prediction (before writing).")
    total_magnetization: float | None = Field(None, description="μB per cell; None if not spin-polarised.")
    grid_shape: list[int] | None = None
    predict_wall_s: float | None = Field(None, description="Inference and file writing (s).")
    predict_cpu_s: float | None = Field(None, description="CPU time of the same (all threads).")
    model_load_s: float | None = Field(
        None, description="Importing torch and loading the weights (s); 0 when cached in the process."
    )
    model_version: str | None = None
    fallback: str | None = Field(None, description="Why there is no prediction.")
    density: dict[str, Any] | None = Field(None, description="The grid (stored in the data store).")


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def prediction_density(prediction: Any) -> str | DensityGrid | None:
    """The start density of a prediction: its file if this worker sees it, else its grid."""
    path = _get(prediction, "path")
    if path and Path(path).is_file():
        return str(path)
    data = _get(prediction, "density")
    return None if data is None else grid_from_data(data)


@dataclass
class QEPredictDensityMaker(Maker):
    """Predict the density of a structure and write it for pw.x.

    Parameters
    ----------
    model_path
        Weights file; None uses ``MLCHARGE_MODEL_PATH`` or the shipped model.
    manager_config
        jobflow manager settings of the job, e.g. ``{"_fworker": "gpu"}`` for FireWorks.
    """

    name: str = "qe predict density"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    model_path: str | None = None
    manager_config: dict = field(default_factory=dict)

    def make(self, structure: Structure):  # noqa: D102 - see _predict
        job_ = self._predict(structure)
        job_.update_config({"manager_config": dict(self.manager_config)})
        return job_

    @job(output_schema=PredictionDocument, data="density")
    def _predict(self, structure: Structure) -> PredictionDocument:
        """Predict in the job's folder; unsupported elements give ``fallback`` and no density."""
        from mlcharge_workflows.density.qe_file import write_qe_start_density
        from mlcharge_workflows.density.qe_gvectors import qe_fft_grid
        from mlcharge_workflows.pseudo import n_valence_electrons
        cwd = Path.cwd()
        base = dict(dir_name=str(cwd), formula=structure.composition.reduced_formula,
                    n_atoms=len(structure))
        t0 = time.perf_counter()
        _model(self.model_path)  # import torch and load the weights once per process
        base.update(model_version=model_version(self.model_path),
                    model_load_s=time.perf_counter() - t0)
        missing = unsupported_elements(structure, self.model_path)
        if missing:
            return PredictionDocument(**base, fallback=f"{UNSUPPORTED}: {', '.join(missing)}")
        t0, c0 = time.perf_counter(), time.process_time()
        _, ecutrho = self.protocol.cutoffs(structure)
        shape = qe_fft_grid(structure.lattice.matrix, ecutrho)
        try:
            grid = predict_grid(structure, shape, self.model_path, self.protocol)
        except ValueError as exc:
            return PredictionDocument(**base, fallback=f"{PREDICTION_FAILED}: {exc}")
        if grid.metadata.get("spin_start") == "atomic":
            return PredictionDocument(
                **base,
                fallback=f"{ATOMIC_SPIN_START}: the model returns the atomic superposition for "
                "magnetic cells (MLCHARGE_MODEL_SPIN=model uses its learned rho and m)",
            )
        n_pred = grid.n_electrons
        grid = grid.normalized(n_valence_electrons(structure))
        out = write_qe_start_density(cwd / PREDICTED_FILE.rsplit("/", 1)[0], grid, ecutrho)
        return PredictionDocument(
            **base,
            path=str(out),
            n_electrons=n_pred,
            total_magnetization=grid.total_magnetization if grid.is_spin_polarized else None,
            grid_shape=list(grid.shape),
            predict_wall_s=time.perf_counter() - t0,
            predict_cpu_s=time.process_time() - c0,
            density=grid_to_data(grid),
        )


class MLStaticDocument(BaseModel):
    """Output of :class:`MLQEStaticMaker`: the accepted run and every attempt."""

    dir_name: str | None = Field(None, description="Folder of the accepted run.")
    task: QETaskDocument | None = Field(None, description="The accepted run.")
    attempts: list[ArmAttempt] = Field(default_factory=list)
    ml_density_used: bool = Field(False, description="The accepted run read the predicted density.")
    fallback: str | None = None
    scf_iterations: int | None = Field(None, description="Accepted run's iterations.")
    scf_iterations_total: int | None = Field(None, description="All attempts (the arm's cost).")
    wall_s_total: float | None = Field(None, description="All attempts, density placement included.")
    cpu_s_total: float | None = Field(None, description="pw.x CPU time of all attempts.")
    energy_eV: float | None = None
    converged: bool | None = None
    total_magnetization: float | None = None
    predicted_magnetization: float | None = None


def _attempt(start: str, task: QETaskDocument | None, rejected: str | None) -> ArmAttempt:
    if task is None:
        return ArmAttempt(start=start, rejected=rejected)
    iters = task.scf_iterations if task.scf_iterations is not None else len(task.scf_accuracy_Ry)
    wall = (task.elapsed_s or task.wall_time_s or 0.0) + (task.prep_wall_time_s or 0.0)
    return ArmAttempt(
        start=start, scf_iterations=iters, energy_eV=task.energy_eV, converged=task.converged,
        total_magnetization=task.total_magnetization, wall_s=wall, cpu_s=task.cpu_time_s,
        density_read_from_file=task.density_initialised, dir_name=task.dir_name, rejected=rejected,
    )


@dataclass
class MLQEStaticMaker(Maker):
    """SCF started from a predicted density, rerun from atoms when it is not trusted.

    The ML attempt runs in ``ml_start/`` and a rerun in ``atomic_rerun/`` of the job's
    folder. ``reference`` (the baseline's task document, when known) supplies the
    expected energy and magnetisation (:class:`~mlcharge_workflows.savings.fallback.FallbackPolicy`).
    """

    name: str = "qe ml static"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    policy: FallbackPolicy = field(default_factory=FallbackPolicy)

    @job(output_schema=MLStaticDocument)
    def make(
        self, structure: Structure, prediction: Any = None, reference: Any = None
    ) -> MLStaticDocument:
        """Run in the job's folder. ``prediction``: a :class:`PredictionDocument` (or None)."""
        from mlcharge_workflows.engines.qe.core import run_qe_scf

        cwd = Path.cwd()
        start = None if prediction is None else prediction_density(prediction)
        skip = _get(prediction, "fallback") if prediction is not None else f"{PREDICTION_FAILED}: no prediction"
        if start is None and skip is None:
            skip = f"{PREDICTION_FAILED}: the prediction's density is neither on disk nor in the store"

        def run_ml() -> QETaskDocument:
            return run_qe_scf(structure, cwd / "ml_start", start=start, protocol=self.protocol,
                              nprocs=self.nprocs, expect_density_read=False,
                              allow_unconverged=True, task_label=f"{self.name} (ml start)")

        def run_atomic() -> QETaskDocument:
            folder = "atomic_rerun" if start is not None else "atomic"
            return run_qe_scf(structure, cwd / folder, protocol=self.protocol, nprocs=self.nprocs,
                              task_label=f"{self.name} (atomic start)")

        pred_m = _get(prediction, "total_magnetization")
        outcome = run_with_fallback(
            None if start is None else run_ml, run_atomic, len(structure), self.policy,
            reference_energy_eV=_get(reference, "energy_eV"),
            reference_magnetization=_get(reference, "total_magnetization"),
            predicted_magnetization=pred_m, skip_reason=skip,
        )
        attempts = [_attempt(s, t, r) for s, t, r in outcome.attempts]
        task = outcome.accepted  # None if the rerun from atoms failed too
        iters = [a.scf_iterations for a in attempts if a.scf_iterations is not None]
        return MLStaticDocument(
            dir_name=_get(task, "dir_name"), task=task, attempts=attempts,
            ml_density_used=outcome.ml_density_used, fallback=outcome.fallback,
            scf_iterations=_get(task, "scf_iterations"),
            scf_iterations_total=sum(iters) if iters else None,
            wall_s_total=sum(a.wall_s or 0.0 for a in attempts),
            cpu_s_total=sum(a.cpu_s or 0.0 for a in attempts), energy_eV=_get(task, "energy_eV"),
            converged=False if task is None else task.converged,
            total_magnetization=_get(task, "total_magnetization"), predicted_magnetization=pred_m,
        )


@dataclass
class MLQENonSCFMaker(Maker):
    """Bands (``mode='line'``) or uniform nscf (``'uniform'``, for DOS) from a predicted density.

    ``nbnd`` None: ``ceil(0.6 nelec) + 4`` bands, enough to see the gap in every protocol.
    ``skip_without_prediction``: return None (instead of raising ``ValueError``) when the
    prediction fell back (e.g. unsupported elements), as the comparison flow wants.
    """

    name: str = "qe ml non-scf"
    mode: Literal["line", "uniform"] = "line"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    nbnd: int | None = None
    skip_without_prediction: bool = False

    # No output_schema: jobflow would reject the documented None of a skipped run
    # ("Expected output of type QETaskDocument but got no output").
    @job
    def make(self, structure: Structure, prediction: Any) -> QETaskDocument | None:
        """Run in the job's folder from a :class:`PredictionDocument`."""
        from mlcharge_workflows.engines.qe.core import run_qe_nscf

        density = prediction_density(prediction)
        if density is None:
            why = _get(prediction, "fallback")
            if why and self.skip_without_prediction:
                return None
            raise ValueError(f"no predicted density to run non-SCF from ({why or 'no density'})")
        return run_qe_nscf(structure, Path.cwd(), density, mode=self.mode, protocol=self.protocol,
                           nprocs=self.nprocs, nbnd=self.nbnd or default_nbnd(structure),
                           task_label=f"{self.name} {self.mode}")


def default_nbnd(structure: Structure) -> int:
    """Bands for gap checks: ``ceil(0.6 * nelec) + 4`` (occupied bands plus a margin)."""
    from mlcharge_workflows.pseudo import n_valence_electrons

    return int(np.ceil(0.6 * n_valence_electrons(structure))) + 4


@dataclass
class QEAtomicNonSCFMaker(Maker):
    """Control run of the NSCF check: non-SCF from the superposition of atomic densities.

    The density is the pseudopotentials' ``PP_RHOATOM`` superposition (what pw.x's
    ``startingpot='atomic'`` uses), with the protocol's starting moments when spin-polarised.
    """

    name: str = "qe atomic non-scf"
    mode: Literal["line", "uniform"] = "line"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    nbnd: int | None = None

    @job(output_schema=QETaskDocument)
    def make(self, structure: Structure) -> QETaskDocument:
        """Run in the job's folder."""
        from mlcharge_workflows.density.qe_gvectors import qe_fft_grid
        from mlcharge_workflows.density.sad import superposition_density
        from mlcharge_workflows.engines.qe.core import run_qe_nscf
        from mlcharge_workflows.pseudo import get_pseudo, structure_elements

        els = structure_elements(structure)
        mag = None
        if self.protocol.is_spin_polarized(structure):
            mag = {el: self.protocol.starting_magnetization.get(el, 0.0) for el in els}
        _, ecutrho = self.protocol.cutoffs(structure)
        grid = superposition_density(
            structure, qe_fft_grid(structure.lattice.matrix, ecutrho),
            {el: get_pseudo(el).source for el in els}, mag,
        )
        return run_qe_nscf(structure, Path.cwd(), grid, mode=self.mode, protocol=self.protocol,
                           nprocs=self.nprocs, nbnd=self.nbnd or default_nbnd(structure),
                           task_label=f"{self.name} {self.mode}")
