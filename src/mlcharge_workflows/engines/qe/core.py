"""Plain functions that run pw.x for jobs, the CLI and data generation.

Run folder layout: ``pw.in``/``pw.out`` (the run), ``dryrun.in``/``dryrun.out`` (zero-step
run that writes pw.x's own G order and ``data-file-schema.xml``), ``pseudo/`` (staged UPF
files), ``out/pwscf.save/`` (pw.x data) and ``start-charge-density.dat`` (a copy of the
density given to pw.x, which overwrites its own at the end).

Examples
--------
>>> doc = run_qe_scf(structure, "si_atomic")                      # doctest: +SKIP
>>> restart = run_qe_scf(structure, "si_file", start="si_atomic")  # doctest: +SKIP
>>> restart.density_initialised, restart.scf_iterations            # doctest: +SKIP
(True, 1)
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.engines.qe.parse import band_edges, parse_pw_output, parse_pw_xml
from mlcharge_workflows.pseudo import (
    check_structure,
    pseudo_record,
    stage_pseudos,
    structure_elements,
)
from mlcharge_workflows.engines.qe.run import EXIT_NOT_CONVERGED, run_pw
from mlcharge_workflows.engines.qe.schemas import QETaskDocument
from mlcharge_workflows.engines.qe.sets import (
    OUTDIR,
    PREFIX,
    PSEUDO_SUBDIR,
    QEProtocol,
    antiparallel_signs,
    pw_input,
    qe_oriented,
    write_pw_input,
)
from mlcharge_workflows.settings import MLChargeSettings

if TYPE_CHECKING:
    from pymatgen.core import Structure

START_COPY = "start-charge-density.dat"
#: Metadata key of a start density read from a pw.x file (the file's path).
_QE_FILE = "qe_file"
#: Relative tolerance on the electron count of a start density (before normalisation).
ELECTRON_TOL = 0.02


def _prepare(structure: Structure, protocol: QEProtocol) -> Structure:
    """Checked copy without oxidation states, in the frame pw.x sees (see ``qe_oriented``)."""
    check_structure(structure, protocol.pseudopotentials)
    s = structure.copy()
    s.remove_oxidation_states()
    if "magmom" in s.site_properties:
        signs = antiparallel_signs(s, protocol)  # an antiferromagnetic start keeps its signs
        s.remove_site_property("magmom")
        if signs is not None:
            s.add_site_property("spin_sign", signs)
    return qe_oriented(s) if protocol.standard_orientation else s


def _save_dir(directory: Path) -> Path:
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
    return _load_prepared(start, _prepare(structure, protocol), protocol)


def _load_prepared(
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


def _write_and_run(
    structure: Structure,
    directory: Path,
    protocol: QEProtocol,
    nprocs: int | None,
    stem: str,
    ok_returncodes: tuple[int, ...] = (0, EXIT_NOT_CONVERGED),
    **input_kw,
) -> tuple[float, object, list]:
    pwin = pw_input(structure, protocol, **input_kw)
    write_pw_input(pwin, directory / f"{stem}.in")
    t0 = time.perf_counter()
    out = run_pw(directory, f"{stem}.in", f"{stem}.out", nprocs=nprocs, ok_returncodes=ok_returncodes)
    elapsed = time.perf_counter() - t0
    parsed = parse_pw_output(out)
    if not parsed.job_done:
        tail = "\n".join(out.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"pw.x stopped without 'JOB DONE' in {directory}:\n{tail}")
    return elapsed, parsed, [list(k) if isinstance(k, tuple) else k for k in pwin.kpoints_grid]


def _place_start_density(
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
    form (:func:`_file_as_placed`, e.g. the prediction job's) is copied as is.
    """
    from mlcharge_workflows.density.qe_file import write_qe_start_density
    from mlcharge_workflows.density.qe_gvectors import qe_gvector_order

    save = _save_dir(directory)
    (save / "charge-density.dat").unlink(missing_ok=True)
    _, ecutrho = protocol.cutoffs(structure)
    if dry_run:
        _, dry, _ = _write_and_run(
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
                lattice = _written_lattice(structure, protocol)
            mill = qe_gvector_order(lattice, ecutrho)
            written = write_qe_charge_density(
                save / "charge-density.dat", grid_to_qe(grid, ecutrho, mill=mill)
            )
        prep = time.perf_counter() - t0
    copy = directory / START_COPY
    shutil.copyfile(written, copy)
    return prep, copy


def _file_as_placed(
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
    prepared = _prepare(structure, protocol)
    grid = align_density(grid, prepared)
    if not protocol.is_spin_polarized(prepared) and grid.magnetization is not None:
        grid = DensityGrid(grid.structure, grid.total, None, dict(grid.metadata))
    _, ecutrho = protocol.cutoffs(prepared)
    mill = qe_gvector_order(_written_lattice(prepared, protocol), ecutrho)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    return write_qe_charge_density(save_dir / "charge-density.dat",
                                   grid_to_qe(grid, ecutrho, mill=mill))


def _written_lattice(structure: Structure, protocol: QEProtocol) -> np.ndarray:
    """The lattice (Å) exactly as the pw.x input states it (decimal rounding included)."""
    text = str(pw_input(structure, protocol))
    rows = text.split("CELL_PARAMETERS", 1)[1].splitlines()[1:4]
    return np.array([[float(x) for x in row.split()] for row in rows])


def _same_g_order(directory: Path, start_copy: Path) -> bool:
    """Whether the density pw.x wrote at the end lists its G vectors in the order we wrote."""
    from mlcharge_workflows.density.qe_file import read_qe_charge_density

    out = _save_dir(directory) / "charge-density.dat"
    if not out.is_file():
        return False
    return bool(
        np.array_equal(read_qe_charge_density(out).mill, read_qe_charge_density(start_copy).mill)
    )


def _symmetry_warning(structure: Structure, n_ops: int | None) -> list[str]:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    if n_ops is None:
        return []
    try:
        n_point = len(SpacegroupAnalyzer(structure).get_point_group_operations())
    except Exception:  # spglib can fail on odd cells; the warning is only advice
        return []
    if n_ops >= n_point:
        return []
    msg = (
        f"pw.x found {n_ops} symmetry operations where the point group has {n_point}, so "
        "k-points are less reduced (slower, same result). Causes: a cell orientation pw.x "
        "cannot see (keep QEProtocol.standard_orientation=True) or fractional translations "
        "that do not fit pw.x's FFT grid (see the pw.x output)."
    )
    warnings.warn(msg, stacklevel=3)
    return [msg]


def _document(
    structure, directory, protocol, parsed, calculation, start, task_label, nprocs, **extra
) -> QETaskDocument:
    ecutwfc, ecutrho = protocol.cutoffs(structure)
    xml_path = _save_dir(directory) / "data-file-schema.xml"
    xml = parse_pw_xml(xml_path) if xml_path.is_file() else None
    doc = dict(
        task_label=task_label,
        dir_name=str(directory),
        structure=structure,
        formula=structure.composition.reduced_formula,
        calculation=calculation,
        start=start,
        density_read_from_file=parsed.density_read_from_file,
        density_file_missing=parsed.density_file_missing,
        converged=parsed.converged,
        scf_iterations=parsed.scf_iterations,
        energy_eV=parsed.energy_eV,
        fermi_energy_eV=parsed.fermi_energy_eV,
        total_magnetization=parsed.total_magnetization,
        absolute_magnetization=parsed.absolute_magnetization,
        wall_time_s=parsed.wall_time_s,
        cpu_time_s=parsed.cpu_time_s,
        scf_accuracy_Ry=parsed.scf_accuracy_Ry,
        n_electrons=parsed.n_electrons,
        nspin=2 if protocol.is_spin_polarized(structure) else 1,
        n_kpoints=parsed.n_kpoints,
        n_symmetry_ops=parsed.n_symmetry_ops,
        nprocs=parsed.nprocs or nprocs,
        ecutwfc_ry=ecutwfc,
        ecutrho_ry=ecutrho,
        protocol=protocol,
        pseudopotentials=pseudo_record(protocol.pseudos(structure)),
        pw_version=parsed.version,
        warnings=_symmetry_warning(structure, parsed.n_symmetry_ops),
    )
    if xml is not None:
        if calculation == "scf" and xml.energy_eV is not None:
            doc["energy_eV"] = xml.energy_eV  # full precision (text output has 8 decimals in Ry)
        if xml.lsda:
            doc["total_magnetization"] = xml.total_magnetization
            doc["absolute_magnetization"] = xml.absolute_magnetization
        if calculation == "scf" and xml.fermi_energy_eV is not None:
            doc["fermi_energy_eV"] = xml.fermi_energy_eV
        edges = band_edges(xml.eigenvalues_eV, xml.n_electrons)
        if edges is not None:
            doc.update(vbm_eV=edges[0], cbm_eV=edges[1], band_gap_eV=max(0.0, edges[1] - edges[0]))
        if calculation != "scf":
            doc.update(eigenvalues_eV=xml.eigenvalues_eV, kpoints_cart=xml.kpoints_cart)
    doc.update(extra)
    return QETaskDocument(**doc)


def run_qe_scf(
    structure: Structure,
    directory: str | Path,
    start: Literal["atomic"] | DensityGrid | str | Path = "atomic",
    protocol: QEProtocol | None = None,
    nprocs: int | None = None,
    expect_density_read: bool = True,
    allow_unconverged: bool = False,
    keep_wavefunctions: bool = False,
    task_label: str = "qe scf",
) -> QETaskDocument:
    """Run one pw.x SCF of ``structure`` in ``directory`` under ``protocol``.

    Parameters
    ----------
    start
        ``"atomic"`` (superposition of atomic densities) or a density: a
        :class:`DensityGrid` or a path accepted by :func:`load_start_density`.
    nprocs
        MPI processes (default ``MLCHARGE_QE_NPROCS``).
    expect_density_read
        Raise ``RuntimeError`` if a density start was requested but pw.x did not print
        "The initial density is read from file". With ``False`` the document records it.

    Raises
    ------
    ValueError
        Bad structure or start density (cell, species order, electron count, spin).
    RuntimeError
        pw.x missing, crashed, unconverged (unless ``allow_unconverged``), or did not read
        the start density.
    """
    protocol = protocol or QEProtocol()
    structure = _prepare(structure, protocol)
    nprocs = int(nprocs or MLChargeSettings().qe_nprocs)
    grid = source = None
    if not (isinstance(start, str) and start == "atomic"):
        grid, source = _load_prepared(start, structure, protocol)  # before touching files
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stage_pseudos(structure_elements(structure), directory / PSEUDO_SUBDIR, protocol.pseudos(structure))
    extra: dict = {}
    (directory / START_COPY).unlink(missing_ok=True)  # a stale copy would mislead
    if grid is not None:
        from mlcharge_workflows.density.qe_gvectors import qe_gvector_order_is_ambiguous

        # a cell whose |G|² shells nearly tie at QE's 1e-8 takes pw.x's own order up front
        lattice = _written_lattice(structure, protocol)
        ambiguous = qe_gvector_order_is_ambiguous(lattice, protocol.cutoffs(structure)[1])
        placed = None if ambiguous else _file_as_placed(grid, structure, protocol, lattice)
        prep, copy = _place_start_density(
            structure, directory, protocol, nprocs, grid, dry_run=ambiguous, lattice=lattice,
            placed=placed,
        )
        extra["g_order_source"] = "dry run" if ambiguous else "computed"
        extra["start_file_as_is"] = placed is not None
        extra.update(
            start_source=source,
            start_density_file=str(copy),
            start_n_electrons=grid.metadata.get("start_n_electrons"),
            prep_wall_time_s=prep,
        )
    startingpot = "atomic" if grid is None else "file"
    elapsed, parsed, kpoints = _write_and_run(
        structure, directory, protocol, nprocs, "pw", calculation="scf", startingpot=startingpot
    )
    if grid is not None and parsed.density_read_from_file and not _same_g_order(directory, copy):
        # pw.x ignores the Miller indices in the file: a different order would have scrambled
        # the start. Never count such a run; redo it with pw.x's own order from a dry run.
        warnings.warn(
            f"computed G order differs from pw.x's in {directory}; rerunning with a dry run",
            stacklevel=2,
        )
        prep, copy = _place_start_density(structure, directory, protocol, nprocs, grid)
        extra["prep_wall_time_s"] = prep + elapsed
        extra["g_order_source"] = "dry run after mismatch"
        elapsed, parsed, kpoints = _write_and_run(
            structure, directory, protocol, nprocs, "pw", calculation="scf", startingpot="file"
        )
    if not keep_wavefunctions:
        for wfc in _save_dir(directory).glob("wfc*.dat"):
            wfc.unlink()
    if grid is not None and expect_density_read and not parsed.density_read_from_file:
        why = " (pw.x: 'Cannot read rho')" if parsed.density_file_missing else ""
        raise RuntimeError(
            f"pw.x in {directory} did not read the start density{why}; it started from "
            "atoms, so this run must not be counted as density-initialised"
        )
    if not parsed.converged and not allow_unconverged:
        raise RuntimeError(
            f"pw.x SCF in {directory} did not converge in {parsed.n_iterations_printed} "
            f"iterations (electron_maxstep={protocol.electron_maxstep})"
        )
    return _document(
        structure, directory, protocol, parsed, "scf", startingpot, task_label, nprocs,
        elapsed_s=elapsed, kpoints=kpoints, **extra,
    )


def run_qe_nscf(
    structure: Structure,
    directory: str | Path,
    density: DensityGrid | str | Path,
    mode: Literal["line", "uniform"] = "line",
    protocol: QEProtocol | None = None,
    nprocs: int | None = None,
    nbnd: int | None = None,
    task_label: str | None = None,
) -> QETaskDocument:
    """Band structure (``mode='line'``, pw.x ``bands``) or uniform-mesh ``nscf`` from a density.

    A zero-step dry run writes the ``data-file-schema.xml`` that non-SCF runs need and pw.x's
    G order; ``density`` (see :func:`load_start_density`) then replaces its charge density.
    Eigenvalues and the band gap go in the document.
    """
    if mode not in ("line", "uniform"):
        raise ValueError(f"mode must be 'line' or 'uniform', got {mode!r}")
    protocol = protocol or QEProtocol()
    structure = _prepare(structure, protocol)
    nprocs = int(nprocs or MLChargeSettings().qe_nprocs)
    grid, source = _load_prepared(density, structure, protocol)
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stage_pseudos(structure_elements(structure), directory / PSEUDO_SUBDIR, protocol.pseudos(structure))
    prep, copy = _place_start_density(structure, directory, protocol, nprocs, grid)
    calculation = "bands" if mode == "line" else "nscf"
    elapsed, parsed, kpoints = _write_and_run(
        structure, directory, protocol, nprocs, "pw", ok_returncodes=(0,),
        calculation=calculation, nbnd=nbnd,
    )
    for wfc in _save_dir(directory).glob("wfc*.dat"):
        wfc.unlink()
    if not parsed.density_read_from_file:
        raise RuntimeError(
            f"pw.x {calculation} run in {directory} did not report reading the density "
            "('The potential is recalculated from file' missing)"
        )
    return _document(
        structure, directory, protocol, parsed, calculation, "file",
        task_label or f"qe non-scf {mode}", nprocs, elapsed_s=elapsed, kpoints=kpoints,
        start_source=source,
        start_density_file=str(copy), prep_wall_time_s=prep,
        start_n_electrons=grid.metadata.get("start_n_electrons"), converged=True,
    )


def read_converged_density(directory: str | Path) -> DensityGrid:
    """The density pw.x wrote at the end of the run in ``directory`` (structure from its XML)."""
    from mlcharge_workflows.density.qe_file import read_qe_density

    directory = Path(directory)
    outdir = directory / OUTDIR if (directory / OUTDIR).is_dir() else directory
    xml = next(iter(sorted(outdir.glob("*.save/data-file-schema.xml"))), None)
    if xml is not None:
        data = parse_pw_xml(xml)
        if data.converged is False:
            raise ValueError(f"{xml}: the run did not converge; its density is not converged")
    return read_qe_density(outdir)
