"""``mlcharge compare``: baseline vs ML-initialised SCF for each structure, one record each.

Argument parsing only; the work is :func:`mlcharge_workflows.compare.run_compare`. The
JSON list written to ``--output`` holds one public record per structure (format:
``docs/compare.md``); every job output also goes to the file-backed jobflow store in
``--store`` for ``mlcharge report``.

Each structure's record is written as soon as it finishes (``--output`` and the JSON Lines
file beside it, ``records.jsonl`` for ``records.json``), so Ctrl-C or a crash keeps every
finished structure; ``--resume`` then skips them.

Exit status: 0 every structure compared; 2 bad input, nothing run (message on stderr);
3 finished, but at least one structure has an error record; 130 interrupted (finished
records kept, ``--resume`` continues).
"""

from __future__ import annotations

from pathlib import Path

import typer

EXIT_BAD_INPUT = 2
EXIT_STRUCTURE_ERRORS = 3
EXIT_INTERRUPTED = 130


def _read_protocol(text: str | None, pseudo: list[str] | None = None) -> dict | None:
    """Protocol overrides from a JSON/YAML file or an inline JSON object, and ``--pseudo``."""
    from mlcharge_workflows.catalogue import read_protocol_fields, with_pseudo_options

    return with_pseudo_options(None if text is None else read_protocol_fields(text), pseudo)


def compare(
    structures: list[str] = typer.Argument(..., help="Structure files (CIF, POSCAR, ...)."),
    engine: str = typer.Option("qe", "--engine", help="DFT engine: qe or vasp."),
    oracle: bool = typer.Option(False, "--oracle", help="Also restart from the converged density."),
    nscf: bool = typer.Option(
        False, "--nscf", help="Band gaps from NSCF on the ML, atomic and converged densities."
    ),
    model: Path | None = typer.Option(None, "--model", help="Model weights (default: shipped)."),
    workdir: Path = typer.Option(Path("mlcharge_compare"), "--workdir", help="Run folders."),
    store: Path | None = typer.Option(
        None, "--store", help="File-backed jobflow store folder (default: MLCHARGE_PROJECT_DIR)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="JSON file for the list of records."),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Structures compared at a time."),
    nprocs: int = typer.Option(1, "--nprocs", help="MPI processes per DFT run (all arms alike)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    protocol: str | None = typer.Option(
        None, "--protocol",
        help="QE protocol overrides: a JSON/YAML file or inline JSON, e.g. '{\"ecutwfc_ry\": 25}'.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue --output: skip the structures "
                                "it already holds without error, run the others."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output."),
    pseudo: list[str] = typer.Option([], "--pseudo", help="QE: EL=FILE, a UPF file (NC or US) "
                                     "replacing the registry's for that element (repeatable)."),
) -> None:
    """Run baseline (atomic start) and ML-initialised SCF for each structure; write records."""
    from mlcharge_workflows.compare import CompareInterrupted, run_compare
    from mlcharge_workflows.settings import MLChargeSettings

    if store is None:
        store = MLChargeSettings().project_dir
    try:
        result = run_compare(
            [str(s) for s in structures], engine, oracle, nscf,
            None if model is None else str(model), workdir, store, jobs, nprocs, progress,
            _read_protocol(protocol, pseudo), output=output, resume=resume, overwrite=overwrite,
        )
    except ValueError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except CompareInterrupted as exc:
        r = exc.result
        typer.echo(f"interrupted: {len(r.docs)} finished structure(s) kept in {output} and "
                   f"{r.jsonl}; {r.n_left} not finished. Rerun with --resume to continue.",
                   err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    records = result.records
    for r in records:
        it = r["scf_iterations"]
        status = f"error: {r['error'].splitlines()[0]}" if r["error"] else (
            f"iterations baseline {it['baseline']} ml {it['ml']} oracle {it['oracle']}"
            + (f" (fallback: {r['fallback']})" if r["fallback"] else "")
        )
        typer.echo(f"{r['structure']}: {status}")
    resumed = f", {result.n_resumed} kept from the earlier run" if result.n_resumed else ""
    typer.echo(f"wrote {len(records)} records to {output} ({result.n_errors} with errors"
               f"{resumed}); store: {store}")
    if result.n_errors:
        typer.echo(f"{result.n_errors} structure(s) failed: exit status {EXIT_STRUCTURE_ERRORS}",
                   err=True)
        raise typer.Exit(EXIT_STRUCTURE_ERRORS)


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("compare")(compare)
