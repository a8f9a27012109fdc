"""``mlcharge train`` and ``mlcharge predict``: fit the density model, and write a start density.

torch is imported only inside the commands, so the rest of the CLI works without it.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mlcharge_workflows.cli import options

ENGINES = ("qe", "vasp")


def train(
    config: Path = typer.Argument(..., help="YAML training config (see docs/model-card.md)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Override the config's output folder."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Override the time budget."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from output/checkpoint.pt."),
) -> None:
    """Train the density model on datasets from ``data generate`` / ``data ingest``.

    Prints the validation NMAPE and pw.x's SCF error (the functional behind its 'estimated
    scf accuracy', of the ML density minus the converged one, Ry/atom) every validated epoch; the config's
    ``select_by: scf_error | nmape`` (default scf_error) picks which one keeps the best model.
    Writes checkpoint.pt (resumable), model.pt (best weights; its metadata names the
    criterion), metrics.json (test NMAPE and SCF error) and history.json into the output folder.
    """
    try:
        from mlcharge_workflows.training.train import TrainConfig
        from mlcharge_workflows.training.train import train as run_training

        cfg = TrainConfig.from_yaml(config)
        updates = {"resume": resume}
        if output is not None:
            updates["output"] = output
        if max_minutes is not None:
            updates["max_minutes"] = max_minutes
        if device is not None:
            updates["device"] = device
        cfg = cfg.model_copy(update=updates)
        metrics = run_training(cfg, log=typer.echo)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"model written  {Path(cfg.output) / 'model.pt'}")
    scf = metrics.get("best_val_scf_error")
    typer.echo(
        f"kept (by {metrics.get('select_by', 'nmape')}): validation NMAPE {metrics['best_val_nmape']:.3f}%"
        + (f", SCF error {scf:.3e} Ry/atom" if scf is not None else "")
    )


def _read_structure(path: Path):
    from mlcharge_workflows.validation import read_structure

    return read_structure(path)  # the limits of every command (scf, compare, submit)


def predict(
    structure: Path = typer.Argument(..., help="Structure file pymatgen reads (CIF, POSCAR, ...)."),
    engine: str = typer.Option("qe", "--engine", help="qe (charge-density.dat) or vasp (CHGCAR)."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="QE outdir; VASP: a folder (gets OUTPUT/CHGCAR) or a path named *CHGCAR*."
    ),
    encut: float = typer.Option(520.0, "--encut", help="VASP ENCUT (eV) that fixes the fine grid."),
    prec: str = typer.Option("Accurate", "--prec", help="VASP PREC (Normal, Accurate, ...)."),
    ecutrho: float | None = typer.Option(
        None, "--ecutrho", help="QE ecutrho (Ry); default: the QE protocol's cutoff for the structure."
    ),
    model_path: Path | None = typer.Option(None, "--model", help="Weights file (default: shipped)."),
    spin: str | None = typer.Option(
        None, "--spin", help="Magnetic cells: 'charge' (learned rho, pw.x's atomic m), 'model' (learned rho and m), "
        "'moments' (learned rho, atomic m at each atom's learned moment) or "
        "'atomic' (pw.x's own start); default: MLCHARGE_MODEL_SPIN, else the weights' recorded default."
    ),
    overwrite: bool = options.overwrite("a density already written at --output"),
    pseudo: list[str] = options.PSEUDO,
) -> None:
    """Predict the density of STRUCTURE and write it as a start for QE or VASP.

    QE: ``OUTPUT/pwscf.save/charge-density.dat`` (the outdir for ``startingpot='file'``);
    VASP: a CHGCAR on the fine grid of ``--encut``/``--prec``.
    """
    t0 = time.perf_counter()
    try:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not supported; choose one of {', '.join(ENGINES)}")
        if pseudo and engine != "qe":
            raise ValueError("--pseudo is for --engine qe (VASP: the POTCARs of the run)")
        struct = _read_structure(structure)
        from mlcharge_workflows.validation import refuse_overwrite

        refuse_overwrite(output if "CHGCAR" in output.name and not output.is_dir() else
                         output / ("CHGCAR" if engine == "vasp" else "pwscf.save/charge-density.dat"),
                         overwrite, "--output")
        from mlcharge_workflows.model import load_model, predict_density

        model = load_model(model_path)
        model.species_of(struct)  # unknown elements: a clear error before any other check
        if engine == "vasp":
            from mlcharge_workflows.density.chgcar import vasp_fine_grid, write_chgcar

            shape = vasp_fine_grid(struct, encut, prec)
            t1 = time.perf_counter()
            grid = predict_density(struct, shape, model, spin=spin)
            t_pred = time.perf_counter() - t1
            target = output if "CHGCAR" in output.name and not output.is_dir() else output / "CHGCAR"
            target.parent.mkdir(parents=True, exist_ok=True)
            written = write_chgcar(grid, target)
        else:
            from mlcharge_workflows.catalogue import qe_protocol
            from mlcharge_workflows.density.qe_file import write_qe_start_density
            from mlcharge_workflows.engines.qe.sets import PREFIX

            proto = qe_protocol(None, pseudo)
            ecut = ecutrho if ecutrho is not None else proto.cutoffs(struct)[1]
            reference = {el: str(i.source) for el, i in proto.pseudos(struct).items()}
            t1 = time.perf_counter()
            grid = predict_density(struct, model=model, ecutrho_ry=ecut, spin=spin, reference=reference)
            t_pred = time.perf_counter() - t1
            written = write_qe_start_density(
                output / f"{PREFIX}.save", grid, ecut, expected_electrons=grid.metadata["n_electrons"]
            )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"structure        {struct.composition.formula} ({len(struct)} atoms)")
    typer.echo(f"grid             {' x '.join(map(str, grid.shape))}")
    typer.echo(f"electrons        {grid.n_electrons:.6f} (valence {grid.metadata['n_electrons']:g})")
    if grid.magnetization is not None:
        typer.echo(f"magnetisation    {grid.total_magnetization:.4f} μB/cell")
    typer.echo(f"floor charge     {grid.metadata['clipped_electrons']:.2e} e (density kept >= half the atomic superposition)")
    if grid.metadata.get("spin_start"):
        typer.echo(f"spin start       {grid.metadata['spin_start']}")
    if grid.metadata.get("spin_start") == "atomic":
        typer.echo(
            "fallback         atomic_spin_start: magnetic cell, so this is the atomic superposition "
            "with starting moments (the engine's own atomic start), NOT a model prediction; "
            "--spin model writes the learned rho and m",
        )
    ref = grid.metadata.get("reference") or {}
    for el, info in sorted((ref.get("elements") or {}).items()):
        src = info.get("source") or "training"
        name = src.get("file", src.get("kind")) if isinstance(src, dict) else src
        typer.echo(f"reference        {el}: {name}"
                   + (" (differs from the training pseudopotential)" if info.get("differs_from_training") else ""))
    typer.echo(f"prediction time  {t_pred:.3f} s (total {time.perf_counter() - t0:.3f} s)")
    typer.echo(f"written          {written}")


def register(app: typer.Typer) -> None:
    """Add ``mlcharge train`` and ``mlcharge predict`` to ``app``."""
    app.command("train")(train)
    app.command("predict")(predict)
