"""``mlcharge compare``: baseline vs ML-initialised SCF for each structure, one record each.

Each structure runs as its own jobflow flow (``run_locally``) in a worker process, so a
crash in one never stops the others; arms of one structure run one after the other with
the same MPI layout. The JSON list written to ``--output`` holds one public record per
structure (format: ``docs/compare.md``); every job output, the savings documents included,
also goes to the file-backed jobflow store in ``--store`` for ``mlcharge report``.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import typer

ENGINES = ("qe", "vasp")


def _slug(label: str, index: int) -> str:
    stem = Path(label).stem if label else "structure"
    return f"{index:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)[:60]}"


def _compare_one(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: run one structure's comparison flow; never raises.

    Returns ``{"record": dict, "docs": [...], "data": {store_name: [...]}}`` with the
    savings record and every document the flow wrote to its in-memory job store.
    """
    label, engine = task["label"], task["engine"]
    start = time.perf_counter()
    try:
        from pymatgen.core import Structure

        from mlcharge_workflows.savings.flows import comparison_flow, run_flow_collect

        try:
            structure = Structure.from_file(task["path"])
        except Exception as exc:  # unreadable input: an error record, not a crash
            raise ValueError(f"cannot read structure file {task['path']!r}: {exc}") from exc
        flow = comparison_flow(
            structure,
            engine=engine,
            label=label,
            oracle=task["oracle"],
            nscf=task["nscf"],
            model_path=task["model"],
            nprocs=task["nprocs"],
            protocol=task["protocol"],
        )
        out = run_flow_collect(flow, Path(task["workdir"]), engine=engine)
        out["record"]["details"]["elapsed_s"] = time.perf_counter() - start
        return out
    except Exception as exc:
        from mlcharge_workflows.savings.schemas import error_record

        msg = f"{type(exc).__name__}: {exc}"
        rec = error_record(label, engine, msg).model_dump(mode="json")
        rec["details"]["traceback"] = traceback.format_exc(limit=8)
        rec["details"]["elapsed_s"] = time.perf_counter() - start
        return {"record": rec, "docs": [], "data": {}}


def run_compare(
    structures: list[str],
    engine: str = "qe",
    oracle: bool = False,
    nscf: bool = False,
    model: str | None = None,
    workdir: Path = Path("mlcharge_compare"),
    store_dir: Path | None = None,
    jobs: int = 2,
    nprocs: int = 1,
    progress: bool = True,
    protocol: dict | None = None,
) -> list[dict[str, Any]]:
    """Compare every structure; return the stored documents (records plus ``details``).

    ``jobs`` structures run at a time, each DFT run with ``nprocs`` MPI processes.
    Documents are written to the file-backed store in ``store_dir`` (None: no store).
    ``protocol`` overrides fields of the fixed QE protocol (validated here).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if jobs < 1 or nprocs < 1:
        raise ValueError(f"--jobs and --nprocs must be >= 1, got {jobs} and {nprocs}")
    if protocol:
        if engine != "qe":
            raise ValueError("--protocol sets QE protocol fields; it does not apply to VASP")
        from pydantic import ValidationError

        from mlcharge_workflows.engines.qe.sets import QEProtocol

        unknown = sorted(set(protocol) - set(QEProtocol.model_fields))
        if unknown:
            raise ValueError(
                f"invalid QE protocol override: unknown field(s) {unknown}; "
                f"known: {', '.join(QEProtocol.model_fields)}"
            )
        try:
            QEProtocol(**protocol)
        except (ValidationError, TypeError) as exc:
            raise ValueError(f"invalid QE protocol override {protocol}: {exc}") from None
    if model is not None and not Path(model).is_file():
        raise ValueError(f"model weights file {model!r} does not exist")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tasks = [
        {
            "label": s,
            "path": s,
            "engine": engine,
            "oracle": oracle,
            "nscf": nscf,
            "model": None if model is None else str(Path(model).resolve()),
            "nprocs": nprocs,
            "protocol": protocol,
            "workdir": str(workdir / _slug(s, i)),
        }
        for i, s in enumerate(structures)
    ]
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=f"compare ({engine})", unit="structure", disable=not progress)
    if jobs == 1 or len(tasks) == 1:
        for i, t in enumerate(tasks):
            results[i] = _compare_one(t)
            bar.update(1)
    else:
        # spawn, not fork: a fork taken while torch's threads hold a lock deadlocks the child
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
            futures = {pool.submit(_compare_one, t): i for i, t in enumerate(tasks)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
    bar.close()

    if store_dir is not None:
        from mlcharge_workflows.savings.flows import (
            project_job_store,
            save_record_only,
            save_to_store,
        )

        store = project_job_store(store_dir)
        for res in results:
            if res["docs"]:
                save_to_store(store, res["docs"], res["data"])
            else:
                save_record_only(store, res["record"])
    return [res["record"] for res in results]  # type: ignore[index]


def _read_protocol(text: str | None) -> dict | None:
    """Protocol overrides from a JSON/YAML file or an inline JSON object."""
    if text is None:
        return None
    import yaml

    try:
        is_file = not text.lstrip().startswith("{") and Path(text).is_file()
    except OSError:  # e.g. an inline JSON longer than a file name may be
        is_file = False
    try:
        data = yaml.safe_load(Path(text).read_text() if is_file else text)
    except yaml.YAMLError as exc:
        raise ValueError(f"--protocol {text!r} is neither a file nor valid JSON/YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--protocol must give a mapping of QEProtocol fields, got {data!r}")
    return data


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
    from mlcharge_workflows.savings.schemas import SavingsDocument
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
