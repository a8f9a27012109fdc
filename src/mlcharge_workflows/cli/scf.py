"""``mlcharge scf``: one SCF from the atomic superposition or from a density, and what it cost.

Exit status: 0 success; 1 bad input or failed run (message on stderr); 3 a density start was
requested but pw.x did not read the density (the run started from atoms and is reported so).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from mlcharge_workflows.cli import options

ENGINES = ("qe",)
EXIT_DENSITY_NOT_READ = 3


def _load_protocol(path: Path | None, pseudo: list[str] | None = None):
    from mlcharge_workflows.catalogue import qe_protocol, read_protocol_fields

    return qe_protocol(None if path is None else read_protocol_fields(path), pseudo)


def _report_lines(doc) -> list[str]:
    yes_no = {True: "yes", False: "no"}
    if doc.start == "atomic":
        read = "n/a (started from the superposition of atomic densities)"
    elif doc.density_read_from_file:
        read = "yes (pw.x printed 'The initial density is read from file')"
    else:
        read = "NO: pw.x started from atoms; this run is NOT density-initialised"
    lines = [
        f"structure        {doc.structure.composition.formula} ({len(doc.structure)} atoms)",
        f"start            {doc.start}" + (f" ({doc.start_source})" if doc.start_source else ""),
        f"density read     {read}",
        f"converged        {yes_no[doc.converged]}",
        f"SCF iterations   {doc.scf_iterations}",
        f"total energy     {doc.energy_eV:.6f} eV" if doc.energy_eV is not None else "total energy     -",
        f"wall time        {doc.wall_time_s} s (pw.x), {doc.elapsed_s:.2f} s with MPI start-up",
    ]
    if doc.nspin == 2:
        lines.append(
            f"magnetisation    total {doc.total_magnetization:.4f} μB/cell, "
            f"absolute {doc.absolute_magnetization:.4f} μB/cell"
        )
    else:
        lines.append("magnetisation    none (not spin-polarised)")
    for el, info in doc.pseudopotentials.items():
        lines.append(f"pseudopotential  {el}: {info['filename']} ({info['origin']}, md5 {info['md5']})")
    lines.append(f"run folder       {doc.dir_name}")
    lines.extend(f"warning          {w}" for w in doc.warnings)
    return lines


def scf(
    structure: Path = typer.Argument(..., help="Structure file pymatgen reads (CIF, POSCAR, ...)."),
    engine: str = typer.Option("qe", "--engine", help="DFT engine (qe)."),
    start: str = typer.Option(
        "atomic",
        "--start",
        help="'atomic', or a density: a run folder of mlcharge, a QE outdir or .save folder, "
        "a charge-density.dat, or a CHGCAR for the same cell and species order.",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
    nprocs: int | None = typer.Option(None, "--nprocs", help="MPI processes (default MLCHARGE_QE_NPROCS)."),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="Run folder (default mlcharge_scf/<formula>-<start>-<time>)."
    ),
    protocol: Path | None = typer.Option(
        None, "--protocol", help="YAML/JSON file of QEProtocol fields overriding the defaults."
    ),
    overwrite: bool = options.overwrite("the earlier results in --workdir (it is reused)"),
    pseudo: list[str] = options.PSEUDO,
) -> None:
    """Run one pw.x SCF and print iterations, energy, wall time, magnetisation and whether
    pw.x really read the starting density."""
    from mlcharge_workflows.engines.qe.core import run_qe_scf
    from mlcharge_workflows.validation import read_structure, refuse_overwrite

    try:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not supported here; supported: {', '.join(ENGINES)}")
        struct = read_structure(structure)  # named error before anything can crash on it
        if nprocs is not None and nprocs < 1:
            raise ValueError(f"--nprocs must be >= 1, got {nprocs}")
        if workdir is not None:
            refuse_overwrite(workdir, overwrite, "--workdir")
        proto = _load_protocol(protocol, pseudo)
        label = "atomic" if start == "atomic" else "file"
        if workdir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            workdir = Path("mlcharge_scf") / f"{struct.composition.reduced_formula}-{label}-{stamp}"
        doc = run_qe_scf(
            struct,
            workdir,
            start=start,
            protocol=proto,
            nprocs=nprocs,
            expect_density_read=False,  # reported (and exit status 3) instead of raised
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for line in _report_lines(doc):
        typer.echo(line)
    if json_out is not None:
        result = {**doc.summary(), "elapsed_s": doc.elapsed_s, "task_document": doc.model_dump(mode="json")}
        json_out.write_text(json.dumps(result, indent=2))
        typer.echo(f"JSON written   {json_out}")
    if doc.start == "file" and not doc.density_read_from_file:
        raise typer.Exit(EXIT_DENSITY_NOT_READ)


def register(app: typer.Typer) -> None:
    """Add ``mlcharge scf`` to ``app``."""
    app.command("scf")(scf)
