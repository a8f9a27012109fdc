"""The start density of a pw.x run: read, check and place it where pw.x reads it.

The counterpart of :mod:`mlcharge_workflows.engines.vasp.placement`. pw.x ignores the
Miller indices of a ``charge-density.dat`` and takes its coefficients in its own G order,
so a start density is written in the order computed for the cell exactly as the input
states it (:func:`written_lattice`), or copied from a zero-step dry run for cells whose
|G|² shells nearly tie. :func:`write_start_density` writes a density in that final form
once (the prediction job does), and :func:`file_as_placed` lets the SCF copy such a file
as is instead of reading, renormalising and writing it again.

Units: the grid is e/Å³; :mod:`mlcharge_workflows.density.qe_file` converts at the file.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.engines.qe.run import write_and_run
from mlcharge_workflows.engines.qe.sets import (
    OUTDIR,
    PREFIX,
    QEProtocol,
    antiparallel_signs,
    pw_input,
    qe_oriented,
)
from mlcharge_workflows.pseudo import check_structure

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Copy of the density given to pw.x, in the run folder (pw.x overwrites its own at the end).
START_COPY = "start-charge-density.dat"
#: Relative tolerance on the electron count of a start density (before normalisation).
ELECTRON_TOL = 0.02
#: Metadata key of a start density read from a pw.x file (the file's path).
_QE_FILE = "qe_file"

__all__ = [
    "ELECTRON_TOL",
    "START_COPY",
    "align_density",
    "file_as_placed",
    "load_prepared",
    "load_start_density",
    "place_start_density",
    "prepare_structure",
    "same_g_order",
    "save_dir_of",
    "write_start_density",
    "written_lattice",
]


def prepare_structure(structure: Structure, protocol: QEProtocol) -> Structure:
    """The structure pw.x is given: checked copy without oxidation states, in the frame pw.x sees (see ``qe_oriented``)."""
    check_structure(structure, protocol.pseudopotentials)
    s = structure.copy()
    s.remove_oxidation_states()
    if "magmom" in s.site_properties:
        signs = antiparallel_signs(s, protocol)  # an antiferromagnetic start keeps its signs
        s.remove_site_property("magmom")
        if signs is not None:
            s.add_site_property("spin_sign", signs)
    return qe_oriented(s) if protocol.standard_orientation else s


def save_dir_of(directory: Path) -> Path:
    return directory / OUTDIR / f"{PREFIX}.save"


def _is_qe_binary(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"\x0c\x00\x00\x00"  # first record: 3 x int32


def align_density(grid: DensityGrid, structure: Structure, rel_tol: float = 2e-4) -> DensityGrid:
    """Put ``grid`` in ``structure``'s Cartesian frame after checking it is the same crystal.

    The cells may differ by a rigid rotation (lattice vectors with the same lengths and
    angles within ``rel_tol``); species order and fractional positions must agree
    (:meth:`DensityGrid.check_matches`). Grid values are unchanged (they live on the
    fractional grid). ``ValueError`` names what differs.
    """
    from pymatgen.core import Lattice, Structure

    lat_g, lat_s = grid.structure.lattice.matrix, structure.lattice.matrix
    rot = np.linalg.solve(lat_g, lat_s)  # lat_g @ rot = lat_s
    if np.abs(rot @ rot.T - np.eye(3)).max() > rel_tol:
        a, b = grid.structure.lattice, structure.lattice
        raise ValueError(
            "density was written for a different cell: lattice "
            f"a,b,c = {np.round(a.abc, 4).tolist()} Å, angles {np.round(a.angles, 3).tolist()} "
            f"vs structure {np.round(b.abc, 4).tolist()} Å, {np.round(b.angles, 3).tolist()}"
        )
    turned = Structure(Lattice(lat_s), grid.structure.species, grid.structure.frac_coords)
    DensityGrid(turned, np.zeros((1, 1, 1))).check_matches(structure)
    return DensityGrid(structure, grid.total, grid.magnetization, dict(grid.metadata))


def _read_density_file(path: Path, structure: Structure) -> DensityGrid:
    """A density from a QE outdir / .save / charge-density.dat or a CHGCAR, in its own frame."""
    from pymatgen.core import Structure

    from mlcharge_workflows.density.chgcar import read_chgcar
    from mlcharge_workflows.density.qe_file import (
        qe_to_grid,
        read_qe_charge_density,
        read_qe_density,
    )

    if path.is_dir():
        found = sorted(path.glob("*.save/charge-density.dat")) or sorted(
            path.glob("charge-density.dat")
        )
        if len(found) != 1:
            raise ValueError(
                f"{path}: expected one charge-density.dat (directly or in <prefix>.save/), "
                f"found {len(found)}"
            )
        path = found[0]
    if not _is_qe_binary(path):
        if path.suffix == ".dat":  # named like pw.x's file, but not one: say so, not "CHGCAR"
            raise ValueError(f"{path} is not a pw.x charge-density.dat (no Fortran binary record "
                             "at its start; HDF5 and other formats are not read)")
        return read_chgcar(path)
    if (path.parent / "data-file-schema.xml").is_file():
        grid = read_qe_density(path)  # structure and nelec from pw.x's XML
    else:
        qcd = read_qe_charge_density(path)  # no XML: the caller's species and positions
        framed = Structure(qcd.lattice_angstrom, structure.species, structure.frac_coords)
        grid = qe_to_grid(qcd, framed)
        grid.metadata["source"] = str(path)
    grid.metadata[_QE_FILE] = str(path)  # a pw.x file: may go to pw.x as is (_file_as_placed)
    return grid


def load_start_density(
    start: DensityGrid | str | Path, structure: Structure, protocol: QEProtocol | None = None
) -> tuple[DensityGrid, str]:
    """Read and check a start density for ``structure``; returns ``(grid, source)``.

    ``start`` is a :class:`DensityGrid`, a run folder of this package, a QE outdir, a
    ``<prefix>.save`` folder, a ``charge-density.dat`` or a CHGCAR. The density must be for
    the same cell (up to a rotation) and species order and integrate to the valence electron
    count within 2 % (``ValueError`` otherwise); it is then normalised exactly and put in
    the frame pw.x sees. A spin-polarised run needs a magnetisation density; a
    non-spin-polarised run drops one.
    """
    protocol = protocol or QEProtocol()
    return load_prepared(start, prepare_structure(structure, protocol), protocol)


def load_prepared(
    start: DensityGrid | str | Path, structure: Structure, protocol: QEProtocol
) -> tuple[DensityGrid, str]:
    nelec = protocol.n_electrons(structure)
    if isinstance(start, DensityGrid):
        grid, source = start, str(start.metadata.get("source", "DensityGrid"))
        grid = DensityGrid(grid.structure, grid.total, grid.magnetization,
                           {k: v for k, v in grid.metadata.items() if k != _QE_FILE})
    else:
        path = Path(start)
        if not path.exists():
            raise FileNotFoundError(f"start density {path} does not exist")
        if path.is_dir() and (path / OUTDIR).is_dir():
            path = path / OUTDIR
        source = str(path)
        try:
            grid = _read_density_file(path, structure)
        except ValueError as err:
            raise ValueError(f"start density {source}: {err}") from None
    grid = align_density(grid, structure)
    try:
        grid.check_electron_count(nelec, ELECTRON_TOL)
    except ValueError as err:
        raise ValueError(
            f"start density {source}: {err}; the run's pseudopotentials give "
            f"{nelec:g} valence electrons for {structure.composition.formula}"
        ) from None
    if protocol.is_spin_polarized(structure) and grid.magnetization is None:
        raise ValueError(
            f"start density {source} has no magnetisation but the run is spin-polarised "
            f"({', '.join(sorted(protocol.starting_magnetization))} present): pw.x would converge "
            "to a non-magnetic state; give the density a magnetisation"
        )
    if not protocol.is_spin_polarized(structure) and grid.magnetization is not None:
        meta = {k: v for k, v in grid.metadata.items() if k != _QE_FILE}  # the file has m
        grid = DensityGrid(grid.structure, grid.total, None, meta)
    start_n = grid.n_electrons
    grid = grid.normalized(nelec)
    grid.metadata = {**grid.metadata, "start_n_electrons": start_n}  # a copy: caller's is kept
    return grid, source


def place_start_density(
    structure: Structure,
    directory: Path,
    protocol: QEProtocol,
    nprocs: int | None,
    grid: DensityGrid,
    dry_run: bool = True,
    lattice: np.ndarray | None = None,
    placed: Path | None = None,
) -> tuple[float, Path]:
    """Write ``grid`` as pw.x's start density in pw.x's exact G order; keep a copy.

    With ``dry_run`` a zero-step pw.x run writes the XML (needed by non-SCF runs) and a
    density file whose G order is copied. Without it (SCF starts) the order is computed from
    the cell exactly as written in the input (no second pw.x process); :func:`run_qe_scf`
    checks afterwards that pw.x used the same order. ``placed``: a file already in that
    form (:func:`file_as_placed`, e.g. the prediction job's) is copied as is.
    """
    from mlcharge_workflows.density.qe_file import write_qe_start_density
    from mlcharge_workflows.density.qe_gvectors import qe_gvector_order

    save = save_dir_of(directory)
    (save / "charge-density.dat").unlink(missing_ok=True)
    _, ecutrho = protocol.cutoffs(structure)
    if dry_run:
        _, dry, _ = write_and_run(
            structure, directory, protocol, nprocs, "dryrun", electron_maxstep=0
        )
        reference = save / "charge-density.dat"
        if not reference.is_file():
            raise RuntimeError(f"pw.x dry run in {directory} wrote no {reference}")
        prep = float(dry.wall_time_s or 0.0)
        written = write_qe_start_density(save, grid, ecutrho, reference=reference)
    else:
        t0 = time.perf_counter()
        save.mkdir(parents=True, exist_ok=True)
        from mlcharge_workflows.density.qe_file import grid_to_qe, write_qe_charge_density

        if placed is not None:
            written = Path(shutil.copyfile(placed, save / "charge-density.dat"))
        else:
            if lattice is None:
                lattice = written_lattice(structure, protocol)
            mill = qe_gvector_order(lattice, ecutrho)
            written = write_qe_charge_density(
                save / "charge-density.dat", grid_to_qe(grid, ecutrho, mill=mill)
            )
        prep = time.perf_counter() - t0
    copy = directory / START_COPY
    shutil.copyfile(written, copy)
    return prep, copy


def file_as_placed(
    grid: DensityGrid, structure: Structure, protocol: QEProtocol, lattice: np.ndarray
) -> Path | None:
    """The pw.x file ``grid`` was read from if pw.x can take it as is, else None.

    As is: the run's electron count (1e-9 relative), its nspin, and the G order computed for
    the cell as written in the input (what :func:`write_start_density` writes).
    """
    from mlcharge_workflows.density.qe_file import read_qe_charge_density
    from mlcharge_workflows.density.qe_gvectors import qe_gvector_order

    path = grid.metadata.get(_QE_FILE)
    start_n = grid.metadata.get("start_n_electrons")
    nelec = protocol.n_electrons(structure)
    if path is None or start_n is None or abs(start_n - nelec) > 1e-9 * nelec:
        return None
    qcd = read_qe_charge_density(path)
    nspin = 2 if protocol.is_spin_polarized(structure) else 1
    if qcd.gamma_only or qcd.nspin != nspin:
        return None
    mill = qe_gvector_order(lattice, protocol.cutoffs(structure)[1])
    return Path(path) if np.array_equal(qcd.mill, mill) else None


def write_start_density(
    structure: Structure, save_dir: str | Path, grid: DensityGrid, protocol: QEProtocol | None = None
) -> Path:
    """Write ``grid`` as ``<save_dir>/charge-density.dat``, placed once for pw.x.

    The file is what :func:`run_qe_scf` of ``structure`` under ``protocol`` gives pw.x: the
    frame pw.x sees, nspin of the run, the G order computed for the cell as written in the
    input; the SCF then copies it as is (cells whose G order is ambiguous are re-placed after
    a pw.x dry run). ``grid`` must already integrate to the run's electron count; it is not
    normalised here. ``ValueError`` if ``grid`` is for another cell or species order.
    """
    from mlcharge_workflows.density.qe_file import grid_to_qe, write_qe_charge_density
    from mlcharge_workflows.density.qe_gvectors import qe_gvector_order

    protocol = protocol or QEProtocol()
    prepared = prepare_structure(structure, protocol)
    grid = align_density(grid, prepared)
    if not protocol.is_spin_polarized(prepared) and grid.magnetization is not None:
        grid = DensityGrid(grid.structure, grid.total, None, dict(grid.metadata))
    _, ecutrho = protocol.cutoffs(prepared)
    mill = qe_gvector_order(written_lattice(prepared, protocol), ecutrho)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    return write_qe_charge_density(save_dir / "charge-density.dat",
                                   grid_to_qe(grid, ecutrho, mill=mill))


def written_lattice(structure: Structure, protocol: QEProtocol) -> np.ndarray:
    """The lattice (Å) exactly as the pw.x input states it (decimal rounding included)."""
    text = str(pw_input(structure, protocol))
    rows = text.split("CELL_PARAMETERS", 1)[1].splitlines()[1:4]
    return np.array([[float(x) for x in row.split()] for row in rows])


def same_g_order(directory: Path, start_copy: Path) -> bool:
    """Whether the density pw.x wrote at the end lists its G vectors in the order we wrote."""
    from mlcharge_workflows.density.qe_file import read_qe_charge_density

    out = save_dir_of(directory) / "charge-density.dat"
    if not out.is_file():
        return False
    return bool(
        np.array_equal(read_qe_charge_density(out).mill, read_qe_charge_density(start_copy).mill)
    )
