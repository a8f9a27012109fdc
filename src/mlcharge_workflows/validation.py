"""Input validation for every entry point: structures (before any library that can crash on
them) and settings mappings (unknown keys refused with the nearest valid name).

spglib and pymatgen's neighbour search are C code: a ``nan`` in a position or an ``inf`` in
a lattice vector makes them segfault or loop, and a degenerate cell ends in numpy errors far
from the cause. :func:`validate_structure` refuses such input with a :class:`StructureError`
(a ``ValueError``) that names the lattice vector or site, using only numpy and the LLL
reduction of pymatgen's :class:`~pymatgen.core.Lattice` (pure Python):

* the cell holds at least one site and every site is ordered (one element);
* every lattice component and every fractional coordinate is finite;
* every lattice vector is at most :data:`MAX_LATTICE_LENGTH` Å long (a grid of such a cell
  cannot be allocated);
* the volume per atom is at least :data:`MIN_VOLUME_PER_ATOM` (``MIN_DISTANCE³/√2``, the
  volume per sphere of close-packed spheres of diameter ``MIN_DISTANCE``: a smaller cell
  *must* hold two atoms closer than the limit), zero included;
* no lattice vector (of the LLL-reduced cell) is shorter than :data:`MIN_DISTANCE` (an atom
  would touch its own image) and no two atoms, periodic images included, are closer than
  :data:`MIN_DISTANCE`.

``MIN_DISTANCE`` is the one limit of the package: :func:`mlcharge_workflows.pseudo.check_structure`
(pw.x, ``scf``, ``compare``, ``submit``) and ``predict`` use the same value.

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> validate_structure(Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]))
>>> try:
...     validate_structure(Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.01, 0, 0]]))
... except StructureError as exc:
...     print(exc)
sites 0 (Si) and 1 (Si) are 0.054 Å apart (periodic images included), closer than 0.5 Å, the limit of every command
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Closest allowed distance between two atoms (Å), periodic images included; the same
#: limit for every command (pw.x, VASP, the model).
MIN_DISTANCE = 0.5

#: Smallest volume per atom (Å³): close-packed spheres of diameter MIN_DISTANCE.
MIN_VOLUME_PER_ATOM = MIN_DISTANCE**3 / math.sqrt(2.0)

#: Longest allowed lattice vector (Å); a density grid of a longer cell cannot be allocated.
MAX_LATTICE_LENGTH = 1000.0

_AXES = ("a", "b", "c")


class StructureError(ValueError):
    """A structure no command of the package can run; the message names the problem."""


def _site_label(structure: Structure, i: int) -> str:
    site = structure[i]
    name = site.species_string if not site.is_ordered else site.specie.symbol
    return f"{i} ({name})"


def check_lattice(matrix: np.ndarray) -> float:
    """Check a 3x3 lattice (rows a, b, c in Å); return its volume (Å³).

    Raises :class:`StructureError` for a non-finite component, a vector longer than
    :data:`MAX_LATTICE_LENGTH` or a zero volume.
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape != (3, 3):
        raise StructureError(f"lattice must be 3x3, got shape {m.shape}")
    for k, row in enumerate(m):
        if not np.all(np.isfinite(row)):
            raise StructureError(f"lattice vector {_AXES[k]} = {row.tolist()} is not finite (nan or inf)")
    for k, row in enumerate(m):
        length = float(np.linalg.norm(row))
        if length > MAX_LATTICE_LENGTH:
            raise StructureError(
                f"lattice vector {_AXES[k]} is {length:.4g} Å long, longer than {MAX_LATTICE_LENGTH:g} Å"
            )
        if length < MIN_DISTANCE:
            raise StructureError(
                f"lattice vector {_AXES[k]} is {length:.4g} Å long: every atom is closer than "
                f"{MIN_DISTANCE} Å to its own periodic image"
            )
    volume = abs(float(np.linalg.det(m)))
    if not volume > 1e-8 * float(np.prod(np.linalg.norm(m, axis=1))):
        raise StructureError(
            f"cell volume is {volume:.3g} Å³: lattice vectors a, b, c are (nearly) coplanar"
        )
    return volume


def validate_structure(structure: Structure, min_distance: float = MIN_DISTANCE) -> None:
    """Raise :class:`StructureError` for a structure no command can run (see the module).

    Safe on any :class:`~pymatgen.core.Structure`, whatever numbers it holds: non-finite
    values are caught before any neighbour search.
    """
    n = len(structure)
    if n == 0:
        raise StructureError("structure has no atoms: the cell is empty")
    volume = check_lattice(structure.lattice.matrix)
    frac = np.asarray(structure.frac_coords, dtype=float).reshape(n, 3)
    bad = np.flatnonzero(~np.all(np.isfinite(frac), axis=1))
    if len(bad):
        i = int(bad[0])
        raise StructureError(
            f"site {_site_label(structure, i)} has non-finite coordinates {frac[i].tolist()}"
            + (f" ({len(bad)} such sites)" if len(bad) > 1 else "")
        )
    for i, site in enumerate(structure):
        if not site.is_ordered:
            raise StructureError(
                f"site {_site_label(structure, i)} is partially occupied (disordered); "
                "DFT needs an ordered cell"
            )
    if volume / n < MIN_VOLUME_PER_ATOM:
        raise StructureError(
            f"cell volume is {volume:.4g} Å³ for {n} atoms ({volume / n:.3g} Å³ per atom): "
            f"below {MIN_VOLUME_PER_ATOM:.3g} Å³ per atom some atoms must be closer than "
            f"the limit {min_distance} Å"
        )
    _check_distances(structure, frac, min_distance)


def _check_distances(structure: Structure, frac: np.ndarray, min_distance: float) -> None:
    """Closest pair (periodic images included) on the LLL-reduced cell, in numpy."""
    from pymatgen.core import Lattice

    lattice = Lattice(structure.lattice.matrix)
    lll = lattice.lll_matrix  # same lattice, short and nearly orthogonal vectors
    for k, row in enumerate(lll):
        length = float(np.linalg.norm(row))
        if length < min_distance:
            raise StructureError(
                f"the cell has a lattice vector {length:.4g} Å long (a combination of a, b, c): "
                f"every atom is closer than {min_distance} Å to its own periodic image"
            )
    # fractional coordinates in the reduced basis, wrapped into [0, 1)
    f = np.mod(frac @ lattice.matrix @ np.linalg.inv(lll), 1.0)
    cart = f @ lll
    # images within reach: a range wide enough for min_distance in every direction
    heights = abs(np.linalg.det(lll)) / np.linalg.norm(np.cross(lll[[1, 2, 0]], lll[[2, 0, 1]]), axis=1)
    reach = np.ceil(min_distance / heights).astype(int) + 1
    shifts = np.array(
        np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    ).reshape(3, -1).T @ lll  # (n_images, 3)
    n = len(cart)
    best = (np.inf, 0, 0)
    for i in range(n):  # O(n^2 * images): fine for DFT-sized cells
        d = cart[i:] - cart[i]  # (n-i, 3)
        dist = np.linalg.norm(d[:, None, :] + shifts[None, :, :], axis=2)  # (n-i, n_images)
        dist[0][np.all(shifts == 0, axis=1)] = np.inf  # an atom with itself
        j = int(np.argmin(dist.min(axis=1)))
        dmin = float(dist[j].min())
        if dmin < best[0]:
            best = (dmin, i, i + j)
    dmin, i, j = best
    if dmin < min_distance:
        raise StructureError(
            f"sites {_site_label(structure, i)} and {_site_label(structure, j)} are {dmin:.3f} Å "
            f"apart (periodic images included), closer than {min_distance} Å, the limit of every command"
        )


def check_known_fields(data: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    """Refuse keys of a settings mapping that are not in ``known``, suggesting the nearest.

    Every command that reads settings (QE protocol files and inline overrides, training
    configs) calls this, so a typo is never silently ignored.

    >>> check_known_fields({"ecutwfcc": 45}, ["ecutwfc_ry", "ecutrho_ry"], "QE protocol")
    Traceback (most recent call last):
    ...
    ValueError: unknown QE protocol field 'ecutwfcc' (did you mean 'ecutwfc_ry'?); known fields: ecutwfc_ry, ecutrho_ry
    """
    import difflib

    known = list(known)
    unknown = [k for k in data if k not in known]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = "field" if len(unknown) == 1 else "fields"
    raise ValueError(f"unknown {what} {noun} {', '.join(parts)}; known fields: {', '.join(known)}")


def refuse_overwrite(path: str | Path, overwrite: bool, option: str) -> None:
    """Raise ``ValueError`` if ``path`` (a file, or a non-empty folder) holds earlier results
    and ``overwrite`` is False; ``option`` names the command-line option in the message."""
    path = Path(path)
    if overwrite or not path.exists():
        return
    if path.is_dir():
        if not any(path.iterdir()):
            return
        what = "is a folder that is not empty"
    else:
        what = "exists"
    raise ValueError(f"{option} {path} {what}: earlier results would be overwritten; add "
                     "--overwrite to replace them, or choose another path")


def read_structure(path: str | Path) -> Structure:
    """Read a structure file pymatgen understands and :func:`validate_structure` it.

    Raises :class:`StructureError` (a ``ValueError``) for a missing or unreadable file, naming
    the file, or for a structure that fails validation (the message starts with the file).
    """
    from pymatgen.core import Structure

    path = Path(path)
    if not path.is_file():
        raise StructureError(f"structure file {path} does not exist")
    try:
        structure = Structure.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types on unreadable files
        raise StructureError(f"cannot read structure file {path}: {type(exc).__name__}: {exc}") from None
    try:
        validate_structure(structure)
    except StructureError as exc:
        raise StructureError(f"{path}: {exc}") from None
    return structure
