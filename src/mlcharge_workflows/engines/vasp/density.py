"""Predict a density for VASP and place it as the CHGCAR of a run folder.

* :func:`potcar_references` reads the atomic pseudo charge density of every POTCAR of
  the run (pymatgen's ``Potcar`` from ``PMG_VASP_PSP_DIR``): the reference VASP itself
  superposes for ``ICHARG = 2``. Without POTCAR data (a ``POTCAR.spec`` of symbols only)
  it refuses (:class:`PotcarDataError`): no start density is made for unknown POTCARs.
* :func:`resolve_predictor` turns a predictor spec into ``f(structure, shape) -> DensityGrid``:
  ``"model"`` (the shipped e3nn model on the POTCAR reference, torch imported only here),
  ``"sad"`` (VASP's own superposition of the POTCAR densities: the model-free start),
  ``"package.module:function"`` or a callable.
* :func:`write_predicted_chgcar` predicts on the exact structure, fine grid and MAGMOM the
  input set writes and writes the CHGCAR in VASP's layout (for ISPIN=2 with the moment line
  holding that MAGMOM). The density must integrate to NELECT by itself (reference valence =
  POTCAR ZVAL): it is never rescaled to fit. A prediction has no PAW one-centre occupancies
  and none are invented: without them VASP discards the file for PAW POTCARs (see
  docs/vasp-guide.md); ``paw_occupancies=`` copies those of a CHGCAR of the same cell.
* placing a CHGCAR in a run folder is :mod:`mlcharge_workflows.engines.vasp.placement`
  (``place_density`` is importable from here too).
"""

from __future__ import annotations

import importlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monty.os.path import zpath

from mlcharge_workflows.density.chgcar import read_chgcar, write_chgcar
from mlcharge_workflows.density.potcar import (
    PotcarAtomicDensity,
    potcar_atomic_density,
    potcar_superposition,
)
from mlcharge_workflows.engines.vasp.sets import (
    expected_nelect,
    input_fine_grid,
    input_set,
    local_dir,
    potcar_functional,
    potcar_symbols,
)
from mlcharge_workflows.pseudo import get_pseudo

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from pymatgen.io.vasp.inputs import VaspInput
    from pymatgen.io.vasp.sets import VaspInputSet

    from mlcharge_workflows.density.grid import DensityGrid

Predictor = Callable[["Structure", tuple[int, int, int]], "DensityGrid"]

#: Largest relative electron-count error of a prediction against NELECT.
NELECT_RTOL = 1e-6
#: Written next to a predicted CHGCAR: the reference it was built on (checked for ICHARG=11).
REFERENCE_FILE = "ml_reference.json"

__all__ = [
    "REFERENCE_FILE",
    "PotcarDataError",
    "potcar_references",
    "electron_info",
    "model_unknown_elements",
    "predictor_name",
    "resolve_predictor",
    "occupancies_from",
    "is_paw",
    "prev_dir_occupancies",
    "write_predicted_chgcar",
]

#: VASP's LMAXMIX default: the occupancy count per ion of a CHGCAR depends on it.
LMAXMIX_DEFAULT = 2


class PotcarDataError(ValueError):
    """The run's POTCARs cannot be read, so no start density consistent with them exists."""


def potcar_references(vis: VaspInput, functional: str) -> dict[str, PotcarAtomicDensity]:
    """Element -> atomic pseudo charge density of the run's POTCARs (``PMG_VASP_PSP_DIR``).

    Raises :class:`PotcarDataError` when pymatgen cannot build the run's ``Potcar``
    (no ``PMG_VASP_PSP_DIR``, a missing file or functional): a ``POTCAR.spec`` holds
    symbols only, and a start density on another valence or shape would be wrong.
    """
    symbols = potcar_symbols(vis)
    elements = vis["POSCAR"].site_symbols
    if len(symbols) != len(elements):
        raise ValueError(f"POTCAR symbols {symbols} do not match POSCAR species {elements}")
    try:
        from pymatgen.io.vasp import Potcar

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown-hash warnings for private POTCARs
            potcar = Potcar(symbols, functional=functional)
    except Exception as err:  # noqa: BLE001 - pymatgen raises several types here
        raise PotcarDataError(
            f"no POTCAR data for {symbols} ({functional}): {type(err).__name__}: {err}. "
            "The ML start density is built on the run's own POTCARs (their atomic pseudo "
            "charge density, which VASP superposes for ICHARG=2); set PMG_VASP_PSP_DIR to "
            "your POTCAR library (a POTCAR.spec of symbols is not enough)"
        ) from None
    out: dict[str, PotcarAtomicDensity] = {}
    for el, single in zip(elements, potcar, strict=True):
        atom = potcar_atomic_density(single)
        if atom.element != el:
            raise ValueError(f"POTCAR {atom.symbol} is for {atom.element}, the POSCAR has {el}")
        out[el] = atom
    return out


def _model_predictor(
    model_path: str | Path | None, spin: str | None = None, device: str | None = None
) -> Predictor:
    from mlcharge_workflows.model import load_model, model_version, predict_density  # torch: here
    from mlcharge_workflows.model.atomic import AtomicReference

    model = load_model(model_path) if model_path else load_model()
    version = model_version(model)

    def predict(
        structure: Structure, shape: tuple[int, int, int],
        references: dict[str, PotcarAtomicDensity] | None = None,
    ) -> DensityGrid:
        reference = None
        if references is not None:
            reference = {el: AtomicReference.from_potcar(a) for el, a in references.items()}
        grid = predict_density(
            structure, shape=shape, model=model, spin=spin, reference=reference, device=device
        )
        grid.metadata["model_version"] = grid.metadata.get("model_version") or version
        return grid

    predict.takes_references = True  # type: ignore[attr-defined]
    return predict


def _sad_predictor(
    structure: Structure, shape: tuple[int, int, int],
    references: dict[str, PotcarAtomicDensity] | None = None,
) -> DensityGrid:
    """VASP's own start (ICHARG=2): the superposition of the POTCAR densities."""
    if references is None:
        raise ValueError("the 'sad' predictor superposes the run's POTCAR densities: none given")
    magmom = structure.site_properties.get("magmom")
    grid = potcar_superposition(structure, shape, references, magmom)
    grid.metadata["model_version"] = "sad"
    grid.metadata["reference"] = _reference_summary(references, None)
    return grid


_sad_predictor.takes_references = True  # type: ignore[attr-defined]


def resolve_predictor(
    spec: str | Predictor = "model",
    model_path: str | Path | None = None,
    spin: str | None = None,
    device: str | None = None,
):
    """``f(structure, shape) -> DensityGrid`` for a predictor spec (see module docstring).

    ``spin`` (``"atomic"`` or ``"model"``) is the shipped model's start for magnetic cells
    (see :func:`mlcharge_workflows.model.predict_density`); ``device`` its torch device
    (``"auto"``: CUDA when present); other predictors ignore both. The package's own
    predictors also take ``references`` (the POTCAR densities) as a third argument.
    """
    if callable(spec):
        return spec
    if spec == "model":
        return _model_predictor(model_path, spin, device)
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


def _reference_summary(
    references: dict[str, PotcarAtomicDensity] | None, grid_meta: dict | None
) -> dict[str, Any]:
    """What the documents keep about the atomic reference of a prediction."""
    if references is None:
        return {"source": "predictor", "potcars": {}}
    out: dict[str, Any] = {
        "source": "POTCAR",
        "potcars": {el: a.identity() for el, a in sorted(references.items())},
    }
    model_ref = (grid_meta or {}).get("reference")
    if isinstance(model_ref, dict) and "differs_from_training" in model_ref:
        out["differs_from_training"] = model_ref["differs_from_training"]
        out["elements"] = model_ref.get("elements", {})
    return out


def electron_info(
    grid: DensityGrid, vis: VaspInput, functional: str, zval: dict[str, float] | None
) -> dict[str, Any]:
    """The electron count of ``grid`` beside the run's NELECT (and its source), per-element
    POTCAR valences and where the model's training valence differs (nothing is rescaled)."""
    nelect, source, by_element = expected_nelect(vis, functional=functional, zval=zval)
    model = _model_valence(list(by_element))
    mismatch = {  # informational: the model's training valence vs this run's POTCAR
        el: {"model": model[el], "potcar": z}
        for el, z in by_element.items()
        if model[el] is not None and abs(model[el] - z) > 1e-6
    }
    return {
        "n_electrons_predicted": grid.n_electrons,
        "nelect": nelect,
        "nelect_source": source,
        "zval_potcar": by_element,
        "valence_mismatch": mismatch,
        "scale": None,  # densities are never rescaled (field kept for old documents)
    }


def _magmom_structure(struct: Structure, incar: Any) -> Structure:
    """The POSCAR structure with the INCAR's MAGMOM as ``magmom`` (0 for ISPIN=1).

    The INCAR is what VASP reads: it holds ``user_incar_settings`` MAGMOM, site
    ``magmom`` properties and the set's defaults, in POSCAR order.
    """
    struct = struct.copy()
    if int(incar.get("ISPIN", 1)) != 2:
        struct.add_site_property("magmom", [0.0] * len(struct))
        return struct
    magmom = incar.get("MAGMOM")
    if magmom is None:
        magmom = [1.0] * len(struct)  # VASP's default MAGMOM = NIONS*1.0
    magmom = list(magmom)
    if len(magmom) != len(struct) or any(np.ndim(m) for m in magmom):
        raise ValueError(
            f"INCAR MAGMOM has {len(magmom)} entries for {len(struct)} sites: only collinear "
            "moments, one per site, are supported"
        )
    struct.add_site_property("magmom", [float(m) for m in magmom])
    return struct


def is_paw(titles: list[str] | None) -> bool:
    """Whether POTCARs with these titles are PAW datasets (``"PAW_PBE Si 05Jan2001"``).

    Unknown titles (None) count as PAW: every current VASP POTCAR is one, and a CHGCAR
    without occupancies is then discarded by VASP.
    """
    return titles is None or any(str(t).strip().upper().startswith("PAW") for t in titles)


def _prev_potcar_titles(prev: Path) -> tuple[list[str] | None, list[str] | None]:
    """(titles, symbols) of the POTCARs a previous run used: its POTCAR, else the atom types
    of its vasprun.xml (titles), else its POTCAR.spec (symbols only)."""
    potcar = Path(zpath(str(prev / "POTCAR")))
    if potcar.exists():
        from pymatgen.io.vasp import Potcar

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return [p.TITEL for p in Potcar.from_file(str(potcar))], None
            except Exception:  # noqa: BLE001 - an unreadable POTCAR: try the others
                pass
    vasprun = Path(zpath(str(prev / "vasprun.xml")))
    if vasprun.exists():
        import xml.etree.ElementTree as ET

        from monty.io import zopen

        titles: list[str] = []
        try:
            with zopen(str(vasprun), "rb") as fh:
                for _, elem in ET.iterparse(fh, events=("end",)):
                    if elem.tag == "array" and elem.get("name") == "atomtypes":
                        for row in elem.iter("rc"):
                            cells = [c.text.strip() for c in row.iter("c") if c.text]
                            if cells:
                                titles.append(cells[-1])
                        break
        except ET.ParseError:
            titles = []
        if titles:
            return titles, None
    spec = prev / "POTCAR.spec"
    if spec.exists():
        return None, [ln.strip() for ln in spec.read_text().splitlines() if ln.strip()]
    return None, None


def prev_dir_occupancies(
    prev_dir: str | Path | None, vis: VaspInput, titles: list[str] | None
) -> tuple[Path | None, str]:
    """The CHGCAR of ``prev_dir`` whose PAW occupancies this run can read, or why none.

    Usable when ``prev_dir`` holds a CHGCAR, ran with the same LMAXMIX (VASP's occupancy
    count per ion depends on it) and the same POTCARs (``titles``: this run's, compared
    with the previous run's POTCAR or vasprun.xml titles; by symbol when only a
    POTCAR.spec tells). The cell is checked when the occupancies are copied
    (:func:`occupancies_from`). Returns ``(path, note)``.
    """
    prev_dir = local_dir(prev_dir)
    if prev_dir is None:
        return None, "no prev_dir"
    prev = Path(prev_dir)
    chgcar = Path(zpath(str(prev / "CHGCAR")))
    if not chgcar.exists():
        return None, f"prev_dir {prev} has no CHGCAR"
    incar = Path(zpath(str(prev / "INCAR")))
    if incar.exists():
        from pymatgen.io.vasp import Incar

        theirs = int(Incar.from_file(str(incar)).get("LMAXMIX", LMAXMIX_DEFAULT))
        mine = int(vis["INCAR"].get("LMAXMIX", LMAXMIX_DEFAULT))
        if theirs != mine:
            return None, (f"prev_dir {prev} ran with LMAXMIX={theirs}, this run has "
                          f"LMAXMIX={mine}: VASP would find another occupancy count per ion")
    else:
        return None, f"prev_dir {prev} has no INCAR to check LMAXMIX against"
    prev_titles, prev_symbols = _prev_potcar_titles(prev)
    if prev_titles is not None and titles is not None:
        if [t.strip() for t in prev_titles] != [t.strip() for t in titles]:
            return None, (f"prev_dir {prev} ran with other POTCARs ({prev_titles}) than this "
                          f"run ({titles})")
    elif prev_symbols is not None or prev_titles is not None:
        theirs = prev_symbols or [t.split()[1] if len(t.split()) > 1 else t for t in prev_titles]
        if theirs != potcar_symbols(vis):
            return None, (f"prev_dir {prev} ran with other POTCARs ({theirs}) than this run "
                          f"({potcar_symbols(vis)})")
    else:
        return None, f"prev_dir {prev} does not say which POTCARs it ran with"
    return chgcar, f"copied from prev_dir {prev}"


def write_predicted_chgcar(
    structure: Structure,
    generator: VaspInputSet,
    path: str | Path = "CHGCAR",
    predictor: str | Predictor = "model",
    model_path: str | Path | None = None,
    zval: dict[str, float] | None = None,
    prev_dir: str | Path | None = None,
    spin: str | None = None,
    device: str | None = None,
    paw_occupancies: str | Path | None = None,
) -> tuple[DensityGrid, dict[str, Any]]:
    """Predict the density for the inputs ``generator`` writes and save it as a CHGCAR.

    The prediction uses the input set's POSCAR structure, fine grid and INCAR MAGMOM, and
    the atomic densities of the run's POTCARs as its reference (:func:`potcar_references`;
    :class:`PotcarDataError` without POTCAR data). It must integrate to NELECT by itself:
    a mismatch (a charged cell, a custom predictor on other valences, ``zval`` overrides
    that disagree with the POTCARs) raises ``ValueError``; nothing is rescaled. A
    reference file (:data:`REFERENCE_FILE`) is written next to the CHGCAR. ``prev_dir``
    may be atomate2's ``host:/path``. Returns the written grid and a summary dictionary.

    The file has VASP's layout; for ISPIN=2 its moment line holds the INCAR MAGMOM (POSCAR
    order) the prediction used. It has no PAW occupancies unless ``paw_occupancies`` names
    a CHGCAR (or run folder) of the same cell whose occupancies are copied (see
    :func:`occupancies_from`), or is ``"prev_dir"``: those of ``prev_dir``'s CHGCAR when
    that run used the same POTCARs and LMAXMIX (:func:`prev_dir_occupancies`), else none.
    ``info["paw_occupancies"]`` says which were copied, ``info["paw_occupancies_note"]``
    why (or why none).
    """
    t0 = time.perf_counter()
    prev_dir = local_dir(prev_dir)
    vis = input_set(generator, structure, prev_dir)
    incar = vis["INCAR"]
    struct = _magmom_structure(vis["POSCAR"].structure, incar)
    shape = input_fine_grid(vis)
    functional = potcar_functional(generator)
    references = potcar_references(vis, functional)
    if zval:
        bad = {el: (z, references[el].z_valence) for el, z in zval.items()
               if el in references and abs(z - references[el].z_valence) > 1e-6}
        if bad:
            raise ValueError(
                f"zval overrides disagree with the run's POTCARs (given, POTCAR): {bad}"
            )
    predict = resolve_predictor(predictor, model_path, spin, device)
    t1 = time.perf_counter()
    if getattr(predict, "takes_references", False):
        grid = predict(struct, shape, references)
    else:
        grid = predict(struct, shape)
    t2 = time.perf_counter()
    if grid.shape != tuple(shape):
        grid = grid.resampled(shape)
    grid.check_matches(struct)
    info = electron_info(grid, vis, functional, None)
    n_pred, nelect = info["n_electrons_predicted"], info["nelect"]
    if not np.isfinite(n_pred) or abs(n_pred - nelect) > NELECT_RTOL * max(nelect, 1.0):
        raise ValueError(
            f"the predicted density holds {n_pred:.6f} electrons, the run has NELECT={nelect} "
            f"({info['nelect_source']}); a start density is never rescaled to hide this "
            "(charged cells and predictors on other valences are not supported)"
        )
    if int(incar.get("ISPIN", 1)) != 2 and grid.magnetization is not None:
        grid = replace(grid, magnetization=None)  # a non-spin run reads no magnetisation
    reference = (
        _reference_summary(references, grid.metadata)
        if getattr(predict, "takes_references", False) else _reference_summary(None, None)
    )
    reference.update(functional=functional, potcar_symbols=potcar_symbols(vis))
    spin_run = int(incar.get("ISPIN", 1)) == 2
    magmom = [float(m) for m in struct.site_properties["magmom"]] if spin_run else None
    aug, occupancies, note = {}, None, "none requested"
    titles = [references[el].title for el in vis["POSCAR"].site_symbols]
    if paw_occupancies == "prev_dir":
        source, note = prev_dir_occupancies(prev_dir, vis, titles)
        if source is not None:
            try:
                aug, occupancies = occupancies_from(source, struct, spin_run)
            except ValueError as err:
                note = f"prev_dir's CHGCAR not usable: {err}"
        if occupancies is None and is_paw(titles):
            note += ("; the CHGCAR has no PAW occupancies, which VASP needs for PAW POTCARs "
                     "(MLStaticMaker adds a donor run's, see docs/vasp-guide.md)")
    elif paw_occupancies is not None:
        aug, occupancies = occupancies_from(paw_occupancies, struct, spin_run)
        note = f"copied from {occupancies['source']}"
    if occupancies is not None:
        occupancies["how"] = "prev_dir" if paw_occupancies == "prev_dir" else "given"
    reference["paw_occupancies"] = None if occupancies is None else occupancies["source"]
    write_chgcar(grid, path, data_aug=aug, magmom=magmom)
    (Path(path).resolve().parent / REFERENCE_FILE).write_text(
        json.dumps({"chgcar": Path(path).name, **reference}, indent=2, default=str)
    )
    t3 = time.perf_counter()
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
        reference=reference,
        chgcar_magmom=magmom,
        paw_occupancies=occupancies,
        paw_occupancies_note=note,
        paw=is_paw(titles),
        device=grid.metadata.get("device"),
        timings={"setup_s": t1 - t0, "predict_s": t2 - t1, "write_s": t3 - t2, "total_s": t3 - t0},
    )
    return grid, info


def occupancies_from(
    source: str | Path, structure: Structure, spin: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The PAW occupancies of the CHGCAR at ``source`` (file or run folder) for ``structure``.

    The CHGCAR must be for the same cell, species order and positions (``ValueError``
    otherwise) and hold occupancies; they must come from a run on the same POTCARs and
    LMAXMIX (a CHGCAR does not say which: VASP checks only the count per ion and discards
    the file on a mismatch). Returns ``(data_aug, summary)``; for a spin run without
    magnetisation occupancies in the source, VASP keeps the total density but replaces the
    magnetisation by overlapping atoms (the summary says so).
    """
    src = Path(local_dir(source))
    if src.is_dir():
        found = Path(zpath(str(src / "CHGCAR")))
        if not found.exists():
            raise ValueError(f"no CHGCAR in {src} to take PAW occupancies from")
        src = found
    donor = read_chgcar(src)
    try:
        donor.check_matches(structure)
    except ValueError as err:
        raise ValueError(f"{src} is for another cell than the run: {err}") from None
    aug = donor.metadata.get("data_aug") or {}
    if not aug.get("total"):
        raise ValueError(f"{src} holds no PAW occupancies to copy")
    blocks = ["total"] + (["diff"] if spin and aug.get("diff") else [])
    summary: dict[str, Any] = {"source": str(src.resolve()), "blocks": blocks}
    if spin and "diff" not in blocks:
        summary["note"] = ("no magnetisation occupancies in the source: VASP replaces the "
                           "magnetisation by overlapping atoms (MAGMOM)")
    return {b: aug[b] for b in blocks}, summary


def model_unknown_elements(structure: Structure, model_path: str | None = None) -> list[str]:
    """Elements of ``structure`` the density model was not trained on (sorted)."""
    from mlcharge_workflows.model import load_model

    known = set(load_model(model_path).supported_elements)
    return sorted({site.specie.symbol for site in structure} - known)


def __getattr__(name: str):
    if name == "place_density":  # its module sits above this one (it reads predictions' records)
        from mlcharge_workflows.engines.vasp.placement import place_density

        return place_density
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
