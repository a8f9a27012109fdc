"""``mlcharge submit``, ``mlcharge worker`` and ``mlcharge report``.

Without ``--launchpad`` all three use the embedded project folder (``--project``,
default ``MLCHARGE_PROJECT_DIR`` = ``./mlcharge_project``): FireWorks' file-backed
database and a montydb jobflow store that submitter, workers and report share.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mlcharge_workflows.cli import options as shared_options

_PROJECT_HELP = shared_options.PROJECT.help


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _read_protocol(path: Path | None, pseudo: list[str] | None = None):
    """The QEProtocol of a YAML/JSON file and ``--pseudo``, validated now (bad keys and
    files name themselves); the object itself travels in the Makers to the workers and into
    the record."""
    from mlcharge_workflows.catalogue import qe_protocol, read_protocol_fields

    try:
        return qe_protocol(None if path is None else read_protocol_fields(path), pseudo)
    except ValueError as exc:
        _fail(f"--protocol {path}: {exc}" if path is not None else f"--pseudo: {exc}")
    return None


def submit(
    structures: list[Path] = typer.Argument(..., help="Structure files or folders of them."),
    engine: str = typer.Option("qe", "--engine", help="DFT engine: qe or vasp."),
    flow: str = typer.Option("compare", "--flow", help="compare, ml-static or ml-bands."),
    launchpad: Path | None = shared_options.LAUNCHPAD,
    project: Path | None = typer.Option(None, "--project", "-p", help=_PROJECT_HELP),
    oracle: bool = typer.Option(False, "--oracle", help="compare: also restart from the "
                                "converged density (the ceiling)."),
    nscf: bool = typer.Option(False, "--nscf", help="compare: NSCF band gaps from the ML, "
                              "atomic and converged densities."),
    nprocs: int | None = typer.Option(None, "--nprocs", help="MPI processes per DFT run."),
    model: Path | None = typer.Option(None, "--model", help="Model weights (default: shipped)."),
    protocol: Path | None = shared_options.PROTOCOL,
    ml_fworker: str | None = typer.Option(None, "--ml-fworker", help="FireWorks worker name "
                                             "that must run the density prediction (e.g. gpu)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    pseudo: list[str] = shared_options.PSEUDO,
) -> None:
    """Add one workflow per structure to the LaunchPad (all or nothing)."""
    from mlcharge_workflows.submit import LaunchPadConfigError, submit_structures

    options: dict = {}
    if flow == "compare":
        options.update(oracle=oracle, nscf=nscf)
    elif oracle or nscf:
        _fail(f"--oracle/--nscf only apply to --flow compare, not {flow!r}")
    if nprocs is not None:
        if nprocs < 1:
            _fail(f"--nprocs must be >= 1, got {nprocs}")
        options["nprocs"] = nprocs
    if model is not None:
        if not model.is_file():
            _fail(f"model weights file {model} does not exist")
        options["model_path"] = str(model.resolve())
    if ml_fworker:
        options["ml_fworker"] = ml_fworker
    if protocol is not None or pseudo:
        if engine != "qe":
            _fail("--protocol and --pseudo are for --engine qe (VASP settings and POTCARs come "
                  "from atomate2's input sets)")
        options["protocol"] = _read_protocol(protocol, pseudo)
    try:
        result = submit_structures(structures, engine=engine, flow=flow, launchpad_file=launchpad,
                                   project=project, progress=progress, flow_options=options)
    except (LaunchPadConfigError, ValueError) as exc:
        _fail(f"{exc}\nNothing was submitted.")
    typer.echo(f"submitted {len(result.workflows)} {flow} workflow(s) ({engine}) to "
               f"{result.description}; batch {result.batch}")
    if launchpad is None:
        worker_args = f" --project {project}" if project else ""
        report_args = f" --store {project}" if project else ""
        then = (f", then `mlcharge report{report_args} --output report.html`"
                if flow == "compare" else " (outputs go to the project's job store)")
        typer.echo(f"next: `mlcharge worker{worker_args}`{then}")
        from mlcharge_workflows.submit.launchpad import EmbeddedLaunchPad, outgrown_message

        note = outgrown_message(EmbeddedLaunchPad(project))  # past EMBEDDED_LIMIT fireworks
        if note:
            typer.echo(note, err=True)


def worker(
    project: Path | None = typer.Option(None, "--project", "-p", help=_PROJECT_HELP + " With "
                                           "--launchpad: the folder under which launches run."),
    launchpad: Path | None = shared_options.LAUNCHPAD,
    nlaunches: int = typer.Option(0, "--nlaunches", "-n", help="Stop after N fireworks "
                                  "(0: until nothing is left)."),
    fworker: Path | None = typer.Option(None, "--fworker", help="FireWorks my_fworker.yaml "
                                           "(name/category/query, e.g. a GPU worker)."),
    store: Path | None = typer.Option(None, "--store", help="With --launchpad: jobflow store "
                                         "config file (default: jobflow's JOB_STORE)."),
    lostrun_expiration: int | None = typer.Option(
        None, "--lostrun-expiration", help="With --launchpad: seconds without a ping after which "
        "a RUNNING firework counts as lost and is rerun (default: FireWorks' 4 h)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Run submitted fireworks; lost runs of dead workers are recovered or rerun first."""
    from mlcharge_workflows.submit import LaunchPadConfigError, load_job_store, run_worker

    try:
        job_store = None
        if store is not None:
            if launchpad is None:
                _fail("--store is for --launchpad (MongoDB); the embedded project has its store")
            job_store = load_job_store(store)
        summary = run_worker(project=project, launchpad_file=launchpad, nlaunches=nlaunches,
                             fworker_file=fworker, store=job_store,
                             lostrun_expiration_s=lostrun_expiration, progress=progress)
    except (LaunchPadConfigError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted; anything left RUNNING is recovered by the next worker", err=True)
        raise typer.Exit(130) from None
    if summary.interrupted is not None:
        typer.echo(f"interrupted: firework {summary.interrupted} was returned to the queue")
    if summary.recovered or summary.rerun:
        typer.echo(f"lost runs of dead workers: {len(summary.recovered)} recovered from their "
                   f"finished results {summary.recovered}, {len(summary.rerun)} rerun "
                   f"{summary.rerun}")
    typer.echo(f"worker done: {len(summary.completed)} completed, {len(summary.fizzled)} "
               f"fizzled" + (f" {summary.fizzled}" if summary.fizzled else ""))


def report(
    store: Path | None = typer.Option(None, "--store", "-s", help="Project folder or jobflow "
                                         "store config file (default: MLCHARGE_PROJECT_DIR)."),
    json_file: Path | None = typer.Option(None, "--json", help="Records file of `mlcharge "
                                             "compare` instead of a store."),
    output: list[Path] = typer.Option([], "--output", "-o", help="report.html, .png, .csv or "
                                      ".json (repeat for several)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Summarise what the ML start saved: table, summary, plots."""
    from mlcharge_workflows.savings.report import (
        REPORT_SUFFIXES,
        load_records_from_json,
        load_records_from_store,
        summarize,
        summary_lines,
        write_report,
    )
    from mlcharge_workflows.settings import MLChargeSettings
    from mlcharge_workflows.submit import LaunchPadConfigError, load_job_store

    if store is not None and json_file is not None:
        _fail("give --store or --json, not both")
    for out in output:
        if out.suffix.lower() not in REPORT_SUFFIXES:
            _fail(f"--output {out}: suffix must be one of {', '.join(REPORT_SUFFIXES)}")
    try:
        if json_file is not None:
            records = load_records_from_json(json_file)
            source = str(json_file)
        else:
            where = store if store is not None else MLChargeSettings().project_dir
            records = load_records_from_store(load_job_store(where), progress=progress)
            source = str(where)
    except (LaunchPadConfigError, ValueError) as exc:
        _fail(str(exc))
    if not records:
        _fail(f"no savings records in {source} (run `mlcharge worker` on submitted compare "
              "workflows first)", code=1)
    for line in summary_lines(summarize(records)):
        typer.echo(line)
    for out in output:
        typer.echo(f"wrote {write_report(records, out)}")
    if not output:
        typer.echo("(add --output report.html for the plots and the per-structure table)")


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("submit")(submit)
    app.command("worker")(worker)
    app.command("report")(report)
