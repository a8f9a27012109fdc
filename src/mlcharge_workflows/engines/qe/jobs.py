"""jobflow Makers for pw.x, in atomate2's conventions (a small dataclass with ``name`` and ``make``).

* :class:`QEStaticMaker`, :class:`QENonSCFMaker` - one pw.x SCF / non-SCF run, from atoms
  or from a density on disk;
* :class:`QEPredictDensityMaker` - predicts the density, writes it once as
  ``out/pwscf.save/charge-density.dat`` in its folder, exactly as pw.x takes it
  (:func:`~mlcharge_workflows.engines.qe.core.write_start_density`; the SCF copies it as is)
  and returns a small :class:`~mlcharge_workflows.common.schemas.PredictionDocument`;
  the grid itself goes to jobflow's additional ``"data"`` store (key ``density``). torch
  is imported inside the job, and ``manager_config`` routes it to a GPU worker;
* :class:`MLQEStaticMaker` - the SCF from the prediction, rerun from atoms when it is not
  trusted (:mod:`mlcharge_workflows.common.fallback`), keeping every attempt;
* :class:`MLQENonSCFMaker` - bands (line) or a uniform nscf (DOS) straight from the
  prediction, skipping the SCF; :class:`QEAtomicNonSCFMaker` - the same from atoms.

Each job runs in the current working directory, as atomate2's jobs do: give every job its
own folder (``run_locally(..., create_folders=True)`` or a FireWorks launch directory).

>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> predict = QEPredictDensityMaker(manager_config={"_fworker": "gpu"}).make(si)
>>> predict.config.manager_config
{'_fworker': 'gpu'}
>>> atomic = QEStaticMaker().make(si)
>>> restart = QEStaticMaker(name="qe static from density").make(
...     si, start_density=atomic.output.dir_name)
>>> bands = QENonSCFMaker(mode="line").make(si, atomic.output.dir_name)
>>> [j.name for j in (atomic, restart, bands)]
['qe static', 'qe static from density', 'qe non-scf']
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobflow import Maker, job

from mlcharge_workflows.common.documents import get_field
from mlcharge_workflows.common.fallback import (
    ATOMIC_SPIN_START,
    PREDICTION_FAILED,
    UNSUPPORTED,
    FallbackPolicy,
    run_with_fallback,
)
from mlcharge_workflows.common.schemas import ArmAttempt, PredictionDocument
from mlcharge_workflows.density.qe_gvectors import qe_fft_grid
from mlcharge_workflows.density.sad import superposition_density
from mlcharge_workflows.engines.qe.core import run_qe_nscf, run_qe_scf, write_start_density
from mlcharge_workflows.engines.qe.density import (
    load_density_model,
    model_version,
    predict_grid,
    prediction_density,
    unsupported_elements,
)
from mlcharge_workflows.engines.qe.schemas import MLStaticDocument, QETaskDocument
from mlcharge_workflows.engines.qe.sets import OUTDIR, PREFIX, QEProtocol, default_nbnd
from mlcharge_workflows.pseudo import pseudo_record, structure_elements

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = [
    "MLQENonSCFMaker",
    "MLQEStaticMaker",
    "QEAtomicNonSCFMaker",
    "QENonSCFMaker",
    "QEPredictDensityMaker",
    "QEStaticMaker",
]

#: What the prediction does for elements the model does not know (see
#: :class:`QEPredictDensityMaker`): measured in docs/benchmarks.md ("Unsupported elements").
UNSUPPORTED_DEFAULT: Literal["partial", "atoms"] = "partial"

#: File the prediction job writes, relative to its folder.
PREDICTED_FILE = f"{OUTDIR}/{PREFIX}.save/charge-density.dat"


@dataclass
class QEStaticMaker(Maker):
    """One pw.x SCF under the fixed protocol, from atoms or from a density on disk.

    Parameters
    ----------
    name
        Job name.
    protocol
        The comparison protocol (identical in every arm).
    nprocs
        MPI processes; ``None`` uses ``MLCHARGE_QE_NPROCS``.
    expect_density_read
        Fail if a density start was given but pw.x did not read it.
    """

    name: str = "qe static"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    expect_density_read: bool = True

    @job(output_schema=QETaskDocument)
    def make(self, structure: Structure, start_density: str | Path | None = None) -> QETaskDocument:
        """Run the SCF in the job's folder.

        ``start_density`` is ``None`` (atomic superposition) or a path: an earlier QE job's
        ``output.dir_name`` (a reference works), a QE outdir / ``.save`` folder, a
        ``charge-density.dat`` or a CHGCAR for the same cell and species order.
        """
        return run_qe_scf(
            structure,
            Path.cwd(),
            start="atomic" if start_density is None else start_density,
            protocol=self.protocol,
            nprocs=self.nprocs,
            expect_density_read=self.expect_density_read,
            task_label=self.name,
        )


@dataclass
class QENonSCFMaker(Maker):
    """Non-SCF pw.x run from a density: line-mode bands or a uniform mesh (for DOS).

    Parameters
    ----------
    mode
        ``"line"`` (high-symmetry path, ``calculation='bands'``) or ``"uniform"``
        (``calculation='nscf'`` on the protocol's ``nscf_kspacing`` mesh).
    nbnd
        Number of bands; ``None`` keeps pw.x's default.
    """

    name: str = "qe non-scf"
    mode: Literal["line", "uniform"] = "line"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    nbnd: int | None = None

    @job(output_schema=QETaskDocument)
    def make(self, structure: Structure, density_dir: str | Path) -> QETaskDocument:
        """Run in the job's folder from ``density_dir`` (any path ``run_qe_scf`` accepts)."""
        return run_qe_nscf(
            structure,
            Path.cwd(),
            density_dir,
            mode=self.mode,
            protocol=self.protocol,
            nprocs=self.nprocs,
            nbnd=self.nbnd,
            task_label=f"{self.name} {self.mode}",
        )


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


def _attempt(start: str, task: QETaskDocument | None, rejected: str | None) -> ArmAttempt:
    if task is None:
        return ArmAttempt(start=start, rejected=rejected)
    iters = task.scf_iterations if task.scf_iterations is not None else len(task.scf_accuracy_Ry)
    wall = (task.elapsed_s or task.wall_time_s or 0.0) + (task.prep_wall_time_s or 0.0)
    return ArmAttempt(
        start=start, scf_iterations=iters, energy_eV=task.energy_eV, converged=task.converged,
        total_magnetization=task.total_magnetization, wall_s=wall, cpu_s=task.cpu_time_s,
        density_read_from_file=task.density_initialised, dir_name=task.dir_name, rejected=rejected,
        scf_accuracy_Ry=list(task.scf_accuracy_Ry),
    )


@dataclass
class MLQEStaticMaker(Maker):
    """SCF started from a predicted density, rerun from atoms when it is not trusted.

    The ML attempt runs in ``ml_start/`` and a rerun in ``atomic_rerun/`` of the job's
    folder. ``reference`` (the baseline's task document, when known) supplies the
    expected energy and magnetisation (:class:`~mlcharge_workflows.common.fallback.FallbackPolicy`).
    """

    name: str = "ml static"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    policy: FallbackPolicy = field(default_factory=FallbackPolicy)

    @job(output_schema=MLStaticDocument)
    def make(
        self, structure: Structure, prediction: Any = None, reference: Any = None
    ) -> MLStaticDocument:
        """Run in the job's folder. ``prediction``: a :class:`PredictionDocument` (or None)."""
        cwd = Path.cwd()
        start = None if prediction is None else prediction_density(prediction)
        skip = get_field(prediction, "fallback") if prediction is not None else f"{PREDICTION_FAILED}: no prediction"
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

        pred_m = get_field(prediction, "total_magnetization")
        outcome = run_with_fallback(
            None if start is None else run_ml, run_atomic, len(structure), self.policy,
            reference_energy_eV=get_field(reference, "energy_eV"),
            reference_magnetization=get_field(reference, "total_magnetization"),
            reference_absolute_magnetization=get_field(reference, "absolute_magnetization"),
            predicted_magnetization=pred_m, skip_reason=skip,
        )
        attempts = [_attempt(s, t, r) for s, t, r in outcome.attempts]
        task = outcome.accepted  # None if the rerun from atoms failed too
        iters = [a.scf_iterations for a in attempts if a.scf_iterations is not None]
        return MLStaticDocument(
            dir_name=get_field(task, "dir_name"), task=task, attempts=attempts,
            ml_density_used=outcome.ml_density_used, fallback=outcome.fallback,
            scf_iterations=get_field(task, "scf_iterations"),
            scf_iterations_total=sum(iters) if iters else None,
            wall_s_total=sum(a.wall_s or 0.0 for a in attempts),
            cpu_s_total=sum(a.cpu_s or 0.0 for a in attempts), energy_eV=get_field(task, "energy_eV"),
            converged=False if task is None else task.converged,
            total_magnetization=get_field(task, "total_magnetization"), predicted_magnetization=pred_m,
        )


@dataclass
class MLQENonSCFMaker(Maker):
    """Bands (``mode='line'``) or uniform nscf (``'uniform'``, for DOS) from a predicted density.

    ``nbnd`` None: ``ceil(0.6 nelec) + 4`` bands, enough to see the gap in every protocol.
    ``skip_without_prediction``: return None (instead of raising ``ValueError``) when the
    prediction fell back (e.g. unsupported elements), as the comparison flow wants.
    """

    name: str = "ml non-scf"
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
        density = prediction_density(prediction)
        if density is None:
            why = get_field(prediction, "fallback")
            if why and self.skip_without_prediction:
                return None
            raise ValueError(f"no predicted density to run non-SCF from ({why or 'no density'})")
        return run_qe_nscf(structure, Path.cwd(), density, mode=self.mode, protocol=self.protocol,
                           nprocs=self.nprocs, nbnd=self.nbnd or default_nbnd(structure, self.protocol),
                           task_label=f"{self.name} {self.mode}")


@dataclass
class QEAtomicNonSCFMaker(Maker):
    """Control run of the NSCF check: non-SCF from the superposition of atomic densities.

    The density is the pseudopotentials' ``PP_RHOATOM`` superposition (what pw.x's
    ``startingpot='atomic'`` uses), with the protocol's starting moments when spin-polarised.
    """

    name: str = "atomic non-scf"
    mode: Literal["line", "uniform"] = "line"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    nbnd: int | None = None

    @job(output_schema=QETaskDocument)
    def make(self, structure: Structure) -> QETaskDocument:
        """Run in the job's folder."""
        els = structure_elements(structure)
        mag = None
        if self.protocol.is_spin_polarized(structure):
            mag = {el: self.protocol.starting_magnetization.get(el, 0.0) for el in els}
        _, ecutrho = self.protocol.cutoffs(structure)
        grid = superposition_density(
            structure, qe_fft_grid(structure.lattice.matrix, ecutrho),
            {el: info.source for el, info in self.protocol.pseudos(structure).items()}, mag,
        )
        return run_qe_nscf(structure, Path.cwd(), grid, mode=self.mode, protocol=self.protocol,
                           nprocs=self.nprocs, nbnd=self.nbnd or default_nbnd(structure, self.protocol),
                           task_label=f"{self.name} {self.mode}")
