"""jobflow Makers: predict a density, and VASP static / non-SCF runs started from it.

* :class:`MLDensityMaker` - structure -> CHGCAR in its job folder + a small
  :class:`MLDensityDocument` (the grid itself only in the ``data`` store, on request).
  Route it to a GPU worker with ``job.update_config({"manager_config": {"_fworker": "gpu"}})``.
* :class:`MLStaticMaker` - atomate2 ``StaticMaker`` that copies the predicted CHGCAR in,
  sets ``ICHARG = 1``, pins ``NGXF/NGYF/NGZF``, keeps ``CHGCAR.ml`` and adds
  :class:`~mlcharge_workflows.engines.vasp.handlers.MLStartFallbackHandler`.
  Without ``ml_density`` it replaces itself by predict + static, so it drops into
  atomate2 flows that call ``static_maker.make(structure, prev_dir=...)``.
* :class:`MLNonSCFMaker` - atomate2 ``NonSCFMaker`` (``ICHARG = 11``, line or uniform)
  on the predicted density instead of a previous run's CHGCAR.
* :class:`BaselineStaticMaker`, :class:`AtomicNonSCFMaker` - the same inputs started
  from atoms (``ICHARG = 2`` / ``12``), for comparisons.

Every VASP arm pins the same fine grid and sets ``ISTART = 0`` (no WAVECAR read), so
the arms differ only in their starting density.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomate2.vasp.jobs.base import vasp_job
from atomate2.vasp.jobs.core import NonSCFMaker, StaticMaker
from atomate2.vasp.sets.core import StaticSetGenerator
from jobflow import Flow, Maker, Response, job
from pymatgen.core import Structure

from mlcharge_workflows._compat import allow_replacement_output
from mlcharge_workflows.common.fallback import (
    ATOMIC_SPIN_START,
    UNSUPPORTED,
    FallbackPolicy,
    RunSummary,
)
from mlcharge_workflows.engines.vasp.density import (
    model_unknown_elements,
    predictor_name,
    write_predicted_chgcar,
)
from mlcharge_workflows.engines.vasp.handlers import (
    ACTIVE_STATUSES,
    ML_CHGCAR,
    MLStartFallbackHandler,
    new_ml_start_record,
    write_ml_start_record,
)
from mlcharge_workflows.engines.vasp.placement import place_density
from mlcharge_workflows.engines.vasp.parse import (
    count_attempts,
    task_field,
    task_magnetization,
    task_successful,
)
from mlcharge_workflows.engines.vasp.schemas import MLDensityDocument
from mlcharge_workflows.engines.vasp.sets import (
    ATOMIC_NSCF_INCAR,
    BASELINE_START_INCAR,
    ML_NSCF_INCAR,
    ML_START_INCAR,
    grid_incar,
    input_fine_grid,
    input_set,
    potcar_functional,
    with_incar,
)

if TYPE_CHECKING:
    from atomate2.vasp.sets.base import VaspInputGenerator

__all__ = [
    "AtomicNonSCFMaker",
    "BaselineStaticMaker",
    "MLDensityDocument",
    "MLDensityMaker",
    "MLFallbackStaticMaker",
    "MLNonSCFMaker",
    "MLStaticMaker",
]


@dataclass
class MLDensityMaker(Maker):
    """Predict the electron density and write the CHGCAR VASP will read.

    Parameters
    ----------
    input_set_generator
        The generator of the VASP run that will read the density: its POSCAR structure,
        ENCUT/PREC (fine grid) and POTCARs (NELECT) are used.
    predictor
        ``"model"`` (shipped model), ``"sad"``, ``"package.module:function"`` or a callable
        ``f(structure, shape) -> DensityGrid``.
    model_path
        Weights file for ``"model"`` (default: the shipped model).
    zval
        Per-element valence, checked against the run's POTCARs (a mismatch is an error).
    store_density
        Also put the grid (a :class:`DensityGrid`) in the jobflow ``data`` store (the
        JobStore needs one).
    allow_failure
        Return a document with ``error`` set (no CHGCAR) instead of failing the job when
        the prediction fails (e.g. an element the model does not know); an ML static
        given that document runs from atoms and records why.
    spin
        Start for magnetic cells with the shipped model: ``"atomic"`` (default, or
        ``MLCHARGE_MODEL_SPIN``) makes the model hand back the starting-moment atomic
        superposition, which is not an ML start: the document gets ``fallback =
        "atomic_spin_start: ..."``, no CHGCAR is kept and an ML static given it runs
        from atoms (``ICHARG = 2``) and says so; ``"model"`` uses the learned rho and m.
    device
        torch device of the model: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``;
        None: ``MLCHARGE_MODEL_DEVICE``, else ``"auto"``.
    unsupported
        Elements the shipped/weights model does not know (``predictor="model"``):
        ``"atoms"`` (default) returns a document with ``fallback =
        "unsupported_elements: ..."`` and no CHGCAR, so the ML static runs from atoms
        (``ICHARG = 2``) and records why instead of failing the flow; ``"error"`` fails.
    """

    name: str = "predict density"
    input_set_generator: VaspInputGenerator = field(default_factory=StaticSetGenerator)
    predictor: Any = "model"
    model_path: str | None = None
    zval: dict[str, float] | None = None
    store_density: bool = False
    allow_failure: bool = False
    spin: str | None = None
    device: str | None = None
    unsupported: str = "atoms"

    @job(data="density", output_schema=MLDensityDocument)
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> MLDensityDocument:
        """Predict on the run's POTCARs (never rescaled), write ``CHGCAR`` in the job folder."""
        t0 = time.perf_counter()
        if self.unsupported not in ("atoms", "error"):
            raise ValueError(f"unsupported must be 'atoms' or 'error', got {self.unsupported!r}")
        missing = model_unknown_elements(structure, self.model_path) if self.predictor == "model" else []
        if missing and self.unsupported == "atoms":
            return MLDensityDocument(
                dir_name=str(Path.cwd()),
                predictor=predictor_name(self.predictor),
                formula=structure.composition.reduced_formula,
                n_atoms=len(structure),
                fallback=f"{UNSUPPORTED}: {', '.join(missing)}",
                timings={"total_s": time.perf_counter() - t0},
            )
        try:
            grid, info = write_predicted_chgcar(
                structure,
                self.input_set_generator,
                "CHGCAR",
                predictor=self.predictor,
                model_path=self.model_path,
                zval=self.zval,
                prev_dir=prev_dir,
                spin=self.spin,
                device=self.device,
            )
        except Exception as err:
            if not self.allow_failure:
                raise
            return MLDensityDocument(
                dir_name=str(Path.cwd()),
                error=f"{type(err).__name__}: {err}",
                predictor=predictor_name(self.predictor),
                formula=structure.composition.reduced_formula,
                n_atoms=len(structure),
                timings={"total_s": time.perf_counter() - t0},
            )
        struct = info["structure"]
        if info.get("spin_start") == "atomic":
            Path("CHGCAR").unlink(missing_ok=True)  # not an ML start: never placed by mistake
            info.pop("path", None)
            return MLDensityDocument(
                dir_name=str(Path.cwd()),
                formula=struct.composition.reduced_formula,
                n_atoms=len(struct),
                fallback=f"{ATOMIC_SPIN_START}: the model returns the atomic superposition for "
                "magnetic cells (spin='model' or MLCHARGE_MODEL_SPIN=model uses its learned "
                "rho and m)",
                **info,
            )
        return MLDensityDocument(
            dir_name=str(Path.cwd()),
            formula=struct.composition.reduced_formula,
            n_atoms=len(struct),
            density=grid if self.store_density else None,
            **info,
        )


def _density_path(ml_density: Any) -> str | None:
    """CHGCAR path (or run folder) from a path, an MLDensityDocument or its dict.

    None for a document of a failed prediction (``error`` set) or of a prediction that
    is not an ML start (``fallback`` set).
    """
    if isinstance(ml_density, MLDensityDocument):
        ml_density = ml_density.model_dump()
    if isinstance(ml_density, dict):
        if ml_density.get("error") or ml_density.get("fallback"):
            return None
        for key in ("path", "dir_name"):
            if ml_density.get(key):
                return str(ml_density[key])
        raise ValueError(f"ml_density dict has no 'path' or 'dir_name': {sorted(ml_density)}")
    if isinstance(ml_density, str | Path):
        return str(ml_density)
    raise ValueError(f"ml_density must be a path or an MLDensityDocument, got {type(ml_density)}")


def _copy_maker(maker: Any, generator: Any, **changes: Any) -> Any:
    """A copy of ``maker`` (own kwargs dicts) with a new generator: makers stay reusable."""
    return replace(
        maker,
        input_set_generator=generator,
        write_input_set_kwargs=dict(maker.write_input_set_kwargs),
        copy_vasp_kwargs=dict(maker.copy_vasp_kwargs),
        run_vasp_kwargs=dict(maker.run_vasp_kwargs),
        task_document_kwargs=dict(maker.task_document_kwargs),
        **changes,
    )


def _predict_then(maker: Any, structure: Structure, prev_dir: Any, **kwargs: Any) -> Response:
    """Replace the current job by [predict density, the same job with the prediction]."""
    if maker.density_maker is None:
        raise ValueError(f"{maker.name}: no ml_density given and density_maker is None")
    density_maker = replace(maker.density_maker, input_set_generator=maker.input_set_generator)
    if maker.zval is not None and density_maker.zval is None:
        density_maker = replace(density_maker, zval=maker.zval)
    predict = density_maker.make(structure, prev_dir=prev_dir)
    run = maker.make(structure, prev_dir=prev_dir, ml_density=predict.output, **kwargs)
    allow_replacement_output()  # run.output itself is a validated TaskDoc
    return Response(replace=Flow([predict, run], output=run.output, name=maker.name))


def _annotate(response: Response) -> Response:
    """Add every SCF attempt (custodian reruns included) to the task document."""
    doc = response.output
    if doc is not None and getattr(doc, "dir_name", None):
        extra = dict(doc.additional_json or {})
        folder = str(doc.dir_name).split(":", 1)[-1]
        try:
            extra["scf_attempts"] = count_attempts(folder)
        except (OSError, ValueError) as err:
            extra["scf_attempts_error"] = str(err)
        doc.additional_json = extra
    return response


@dataclass
class MLStaticMaker(StaticMaker):
    """atomate2 static SCF started from a predicted (or any given) CHGCAR.

    Parameters
    ----------
    density_maker
        Used when ``make`` gets no ``ml_density`` (the job replaces itself by a
        prediction job followed by this static); None forbids that.
    max_ml_restarts
        Reruns from ``CHGCAR.ml`` after a failed SCF before falling back to atoms.
    zval
        Per-element valence overriding the POTCAR table (electron-count normalisation).
    fallback_policy
        When a converged ML-started run is distrusted: a different magnetic state or
        energy than ``reference`` (the same static from atoms), or, without a reference,
        a different magnetic state than the predicted density's. A distrusted run is kept
        in the store and rerun from atoms by :class:`MLFallbackStaticMaker`, which
        replaces this job (its output is the rerun, with the rejected attempt recorded).
    """

    name: str = "ml static"
    density_maker: MLDensityMaker | None = field(default_factory=MLDensityMaker)
    max_ml_restarts: int = 1
    zval: dict[str, float] | None = None
    fallback_policy: FallbackPolicy = field(default_factory=FallbackPolicy)

    @vasp_job
    def make(
        self,
        structure: Structure,
        prev_dir: str | Path | None = None,
        ml_density: Any = None,
        reference: Any = None,
    ) -> Response:
        """Run the static from ``ml_density`` (CHGCAR path, run folder or MLDensityDocument).

        ``reference``: the same static run from atoms (a TaskDoc, or a dict with
        ``energy_eV`` and ``total_magnetization``), against which the ML-started result
        is checked (see ``fallback_policy``).
        """
        if ml_density is None:
            return _predict_then(self, structure, prev_dir, reference=reference)
        source = _density_path(ml_density)
        if source is None:  # no ML start: run from atoms, say why
            return self._from_atoms(structure, prev_dir, ml_density)
        gen = with_incar(self.input_set_generator, ML_START_INCAR)
        vis = input_set(gen, structure, prev_dir)
        shape = input_fine_grid(vis)
        functional = potcar_functional(gen)
        placed = place_density(source, vis, ".", functional, self.zval, ("CHGCAR", ML_CHGCAR))
        placed.update(_prediction_info(ml_density))
        write_ml_start_record(new_ml_start_record(placed, self.max_ml_restarts))
        maker = _copy_maker(self, with_incar(gen, grid_incar(shape)))
        handlers = maker.run_vasp_kwargs.get("handlers")
        if handlers is None:
            from atomate2.vasp.run import DEFAULT_HANDLERS

            handlers = DEFAULT_HANDLERS
        handlers = [h for h in handlers if not isinstance(h, MLStartFallbackHandler)]
        fallback = MLStartFallbackHandler(self.max_ml_restarts)
        maker.run_vasp_kwargs["handlers"] = [*handlers, fallback]
        response = super(MLStaticMaker, maker).make.original(maker, structure, prev_dir)
        _gzip_ml_copy()
        response = _annotate(response)
        return self._check_result(response, structure, prev_dir, ml_density, reference)

    def _check_result(
        self, response: Response, structure: Structure, prev_dir: Any, ml_density: Any,
        reference: Any,
    ) -> Response:
        """Accept the ML-started result, or keep it and replace this job by a rerun from atoms."""
        doc = response.output
        extra = dict(getattr(doc, "additional_json", None) or {})
        record = extra.get("ml_start") or {}
        if doc is None or record.get("status") not in ACTIVE_STATUSES:
            return response  # the handler already abandoned the ML start (run from atoms)
        ref_energy, ref_mag = _reference_values(reference)
        reason = self.fallback_policy.check(
            RunSummary(
                converged=task_successful(doc),
                scf_iterations=sum(a["scf_iterations"] for a in extra.get("scf_attempts", [])),
                energy_eV=task_field(doc, "output", "energy"),
                total_magnetization=task_magnetization(doc),
            ),
            n_atoms=len(structure),
            reference_energy_eV=ref_energy,
            reference_magnetization=ref_mag,
            predicted_magnetization=task_field(ml_density, "total_magnetization"),
        )
        if reason is None:
            return response
        record = dict(record)
        record["events"] = [*record.get("events", []), {
            "attempt": len(record.get("events", [])) + 1, "action": "rejected", "reason": reason,
        }]
        record.update(status="rejected", fallback=reason)
        write_ml_start_record(record)
        extra["ml_start"] = record
        doc.additional_json = extra
        rerun_maker = _copy_maker(
            MLFallbackStaticMaker(name=f"{self.name} rerun from atoms"),
            self.input_set_generator,
        )
        for attr in ("run_vasp_kwargs", "task_document_kwargs", "write_input_set_kwargs"):
            getattr(rerun_maker, attr).update(getattr(self, attr))
        rejected = {
            "record": record,
            "scf_attempts": extra.get("scf_attempts", []),
            "dir_name": doc.dir_name,
            "energy_eV": task_field(doc, "output", "energy"),
            "total_magnetization": task_magnetization(doc),
        }
        rerun = rerun_maker.make(structure, prev_dir=prev_dir, rejected=rejected)
        return Response(output=doc, replace=rerun)

    def _from_atoms(self, structure: Structure, prev_dir: Any, ml_density: Any) -> Response:
        gen = with_incar(self.input_set_generator, BASELINE_START_INCAR)
        shape = input_fine_grid(input_set(gen, structure, prev_dir))
        info = _prediction_info(ml_density)
        record = new_ml_start_record(info, 0)
        reason = info.get("fallback") or f"prediction failed: {info.get('error')}"
        record.update(status="abandoned", fallback=reason, start="atomic")
        write_ml_start_record(record)
        for stale in ("CHGCAR", "WAVECAR"):
            Path(stale).unlink(missing_ok=True)
        maker = _copy_maker(self, with_incar(gen, grid_incar(shape)))
        return _annotate(super(MLStaticMaker, maker).make.original(maker, structure, prev_dir))


def _reference_values(reference: Any) -> tuple[float | None, float | None]:
    """(energy in eV, total magnetisation in μB/cell) of a reference TaskDoc or dict."""
    if reference is None:
        return None, None
    if isinstance(reference, dict) and ("energy_eV" in reference or "total_magnetization" in reference):
        energy, mag = reference.get("energy_eV"), reference.get("total_magnetization")
    else:
        energy, mag = task_field(reference, "output", "energy"), task_magnetization(reference)
        if task_successful(reference) is False:
            return None, None  # an unconverged baseline is no reference
    return (None if energy is None else float(energy)), (None if mag is None else float(mag))


def _prediction_info(ml_density: Any) -> dict[str, Any]:
    """What the ML-start record keeps from the prediction document."""
    if isinstance(ml_density, MLDensityDocument):
        ml_density = ml_density.model_dump()
    if not isinstance(ml_density, dict):
        return {}
    keys = ("predictor", "model_version", "timings", "valence_mismatch", "reference", "error",
            "fallback", "spin_start", "total_magnetization", "dir_name")
    return {k: ml_density.get(k) for k in keys}


def _gzip_ml_copy() -> None:
    """Compress CHGCAR.ml once the run is over (atomate2 only zips VASP's own files)."""
    from atomate2 import SETTINGS
    from monty.shutil import compress_file

    if SETTINGS.VASP_ZIP_FILES and Path(ML_CHGCAR).exists():
        compress_file(ML_CHGCAR)


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
        maker = _copy_maker(self, with_incar(gen, grid_incar(shape)))
        response = super(BaselineStaticMaker, maker).make.original(maker, structure, prev_dir)
        return _annotate(response)


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


def _nscf_maker(maker: NonSCFMaker, structure: Structure, prev_dir: Any, mode: str, start: dict):
    gen = copy.deepcopy(maker.input_set_generator)
    gen.mode = mode
    gen = with_incar(gen, start)
    vis = input_set(gen, structure, prev_dir)
    new = _copy_maker(maker, with_incar(gen, grid_incar(input_fine_grid(vis))))
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
            return _predict_then(self, structure, prev_dir, mode=mode)
        source = _density_path(ml_density)
        if source is None:
            raise ValueError(f"{self.name}: no predicted density ({_prediction_info(ml_density)})")
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
