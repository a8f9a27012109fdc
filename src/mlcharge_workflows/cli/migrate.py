"""``mlcharge migrate``: move an embedded project (LaunchPad and job store) into MongoDB.

Exit status: 0 moved; 2 nothing moved (message on stderr: bad config, target not empty,
running fireworks, or a failure during the copy, after which the target was cleaned).
"""

from __future__ import annotations

from pathlib import Path

import typer


def migrate(
    launchpad: Path = typer.Option(..., "--launchpad", "-l", help="FireWorks my_launchpad.yaml "
                                   "of the (empty) MongoDB LaunchPad to move to."),
    project: Path | None = typer.Option(None, "--project", "-p", help="Embedded project folder "
                                           "(default: MLCHARGE_PROJECT_DIR or ./mlcharge_project)."),
    store: Path | None = typer.Option(None, "--store", help="jobflow store config (MongoDB) for "
                                         "the job outputs (default: jobflow's JOB_STORE)."),
) -> None:
    """Copy the embedded FireWorks database and jobflow store into MongoDB, all or nothing."""
    from mlcharge_workflows.submit import load_job_store
    from mlcharge_workflows.submit.config import LaunchPadConfigError
    from mlcharge_workflows.submit.launchpad import MigrationError, migrate_embedded

    try:
        job_store = None if store is None else load_job_store(store)
        counts = migrate_embedded(project, launchpad, store=job_store)
    except (LaunchPadConfigError, MigrationError, ValueError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    lp, st = counts["launchpad"], counts["store"]
    typer.echo(f"moved {lp.get('fireworks', 0)} fireworks, {lp.get('workflows', 0)} workflows, "
               f"{lp.get('launches', 0)} launches and {sum(st.values())} job-store documents "
               f"to {launchpad}")
    typer.echo(f"next: `mlcharge worker --launchpad {launchpad}"
               + (f" --store {store}" if store else "") + "`; the embedded project now refuses "
               "to be used")


def register(app: typer.Typer) -> None:
    """Add ``mlcharge migrate`` to ``app``."""
    app.command("migrate")(migrate)
