"""The prediction job of the VASP engine, and how the run jobs read what it returns.

:class:`MLDensityMaker` turns a structure into a CHGCAR in its job folder plus a small
:class:`~mlcharge_workflows.engines.vasp.schemas.MLDensityDocument` (the grid itself only
in the ``data`` store, on request). Route it to a GPU worker with
``job.update_config({"manager_config": {"_fworker": "gpu"}})``.

:func:`density_path`, :func:`prediction_info` and :func:`predict_then` are what the ML
static and non-SCF Makers (:mod:`.static`, :mod:`.nscf`) use to start from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomate2.vasp.sets.core import StaticSetGenerator
from jobflow import Flow, Maker, Response, job
from pymatgen.core import Structure

from mlcharge_workflows._compat import allow_replacement_output
from mlcharge_workflows.common.fallback import ATOMIC_SPIN_START, UNSUPPORTED
from mlcharge_workflows.engines.vasp.density import (
    model_unknown_elements,
    predictor_name,
    write_predicted_chgcar,
)
from mlcharge_workflows.engines.vasp.schemas import MLDensityDocument

if TYPE_CHECKING:
    from atomate2.vasp.sets.base import VaspInputGenerator

__all__ = ["MLDensityMaker", "density_path", "predict_then", "prediction_info"]


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
    paw_occupancies
        ``"prev_dir"`` (default): copy the PAW occupancies of ``prev_dir``'s CHGCAR into
        the prediction when that run used the same POTCARs and LMAXMIX (a relaxation
        before the static); ``"none"``: write none. VASP discards a CHGCAR without them
        for PAW POTCARs; :class:`MLStaticMaker` then adds a one-step donor run's
        (docs/vasp-guide.md). The document's ``paw_occupancies`` / ``paw_occupancies_note``
        say what was done.
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
    paw_occupancies: str = "prev_dir"

    @job(data="density", output_schema=MLDensityDocument)
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> MLDensityDocument:
        """Predict on the run's POTCARs (never rescaled), write ``CHGCAR`` in the job folder."""
        t0 = time.perf_counter()
        if self.unsupported not in ("atoms", "error"):
            raise ValueError(f"unsupported must be 'atoms' or 'error', got {self.unsupported!r}")
        if self.paw_occupancies not in ("prev_dir", "none"):
            raise ValueError(
                f"paw_occupancies must be 'prev_dir' or 'none', got {self.paw_occupancies!r}")
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
                paw_occupancies="prev_dir" if self.paw_occupancies == "prev_dir" else None,
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


def density_path(ml_density: Any) -> str | None:
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


def prediction_info(ml_density: Any) -> dict[str, Any]:
    """What the ML-start record keeps from the prediction document."""
    if isinstance(ml_density, MLDensityDocument):
        ml_density = ml_density.model_dump()
    if not isinstance(ml_density, dict):
        return {}
    keys = ("predictor", "model_version", "timings", "valence_mismatch", "reference", "error",
            "fallback", "spin_start", "total_magnetization", "dir_name", "paw_occupancies",
            "paw_occupancies_note", "paw")
    return {k: ml_density.get(k) for k in keys}


def predict_then(maker: Any, structure: Structure, prev_dir: Any, **kwargs: Any) -> Response:
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
