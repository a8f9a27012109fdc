"""``mlcharge compare``: baseline vs ML-initialised SCF for each structure, one record each.

Argument parsing only; the work is :func:`mlcharge_workflows.compare.run_compare`. The
JSON list written to ``--output`` holds one public record per structure (format:
``docs/compare.md``); every job output also goes to the file-backed jobflow store in
``--store`` for ``mlcharge report``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _read_protocol(text: str | None) -> dict | None:
    """Protocol overrides from a JSON/YAML file or an inline JSON object."""
    from mlcharge_workflows.catalogue import read_protocol_fields

    return None if text is None else read_protocol_fields(text)


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
) -> None:
    """Run baseline (atomic start) and ML-initialised SCF for each structure; write records."""
    from mlcharge_workflows.common.schemas import SavingsDocument
    from mlcharge_workflows.compare import run_compare
    from mlcharge_workflows.settings import MLChargeSettings

    if store is None:
        store = MLChargeSettings().project_dir
    try:
        docs = run_compare(
            [str(s) for s in structures], engine, oracle, nscf,
            None if model is None else str(model), workdir, store, jobs, nprocs, progress,
            _read_protocol(protocol),
        )
    except ValueError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    records = [SavingsDocument.model_validate(d).record() for d in docs]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(records, indent=2) + "\n")
    n_err = sum(r["error"] is not None for r in records)
    for r in records:
        it = r["scf_iterations"]
        status = f"error: {r['error'].splitlines()[0]}" if r["error"] else (
            f"iterations baseline {it['baseline']} ml {it['ml']} oracle {it['oracle']}"
            + (f" (fallback: {r['fallback']})" if r["fallback"] else "")
        )
        typer.echo(f"{r['structure']}: {status}")
    typer.echo(f"wrote {len(records)} records to {output} ({n_err} with errors); store: {store}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("compare")(compare)
