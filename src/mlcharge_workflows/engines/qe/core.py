"""One pw.x SCF or non-SCF run and its task document, for jobs, the CLI and data generation.

The start density (read, checked, placed in pw.x's G order) is
:mod:`~mlcharge_workflows.engines.qe.placement`; starting the pw.x process is
:mod:`~mlcharge_workflows.engines.qe.run`. ``align_density``, ``load_start_density`` and
``write_start_density`` are importable from here too.

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

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlcharge_workflows.convergence import StallRule
from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.engines.qe.parse import band_edges, parse_pw_xml, scf_accuracy_history
from mlcharge_workflows.engines.qe.placement import (  # noqa: F401 - old import paths
    ELECTRON_TOL,
    START_COPY,
    align_density,
    file_as_placed,
    load_prepared,
    load_start_density,
    place_start_density,
    prepare_structure,
    same_g_order,
    save_dir_of,
    write_start_density,
    written_lattice,
)
from mlcharge_workflows.engines.qe.run import write_and_run
from mlcharge_workflows.engines.qe.schemas import QETaskDocument
from mlcharge_workflows.engines.qe.sets import OUTDIR, PSEUDO_SUBDIR, QEProtocol
from mlcharge_workflows.pseudo import pseudo_record, stage_pseudos, structure_elements
from mlcharge_workflows.settings import MLChargeSettings

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: The structure pw.x is given (old private name, named in docs/dataset.md).
_prepare = prepare_structure


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


#: Task-document fields copied unchanged from pw.x's text output (:class:`PwOutput`).
_FROM_PW_OUTPUT = (
    "density_read_from_file", "density_file_missing", "converged", "scf_iterations",
    "energy_eV", "fermi_energy_eV", "total_magnetization", "absolute_magnetization",
    "wall_time_s", "cpu_time_s", "scf_accuracy_Ry", "n_electrons", "n_kpoints",
    "n_symmetry_ops",
)


def _document(
    structure, directory, protocol, parsed, calculation, start, task_label, nprocs, **extra
) -> QETaskDocument:
    ecutwfc, ecutrho = protocol.cutoffs(structure)
    xml_path = save_dir_of(directory) / "data-file-schema.xml"
    xml = parse_pw_xml(xml_path) if xml_path.is_file() else None
    doc = dict(
        task_label=task_label,
        dir_name=str(directory),
        structure=structure,
        formula=structure.composition.reduced_formula,
        calculation=calculation,
        start=start,
        **{name: getattr(parsed, name) for name in _FROM_PW_OUTPUT},
        nspin=2 if protocol.is_spin_polarized(structure) else 1,
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
    stall: StallRule | None = None,
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
    stall
        Stop pw.x (gracefully, as at ``electron_maxstep``) once its accuracy history counts
        as stalled under this rule; the document records where and why (``stalled_at``,
        ``stall_reason``) and the run is unconverged. None: run to ``electron_maxstep``.

    Raises
    ------
    ValueError
        Bad structure or start density (cell, species order, electron count, spin).
    RuntimeError
        pw.x missing, crashed, unconverged (unless ``allow_unconverged``), or did not read
        the start density.
    """
    protocol = protocol or QEProtocol()
    structure = prepare_structure(structure, protocol)
    nprocs = int(nprocs or MLChargeSettings().qe_nprocs)
    grid = source = None
    if not (isinstance(start, str) and start == "atomic"):
        grid, source = load_prepared(start, structure, protocol)  # before touching files
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stage_pseudos(structure_elements(structure), directory / PSEUDO_SUBDIR, protocol.pseudos(structure))
    extra: dict = {}
    (directory / START_COPY).unlink(missing_ok=True)  # a stale copy would mislead
    if grid is not None:
        from mlcharge_workflows.density.qe_gvectors import qe_gvector_order_is_ambiguous

        # a cell whose |G|² shells nearly tie at QE's 1e-8 takes pw.x's own order up front
        lattice = written_lattice(structure, protocol)
        ambiguous = qe_gvector_order_is_ambiguous(lattice, protocol.cutoffs(structure)[1])
        placed = None if ambiguous else file_as_placed(grid, structure, protocol, lattice)
        prep, copy = place_start_density(
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
    watch = None if stall is None else _StallWatch(stall)
    elapsed, parsed, kpoints = write_and_run(
        structure, directory, protocol, nprocs, "pw", calculation="scf", startingpot=startingpot,
        watch=watch,
    )
    if grid is not None and parsed.density_read_from_file and not same_g_order(directory, copy):
        # pw.x ignores the Miller indices in the file: a different order would have scrambled
        # the start. Never count such a run; redo it with pw.x's own order from a dry run.
        warnings.warn(
            f"computed G order differs from pw.x's in {directory}; rerunning with a dry run",
            stacklevel=2,
        )
        prep, copy = place_start_density(structure, directory, protocol, nprocs, grid)
        extra["prep_wall_time_s"] = prep + elapsed
        extra["g_order_source"] = "dry run after mismatch"
        watch = None if stall is None else _StallWatch(stall)
        elapsed, parsed, kpoints = write_and_run(
            structure, directory, protocol, nprocs, "pw", calculation="scf", startingpot="file",
            watch=watch,
        )
    if not keep_wavefunctions:
        for wfc in save_dir_of(directory).glob("wfc*.dat"):
            wfc.unlink()
    if grid is not None and expect_density_read and not parsed.density_read_from_file:
        why = " (pw.x: 'Cannot read rho')" if parsed.density_file_missing else ""
        raise RuntimeError(
            f"pw.x in {directory} did not read the start density{why}; it started from "
            "atoms, so this run must not be counted as density-initialised"
        )
    if watch is not None and watch.at is not None and not parsed.converged:
        extra.update(stalled_at=watch.at, stall_reason=watch.reason)
    if not parsed.converged and not allow_unconverged:
        why = f": {extra['stall_reason']}" if "stall_reason" in extra else ""
        raise RuntimeError(
            f"pw.x SCF in {directory} did not converge in {parsed.n_iterations_printed} "
            f"iterations (electron_maxstep={protocol.electron_maxstep}){why}"
        )
    return _document(
        structure, directory, protocol, parsed, "scf", startingpot, task_label, nprocs,
        elapsed_s=elapsed, kpoints=kpoints, **extra,
    )


class _StallWatch:
    """``watch`` of :func:`~mlcharge_workflows.engines.qe.run.run_pw`: True once the accuracy
    history in pw.x's output counts as stalled under ``rule`` (then ``at`` and ``reason``)."""

    def __init__(self, rule: StallRule) -> None:
        self.rule, self.at, self.reason = rule, None, None

    def __call__(self, text: str) -> bool:
        history = scf_accuracy_history(text)
        at = self.rule.stalled_at(history)
        if at is None:
            return False
        self.at, self.reason = at, self.rule.describe(at, history)
        return True


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
    structure = prepare_structure(structure, protocol)
    nprocs = int(nprocs or MLChargeSettings().qe_nprocs)
    grid, source = load_prepared(density, structure, protocol)
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stage_pseudos(structure_elements(structure), directory / PSEUDO_SUBDIR, protocol.pseudos(structure))
    prep, copy = place_start_density(structure, directory, protocol, nprocs, grid)
    calculation = "bands" if mode == "line" else "nscf"
    elapsed, parsed, kpoints = write_and_run(
        structure, directory, protocol, nprocs, "pw", ok_returncodes=(0,),
        calculation=calculation, nbnd=nbnd,
    )
    for wfc in save_dir_of(directory).glob("wfc*.dat"):
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
