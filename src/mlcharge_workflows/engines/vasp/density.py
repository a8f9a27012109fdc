"""Predict a density for VASP and place it as the CHGCAR of a run folder.

* :func:`resolve_predictor` turns a predictor spec into ``f(structure, shape) -> DensityGrid``:
  ``"model"`` (the shipped e3nn model, torch imported only here), ``"sad"``
  (superposition of atomic densities of the QE pseudopotentials: the model-free
  fallback), ``"package.module:function"`` or a callable.
* :func:`write_predicted_chgcar` predicts on the exact structure and fine grid the
  input set writes, normalises to VASP's NELECT and writes the CHGCAR.
* :func:`place_density` copies a CHGCAR (predicted, or a converged one for the oracle
  arm) into a run folder, checking atom order, cell, grid and electron count.
"""

from __future__ import annotations

import importlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monty.io import zopen
from monty.os.path import zpath

from mlcharge_workflows.density.chgcar import read_chgcar, write_chgcar
from mlcharge_workflows.density.sad import superposition_density
from mlcharge_workflows.engines.vasp.sets import (
    expected_nelect,
    input_fine_grid,
    input_set,
    potcar_symbols,
)
from mlcharge_workflows.pseudo import get_pseudo, stage_pseudos

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from pymatgen.io.vasp.inputs import VaspInput
    from pymatgen.io.vasp.sets import VaspInputSet

    from mlcharge_workflows.density.grid import DensityGrid

Predictor = Callable[["Structure", tuple[int, int, int]], "DensityGrid"]

#: Relative electron-count error below which a CHGCAR is copied byte for byte.
NELECT_RTOL = 1e-6

__all__ = [
    "place_density",
    "predictor_name",
    "resolve_predictor",
    "write_predicted_chgcar",
]


def _model_predictor(model_path: str | Path | None, spin: str | None = None) -> Predictor:
    from mlcharge_workflows.model import load_model, model_version, predict_density  # torch: here

    model = load_model(model_path) if model_path else load_model()
    version = model_version(model)

    def predict(structure: Structure, shape: tuple[int, int, int]) -> DensityGrid:
        grid = predict_density(structure, shape=shape, model=model, spin=spin)
        grid.metadata["model_version"] = grid.metadata.get("model_version") or version
        return grid

    return predict


def _sad_predictor(structure: Structure, shape: tuple[int, int, int]) -> DensityGrid:

    elements = sorted({site.specie.symbol for site in structure})
    with tempfile.TemporaryDirectory() as tmp:
        folder = stage_pseudos(elements, tmp)
        pseudos = {el: folder / get_pseudo(el).filename for el in elements}
        grid = superposition_density(structure, shape, pseudos)
    grid.metadata["model_version"] = "sad"
    return grid


def resolve_predictor(
    spec: str | Predictor = "model",
    model_path: str | Path | None = None,
    spin: str | None = None,
):
    """``f(structure, shape) -> DensityGrid`` for a predictor spec (see module docstring).

    ``spin`` (``"atomic"`` or ``"model"``) is the shipped model's start for magnetic cells
    (see :func:`mlcharge_workflows.model.predict_density`); other predictors ignore it.
    """
    if callable(spec):
        return spec
    if spec == "model":
        return _model_predictor(model_path, spin)
    if spec == "sad":
        return _sad_predictor
    if isinstance(spec, str) and ":" in spec:
        module, _, name = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import predictor {spec!r}: {err}") from None
    raise ValueError(
        f"unknown predictor {spec!r}: use 'model', 'sad', 'package.module:function' or a callable"
    )


def predictor_name(spec: str | Predictor) -> str:
    """Printable name of a predictor spec."""
    if callable(spec):
        return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"
    return str(spec)


def _model_valence(elements: list[str]) -> dict[str, float | None]:
    """Valence of the QE pseudopotentials the model was trained with (None if unknown)."""
    out: dict[str, float | None] = {}
    for el in elements:
        try:
            out[el] = float(get_pseudo(el).z_valence)
        except (ValueError, OSError):
            out[el] = None
    return out


def _electron_info(
    grid: DensityGrid, vis: VaspInput, functional: str, zval: dict[str, float] | None
) -> dict[str, Any]:
    nelect, source, by_element = expected_nelect(vis, functional=functional, zval=zval)
    model = _model_valence(list(by_element))
    mismatch = {
        el: {"model": model[el], "potcar": z}
        for el, z in by_element.items()
        if model[el] is not None and abs(model[el] - z) > 1e-6
    }
    n_pred = grid.n_electrons
    return {
        "n_electrons_predicted": n_pred,
        "nelect": nelect,
        "nelect_source": source,
        "zval_potcar": by_element,
        "valence_mismatch": mismatch,
        "scale": nelect / n_pred if n_pred > 0 else None,
    }


def write_predicted_chgcar(
    structure: Structure,
    generator: VaspInputSet,
    path: str | Path = "CHGCAR",
    predictor: str | Predictor = "model",
    model_path: str | Path | None = None,
    zval: dict[str, float] | None = None,
    prev_dir: str | Path | None = None,
    spin: str | None = None,
) -> tuple[DensityGrid, dict[str, Any]]:
    """Predict the density for the inputs ``generator`` writes and save it as a CHGCAR.

    The prediction uses the input set's POSCAR structure and fine grid; the total is
    scaled to integrate to NELECT (the model predicts the valence of QE
    pseudopotentials, which can differ from the POTCAR valence: recorded in
    ``valence_mismatch``). Returns the written grid and a summary dictionary.
    """

    t0 = time.perf_counter()
    vis = input_set(generator, structure, prev_dir)
    struct = vis["POSCAR"].structure
    shape = input_fine_grid(vis)
    predict = resolve_predictor(predictor, model_path, spin)
    t1 = time.perf_counter()
    grid = predict(struct, shape)
    t2 = time.perf_counter()
    if grid.shape != tuple(shape):
        grid = grid.resampled(shape)
    grid.check_matches(struct)
    functional = getattr(generator, "user_potcar_functional", None) or "PBE_54"
    info = _electron_info(grid, vis, functional, zval)
    if info["scale"] is None or not np.isfinite(info["scale"]):
        raise ValueError(f"predicted density integrates to {info['n_electrons_predicted']} e")
    grid = grid.normalized(info["nelect"])
    if int(vis["INCAR"].get("ISPIN", 1)) != 2 and grid.magnetization is not None:
        grid = replace(grid, magnetization=None)  # a non-spin run reads no magnetisation
    write_chgcar(grid, path)
    t3 = time.perf_counter()
    incar = vis["INCAR"]
    info.update(
        path=str(Path(path).resolve()),
        grid_shape=list(shape),
        structure=struct,
        predictor=predictor_name(predictor),
        model_version=grid.metadata.get("model_version"),
        spin_start=grid.metadata.get("spin_start"),
        total_magnetization=grid.total_magnetization if grid.magnetization is not None else None,
        incar={k: incar.get(k) for k in ("ENCUT", "PREC", "ISPIN", "NGXF", "NGYF", "NGZF")},
        potcar_symbols=potcar_symbols(vis),
        timings={"setup_s": t1 - t0, "predict_s": t2 - t1, "write_s": t3 - t2, "total_s": t3 - t0},
    )
    return grid, info


def _chgcar_in(source: str | Path) -> Path:
    """The CHGCAR file of ``source``: a file, or a run folder (``host:/path`` allowed, as
    atomate2 writes ``dir_name``; the folder must be reachable on this machine)."""
    text = str(source)
    if re.match(r"^[\w.-]+:/", text):
        text = text.split(":", 1)[1]
    source = Path(text)
    if source.is_dir():
        for name in ("CHGCAR", "CHGCAR.ml"):
            candidate = Path(zpath(str(source / name)))
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"no CHGCAR in {source}")
    candidate = Path(zpath(str(source)))
    if not candidate.exists():
        raise FileNotFoundError(f"CHGCAR not found: {source}")
    return candidate


def place_density(
    source: str | Path,
    vis: VaspInput,
    directory: str | Path = ".",
    functional: str = "PBE_54",
    zval: dict[str, float] | None = None,
    names: tuple[str, ...] = ("CHGCAR",),
) -> dict[str, Any]:
    """Put the CHGCAR at ``source`` (file or run folder) into ``directory`` for the inputs ``vis``.

    Raises ``ValueError`` if the CHGCAR is for another cell or atom order than the POSCAR
    of ``vis``. A CHGCAR on another grid is Fourier-resampled onto VASP's fine grid; one
    that does not integrate to NELECT is rescaled. Otherwise the file is copied byte for
    byte (keeping PAW occupancies, as the oracle arm needs). Returns what was done.
    """

    src = _chgcar_in(source)
    struct = vis["POSCAR"].structure
    shape = tuple(input_fine_grid(vis))
    grid = read_chgcar(src)
    try:
        grid.check_matches(struct)
    except ValueError as err:
        raise ValueError(f"{src} does not match the POSCAR VASP will read: {err}") from None
    info = _electron_info(grid, vis, functional, zval)
    info.update(source=str(src), source_grid=list(grid.shape), grid_shape=list(shape))
    resample = grid.shape != shape
    rescale = abs(info["n_electrons_predicted"] - info["nelect"]) > NELECT_RTOL * info["nelect"]
    directory = Path(directory)
    first = directory / names[0]
    if not resample and not rescale:
        with zopen(str(src), "rb") as fin, open(first, "wb") as fout:
            shutil.copyfileobj(fin, fout)  # byte for byte, PAW occupancies included
        info["written"] = "copied"
    else:
        if resample:
            grid = grid.resampled(shape)
        grid = grid.normalized(info["nelect"])
        write_chgcar(grid, first)
        info["written"] = "resampled" if resample else "rescaled"
    info["has_paw_occupancies"] = bool(grid.metadata.get("data_aug"))
    for name in names[1:]:
        shutil.copyfile(first, directory / name)
    return info
