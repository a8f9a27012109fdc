"""A start density of a VASP run: check a CHGCAR and put it in the run folder.

The counterpart of :mod:`mlcharge_workflows.engines.qe.placement`. :func:`place_density`
copies a CHGCAR (predicted, or a converged one for the oracle arm) into a run folder,
checking atom order, cell, grid, electron count and, for ``ICHARG = 11``, that a predicted
density was built on this run's POTCARs. Nothing is rescaled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monty.io import zopen
from monty.os.path import zpath

from mlcharge_workflows.density.chgcar import read_chgcar, write_chgcar
from mlcharge_workflows.engines.vasp.density import (
    REFERENCE_FILE,
    PotcarDataError,
    electron_info,
    occupancies_from,
    potcar_references,
)
from mlcharge_workflows.engines.vasp.sets import input_fine_grid, local_dir

if TYPE_CHECKING:
    from pymatgen.io.vasp.inputs import VaspInput

#: Largest relative electron-count error of a CHGCAR placed into a run (VASP writes ~11
#: significant digits; a converged density read back integrates to NELECT within this).
PLACE_RTOL = 1e-5

__all__ = [
    "NO_PAW_OCCUPANCIES",
    "PAW_OCCUPANCY_MODES",
    "PLACE_RTOL",
    "add_paw_occupancies",
    "chgcar_titles",
    "occupancy_action",
    "place_density",
]

#: Where an ML run's PAW occupancies come from (``MLStaticMaker.paw_occupancies``):
#: "auto": the CHGCAR's own (copied from prev_dir by the prediction), else a donor run's;
#: "prev_dir": only the CHGCAR's own (none: the ML start is refused, the run starts from
#: atoms); "donor": always a donor run's; "none": as placed (VASP discards a CHGCAR
#: without them for PAW POTCARs; the run's OUTCAR/stdout then record it).
PAW_OCCUPANCY_MODES = ("auto", "prev_dir", "donor", "none")
#: Fallback of an ML start refused for want of PAW occupancies.
NO_PAW_OCCUPANCIES = "no_paw_occupancies"


def _chgcar_in(source: str | Path) -> Path:
    """The CHGCAR file of ``source``: a file, or a run folder (``host:/path`` allowed, as
    atomate2 writes ``dir_name``; the folder must be reachable on this machine)."""
    source = Path(local_dir(source))
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


def _check_nscf_reference(src: Path, vis: VaspInput, functional: str) -> dict[str, Any] | None:
    """For ``ICHARG = 11``: a predicted density must stand on this run's POTCARs.

    A CHGCAR without :data:`REFERENCE_FILE` beside it is not this package's prediction
    (e.g. a converged VASP density) and is not checked. Returns the reference record.
    """
    ref_file = src.parent / REFERENCE_FILE
    if not ref_file.exists():
        return None
    ref = json.loads(ref_file.read_text())
    if ref.get("source") != "POTCAR":
        raise ValueError(
            f"{src} was not built on POTCAR densities (reference: {ref.get('source')}): a "
            "non-SCF run (ICHARG=11) keeps its density fixed, so it is refused"
        )
    try:
        run = potcar_references(vis, functional)
    except PotcarDataError as err:
        raise ValueError(
            f"ICHARG=11 refused: the run's POTCARs cannot be read to check the reference of "
            f"{src} ({err})"
        ) from None
    mine = {el: a.sha256 for el, a in run.items()}
    theirs = {el: d.get("sha256") for el, d in (ref.get("potcars") or {}).items()}
    if mine != theirs:
        raise ValueError(
            f"ICHARG=11 refused: {src} was built on other POTCARs "
            f"({sorted(theirs)}: {[d.get('symbol') for d in ref['potcars'].values()]}) than this "
            f"run's ({[a.symbol for a in run.values()]})"
        )
    return ref


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
    of ``vis``, or holds another electron count than NELECT (nothing is rescaled); for
    ``ICHARG = 11`` also if it is a prediction not built on this run's POTCARs. A CHGCAR
    on another grid is Fourier-resampled onto VASP's fine grid (the electron count is
    kept); otherwise the file is copied byte for byte (keeping PAW occupancies, as the
    oracle arm needs). ``functional``: the generator's (``sets.potcar_functional``).
    Returns what was done.
    """
    src = _chgcar_in(source)
    struct = vis["POSCAR"].structure
    shape = tuple(input_fine_grid(vis))
    grid = read_chgcar(src)
    try:
        grid.check_matches(struct)
    except ValueError as err:
        raise ValueError(f"{src} does not match the POSCAR VASP will read: {err}") from None
    info = electron_info(grid, vis, functional, zval)
    info.update(source=str(src), source_grid=list(grid.shape), grid_shape=list(shape))
    n, nelect = info["n_electrons_predicted"], info["nelect"]
    if abs(n - nelect) > PLACE_RTOL * max(nelect, 1.0):
        raise ValueError(
            f"{src} holds {n:.6f} electrons, the run has NELECT={nelect} "
            f"({info['nelect_source']}): refused (a density is never rescaled to fit)"
        )
    if int(vis["INCAR"].get("ICHARG", 0)) == 11:
        info["reference"] = _check_nscf_reference(src, vis, functional)
    resample = grid.shape != shape
    directory = Path(directory)
    first = directory / names[0]
    if not resample:
        with zopen(str(src), "rb") as fin, open(first, "wb") as fout:
            shutil.copyfileobj(fin, fout)  # byte for byte, PAW occupancies included
        info["written"] = "copied"
    else:
        grid = grid.resampled(shape)
        write_chgcar(grid, first)
        info["written"] = "resampled"
    info["has_paw_occupancies"] = bool(grid.metadata.get("data_aug"))
    for name in names[1:]:
        shutil.copyfile(first, directory / name)
    return info


def chgcar_titles(source: str | Path) -> list[str] | None:
    """POTCAR titles a predicted CHGCAR was built on (its :data:`REFERENCE_FILE`), or None
    (a CHGCAR of VASP's, or one without the file)."""
    try:
        ref_file = _chgcar_in(source).parent / REFERENCE_FILE
    except FileNotFoundError:
        return None
    if not ref_file.exists():
        return None
    potcars = json.loads(ref_file.read_text()).get("potcars") or {}
    titles = [d.get("title") for d in potcars.values()]
    return titles if titles and all(titles) else None


def add_paw_occupancies(
    donor: str | Path, vis: VaspInput, directory: str | Path = ".",
    names: tuple[str, ...] = ("CHGCAR",),
) -> dict[str, Any]:
    """Write the PAW occupancies of the CHGCAR in ``donor`` (file or run folder) into the
    placed ``names`` of ``directory`` (the density and moment line are kept; occupancies
    already there are replaced). The donor must be for the same cell (``ValueError``).
    Returns :func:`~.density.occupancies_from`'s summary."""
    directory = Path(directory)
    first = directory / names[0]
    struct = vis["POSCAR"].structure
    grid = read_chgcar(first)
    spin = int(vis["INCAR"].get("ISPIN", 1)) == 2 and grid.magnetization is not None
    aug, summary = occupancies_from(donor, struct, spin)
    write_chgcar(grid, first, data_aug=aug)
    for name in names[1:]:
        shutil.copyfile(first, directory / name)
    return summary


def occupancy_action(
    mode: str, has_occupancies: bool, paw: bool, donor: str | Path | None
) -> str:
    """What an ML run does about PAW occupancies before VASP starts.

    Returns ``"keep"`` (the CHGCAR as placed), ``"merge"`` (write ``donor``'s occupancies
    in), ``"donor"`` (run a donor first) or ``"refuse"`` (no source: start from atoms). A
    run on non-PAW POTCARs (``paw`` False) needs none and keeps the file.
    """
    if mode not in PAW_OCCUPANCY_MODES:
        raise ValueError(f"paw_occupancies must be one of {PAW_OCCUPANCY_MODES}, got {mode!r}")
    if not paw or mode == "none":
        return "keep"
    if has_occupancies and mode != "donor":
        return "keep"
    if donor is not None:
        return "merge"
    return "refuse" if mode == "prev_dir" else "donor"
