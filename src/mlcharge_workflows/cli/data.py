"""``mlcharge data``: generate density datasets with QE, ingest VASP runs, rebuild manifests.

Exit status: 0 success; 1 bad input (message on stderr); 2 finished with failures listed
in the manifest (the records that succeeded are kept).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mlcharge_workflows.cli import options

data_app = typer.Typer(
    name="data",
    help="Density datasets: generate with Quantum ESPRESSO, ingest VASP runs.",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _protocol_fields(path: Path | None, kspacing: float | None,
                     pseudo: list[str] | None = None) -> dict:
    from mlcharge_workflows.catalogue import qe_protocol, read_protocol_fields, with_pseudo_options

    fields: dict = {} if path is None else read_protocol_fields(path)
    if kspacing is not None:
        fields["kspacing"] = kspacing
    fields = with_pseudo_options(fields, pseudo) or {}
    if fields:
        qe_protocol(fields)  # the loader of every command: unknown fields refused, nearest named
    return fields


def _report_dataset(out: Path, man: dict) -> None:
    """Print the dataset summary; exit 2 when it finished with failures (all records kept)."""
    typer.echo("\n".join([f"dataset          {Path(out).resolve()}", *_summary_lines(man)]))
    if man.get("summary", {}).get("n_failures"):
        raise typer.Exit(2)


def _summary_lines(man: dict) -> list[str]:
    s = man.get("summary", {})
    lines = [
        f"records          {s.get('n_records', 0)}",
        f"failures         {s.get('n_failures', 0)} {s.get('failure_kinds', {}) or ''}".rstrip(),
        f"size             {s.get('records_size_bytes', 0) / 1e6:.1f} MB",
        f"elements         {json.dumps(s.get('structures_with_element', {}))}",
    ]
    split = man.get("split", {}).get("summary")
    if split:
        lines.append("splits           " + ", ".join(
            f"{k} {v['structures']} ({v['families']} families)" for k, v in split.items()))
    for rid, f in list(man.get("failures", {}).items())[:20]:
        lines.append(f"  failed {rid}: {f.get('kind')}: {f.get('reason', '').splitlines()[0][:150]}"
                     if f.get("reason") else f"  failed {rid}: {f.get('kind')}")
    return lines


def _generator_options(items: list[str]) -> dict:
    """``{KEY: VALUE}`` from ``KEY=VALUE`` items, each VALUE read as JSON when it parses."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--generator-option needs KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@data_app.command("generate")
def generate(
    n: int = typer.Option(..., "--n", help="Number of structures (the first N of the seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the structure generator."),
    out: Path = typer.Option(..., "--out", help="Dataset folder (created; resumed if it exists)."),
    nprocs: int = typer.Option(1, "--nprocs", help="MPI processes per pw.x run."),
    workers: int = typer.Option(2, "--workers", help="pw.x runs at the same time."),
    max_atoms: int = typer.Option(16, "--max-atoms", help="Largest cell generated."),
    elements: str | None = typer.Option(None, "--elements", help="Comma-separated elements "
                                           "(default: every element the QE engine supports)."),
    small_fraction: float = typer.Option(0.6, "--small-fraction",
                                         help="Fraction of primitive cells of <= 4 atoms "
                                         "(generator 1)."),
    generator: int = typer.Option(1, "--generator", help="Structure generator version: 1 "
                                  "(small prototypes, the seed-0 datasets so far) or 2 (AFLOW "
                                  "prototypes, defect supercells, slabs, FM and AFM starts)."),
    generator_option: list[str] = typer.Option([], "--generator-option", help="KEY=VALUE of "
                                               "generator 2 (e.g. afm_fraction=1.0, "
                                               "size_exponent=0); repeatable, recorded in the "
                                               "manifest."),
    store_ecut: float = typer.Option(0.0, "--store-ecut", help="Density cutoff (Ry) of the "
                                     "stored coefficients; 0 keeps pw.x's whole sphere."),
    protocol: Path | None = options.PROTOCOL,
    pseudo: list[str] = options.PSEUDO,
    kspacing: float | None = typer.Option(None, "--kspacing", help="Override the protocol's "
                                             "k-point spacing (Å⁻¹)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop a pw.x run after this "
                                            "many seconds (listed as a failure)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run recorded failures again."),
    convergence_retry: bool = typer.Option(False, "--convergence-retry/--no-convergence-retry",
                                           help="Rerun an SCF that did not converge once with "
                                           "local-TF mixing (beta 0.2, 200 steps); the record "
                                           "says so. Costly: it rescued 1 of 5 failures."),
    skip_packed: list[Path] = typer.Option([], "--skip-packed", help="Sharded dataset "
                                           "(data/qe/NAME) whose records are not run again; "
                                           "repeatable."),
    fireworks: bool = typer.Option(False, "--fireworks", help="Submit to a FireWorks LaunchPad "
                                   "instead of running locally (then `mlcharge worker`)."),
    launchpad: Path | None = options.LAUNCHPAD,
    project: Path | None = options.PROJECT,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Run QE statics from atoms on N generated structures and store their densities."""
    from mlcharge_workflows.training.generate import (
        CONVERGENCE_RETRY,
        GenerationSettings,
        generate_dataset,
    )

    try:
        settings = GenerationSettings(
            seed=seed, max_atoms=max_atoms, small_fraction=small_fraction,
            elements=[e.strip() for e in elements.split(",") if e.strip()] if elements else None,
            protocol=_protocol_fields(protocol, kspacing, pseudo),
            store_ecut_ry=None if store_ecut <= 0 else store_ecut,
            generator_version=generator,
            generator_options=_generator_options(generator_option),
        )  # fmt: skip
        man = generate_dataset(
            out, n, settings, nprocs=nprocs, workers=workers, retry_failed=retry_failed,
            fireworks=fireworks, launchpad_file=launchpad, project=project, progress=progress,
            timeout_s=timeout, skip_packed=skip_packed,
            convergence_retry=CONVERGENCE_RETRY if convergence_retry else None,
        )  # fmt: skip
    except ValueError as exc:
        _fail(str(exc))
    if fireworks:
        typer.echo(f"submitted {man['submitted']} QE statics to {man['launchpad']}")
        args = f" --project {project}" if project else ""
        typer.echo(f"next: `mlcharge worker{args}`, then `mlcharge data finalize {out}`")
        return
    _report_dataset(out, man)


@data_app.command("ingest")
def ingest(
    src: Path = typer.Argument(..., help="Folder of VASP runs (searched recursively for CHGCAR)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder (created; resumed if it exists)."),
    store_ecut: float = typer.Option(0.0, "--store-ecut", help="Density cutoff (Ry) of the stored "
                                     "coefficients; 0 keeps the whole grid (but its Nyquist "
                                     "planes)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Turn VASP runs (CHGCAR with vasprun.xml or OUTCAR) into density records."""
    from mlcharge_workflows.training.ingest import ingest_vasp_runs

    try:
        man = ingest_vasp_runs(src, out, None if store_ecut <= 0 else store_ecut,
                               progress=progress)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _report_dataset(out, man)


@data_app.command("pack")
def pack(
    src: Path = typer.Argument(..., help="Dataset folder with records/ (data generate / ingest)."),
    into: Path = typer.Option(..., "--into", help="Sharded dataset folder, e.g. data/qe/main "
                              "(created; only records not yet packed are added)."),
    shard_size: int = typer.Option(500, "--shard-size", help="Records per new shard at most."),
    splits_from: Path | None = typer.Option(None, "--splits-from", help="Keep the family splits "
                                               "of this manifest.json or model weights file."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed for dealing out new families."),
) -> None:
    """Pack finished records into new append-only shards (checked, stored within 0.1 % NMAPE,
    read back and compared with the source before the shard is complete)."""
    from mlcharge_workflows.training.pack import pack_dataset
    from mlcharge_workflows.training.shards import ShardDataset

    try:
        res = pack_dataset(src, into, shard_size=shard_size, splits_from=splits_from,
                           split_seed=split_seed, log=typer.echo)
    except ValueError as exc:
        _fail(str(exc))
    ds = ShardDataset(into)
    size = sum(p.stat().st_size for p in ds.shards_dir.glob("shard-*"))
    split = {k: len(v) for k, v in ds.manifest["splits"].items()}
    typer.echo(f"packed {res['new_records']} new records; {into} holds {len(ds.entries)} "
               f"({len(ds.manifest['excluded'])} excluded), {len(ds.manifest['failures'])} "
               f"failures listed, {size / 1e6:.1f} MB; splits {split}")
    for rid, why in (res.get("excluded") or {}).items():
        typer.echo(f"  excluded {rid}: {why}")


@data_app.command("finalize")
def finalize(
    directory: Path = typer.Argument(..., help="Dataset folder."),
    split_seed: int | None = typer.Option(None, "--split-seed", help="Seed of the family "
                                             "split (default: the one recorded)."),
    resplit: bool = typer.Option(False, "--resplit", help="Deal every family out anew instead "
                                 "of keeping the splits of the families already placed."),
) -> None:
    """Rebuild a dataset's manifest (records, failures, splits, counts) from its files.

    Families already in the manifest's splits keep them (new families are dealt out), so a
    model trained on an earlier snapshot keeps a clean test split; --resplit starts over.
    """
    from mlcharge_workflows.training.storage import finalize_manifest

    if not (directory / "records").is_dir() and not (directory / "manifest.json").is_file():
        _fail(f"{directory} is not a dataset folder (no records/ nor manifest.json)")
    man = finalize_manifest(directory, split_seed, resplit=resplit)
    typer.echo("\n".join([f"dataset          {directory.resolve()}", *_summary_lines(man)]))


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.add_typer(data_app, name="data")
