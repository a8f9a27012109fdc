"""``mlcharge data generate``: QE statics from atoms for generated structures -> density records.

Dataset folder ``DIR``::

    manifest.json        generator settings, engine and protocol, provenance, records table,
                         failures with reasons, composition-family splits, counts
    records/<id>.npz     one converged density each (atomic write: temp file + rename)
    failures/<id>.json   why a structure has no record (unconverged, pw.x error, bad density)
    work/<id>/           pw.x run folder while it runs; removed on success, inputs and
                         output kept on failure

Every structure is one jobflow job (:func:`density_record_job`, the same function for
every execution mode). Locally the jobs run in a pool of ``workers`` processes, each
job through ``jobflow.run_locally``: jobflow's local manager runs a flow's jobs one
after the other in one process, so it cannot use two cores by itself. With
``fireworks=True`` the flow goes to a LaunchPad instead (``mlcharge worker`` runs it).

The files are the truth: a job writes its record or failure file itself, so a killed
generation loses at most the runs in flight; rerunning the same command skips every
structure with a record (and, unless ``retry_failed``, every recorded failure).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import psutil
from jobflow import job

from mlcharge_workflows.training.dataset import DensityDataset, DensityRecord
from mlcharge_workflows.training.realistic import RealisticGenerator
from mlcharge_workflows.training.storage import (
    code_provenance,
    command_line,
    finalize_manifest,
    now,
    read_failures,
    stored_coefficients,
    write_json_atomic,
)
from mlcharge_workflows.training.structures import GeneratedStructure, StructureGenerator

#: Default storage cutoff (Ry): None keeps pw.x's whole density sphere (exact). A lower cutoff
#: costs up to 1 % NMAPE at 200 Ry for ultrasoft metals (measured in docs/dataset.md).
DEFAULT_STORE_ECUT_RY: float | None = None


@dataclass
class GenerationSettings:
    """What defines a generated dataset (checked again when a generation resumes).

    ``protocol`` holds :class:`~mlcharge_workflows.engines.qe.sets.QEProtocol` fields
    (empty: the package's fixed protocol). ``store_ecut_ry`` None keeps pw.x's whole sphere.
    """

    seed: int = 0
    max_atoms: int = 16
    small_fraction: float = 0.6
    elements: list[str] | None = None
    protocol: dict = field(default_factory=dict)
    store_ecut_ry: float | None = DEFAULT_STORE_ECUT_RY
    generator_version: int = 1
    generator_options: dict = field(default_factory=dict)

    def generator(self) -> StructureGenerator | RealisticGenerator:
        """The structure generator of these settings (version 1: :mod:`.structures`, the
        datasets made so far; version 2: :mod:`.realistic`)."""
        if self.generator_version == 2:
            try:
                return RealisticGenerator(self.seed, self.elements, max_atoms=self.max_atoms,
                                          **self.generator_options)
            except TypeError as exc:  # an unknown option: say which, as a bad-input error
                raise ValueError(f"generator 2 options {self.generator_options}: {exc}") from exc
        if self.generator_version != 1:
            raise ValueError(f"unknown generator version {self.generator_version} (1 or 2)")
        if self.generator_options:
            raise ValueError(f"generator version 1 takes no options, got {self.generator_options}")
        return StructureGenerator(
            self.seed, self.elements, max_atoms=self.max_atoms, small_fraction=self.small_fraction
        )

    def qe_protocol(self):
        """The QE protocol of these settings."""
        from mlcharge_workflows.engines.qe.sets import QEProtocol

        return QEProtocol(**self.protocol)


# ------------------------------------------------------------------ one structure
def _pseudo_info(elements: list[str], files: dict[str, str] | None = None) -> dict:
    """File, kind, valence and md5 of the pseudopotential of each element: the protocol's
    ``pseudopotentials`` (``files``, element -> UPF path) where given, else the registry's."""
    import hashlib

    from mlcharge_workflows.pseudo import resolve_pseudos

    out = {}
    for el, p in sorted(resolve_pseudos(list(elements), overrides=files or None).items()):
        digest = hashlib.md5(Path(p.source).read_bytes()).hexdigest()
        out[el] = {"file": p.filename, "kind": p.kind, "z_valence": p.z_valence, "md5": digest}
    return out


def _fail(out: Path, gen: dict, kind: str, reason: str, t0: float, workdir: Path) -> dict:
    doc = {
        "id": gen["id"], "family": gen["family"], "prototype": gen["prototype"], "kind": kind,
        "reason": reason[-4000:], "wall_s": round(time.time() - t0, 2), "run_folder": str(workdir),
        "time": now(),
    }  # fmt: skip
    write_json_atomic(out / "failures" / f"{gen['id']}.json", doc)
    for big in [workdir / "out", *workdir.glob("*/out")]:  # keep pw.in / pw.out, drop the big data
        shutil.rmtree(big, ignore_errors=True)
    return {"id": gen["id"], "status": "failed", "kind": kind, "reason": reason[-300:]}


class RunTimeout(Exception):
    """A run went past its time limit."""


@contextmanager
def _time_limit(seconds: float | None):
    """Raise :class:`RunTimeout` after ``seconds`` (SIGALRM), killing child processes first."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum, frame):  # noqa: ARG001
        _kill_descendants()
        raise RunTimeout()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


CONVERGENCE_RETRY: dict[str, Any] = {
    "mixing_mode": "local-TF", "mixing_beta": 0.2, "electron_maxstep": 200,
}
"""QE protocol fields of the one rerun ``--convergence-retry`` gives a structure whose SCF
did not converge (opt-in).

The converged density does not depend on how the SCF got there, so a record made with
damped, inhomogeneity-aware mixing (pw.x's choice for metals, surfaces and magnetic cells)
is the same answer, and leaving those cells out biases the data against the magnetic and
metallic cells that are hard to converge. The record says so: ``metadata["protocol"]`` is
the protocol of the run that converged and ``metadata["convergence_retry"]`` names the
fields changed and why. Not the default: measured on five listed failures (session 8) it
rescued one (FeC, 83 iterations) and paid up to 200 iterations for each of the others,
about 30 ordinary records' worth of pw.x time per rescued record.
"""


def compute_density_record(
    structure,
    gen: dict,
    out: str,
    protocol: dict,
    store_ecut_ry: float | None,
    nprocs: int = 1,
    provenance: dict | None = None,
    timeout_s: float | None = None,
    convergence_retry: dict[str, Any] | None = None,
) -> dict:
    """Run the QE static of one structure from atoms and store its density record.

    Never raises for a failed run: the failure (kind and reason) goes to
    ``failures/<id>.json`` and the returned summary. Returns ``{"id", "status", ...}``
    with status ``ok``, ``exists`` or ``failed``. ``timeout_s`` stops pw.x after that
    many seconds, both attempts together (failure kind ``timeout``; needs the main thread,
    as in a pool worker). With ``convergence_retry`` (protocol fields, e.g.
    :data:`CONVERGENCE_RETRY`) a run that does not converge is run once more with those
    fields changed, recorded in the record's metadata or, if that fails too, in the failure.
    """
    from mlcharge_workflows.engines.qe.core import align_density, read_converged_density, run_qe_scf
    from mlcharge_workflows.engines.qe.sets import QEProtocol

    root = Path(out)
    ds = DensityDataset(root)
    rid = gen["id"]
    if rid in ds:
        return {"id": rid, "status": "exists"}
    workdir = root / "work" / rid
    shutil.rmtree(workdir, ignore_errors=True)  # a run killed earlier: start it again
    t0 = time.time()
    prot = QEProtocol(**protocol)
    run_dir, retry = workdir, None
    try:
        with _time_limit(timeout_s):
            try:
                doc = run_qe_scf(structure, run_dir, start="atomic", protocol=prot, nprocs=nprocs)
            except RuntimeError as exc:
                if not convergence_retry or "did not converge" not in str(exc):
                    raise
                retry = {"changed": dict(convergence_retry),
                         "first_attempt": {k: getattr(prot, k) for k in convergence_retry},
                         "reason": str(exc)[-500:]}
                prot = QEProtocol(**{**protocol, **convergence_retry})
                run_dir = workdir / "retry"  # the first attempt's pw.out stays beside it
                doc = run_qe_scf(structure, run_dir, start="atomic", protocol=prot, nprocs=nprocs)
    except RunTimeout:
        again = " (in its convergence rerun)" if retry else ""
        return _fail(root, gen, "timeout", f"pw.x stopped after {timeout_s} s{again}", t0, workdir)
    except RuntimeError as exc:
        kind = "not_converged" if "did not converge" in str(exc) else "pw_failed"
        reason = str(exc) if retry is None else (
            f"{retry['reason']}; rerun with {retry['changed']}: {exc}")
        return _fail(root, gen, kind, reason, t0, workdir)
    except ValueError as exc:
        return _fail(root, gen, "invalid_structure", str(exc), t0, workdir)
    try:
        grid = align_density(read_converged_density(run_dir), structure)
        mill, total, mag, stats = stored_coefficients(grid, store_ecut_ry, doc.ecutrho_ry)
        elements = sorted(e.symbol for e in structure.composition)
        meta = {
            "engine": "quantum-espresso",
            "pw_version": doc.pw_version,
            "start": "atomic",
            "converged": doc.converged,
            "family": gen["family"],
            "prototype": gen["prototype"],
            "generator_info": gen.get("info", {}),
            "protocol": prot.model_dump(mode="json"),
            "ecutwfc_ry": doc.ecutwfc_ry,
            "ecutrho_ry": doc.ecutrho_ry,
            "kpoints": prot.kpoint_grid(doc.structure),
            "n_kpoints": doc.n_kpoints,
            "n_symmetry_ops": doc.n_symmetry_ops,
            "nspin": doc.nspin,
            "nprocs": doc.nprocs,
            "total_magnetization": doc.total_magnetization,
            "absolute_magnetization": doc.absolute_magnetization,
            "fermi_energy_eV": doc.fermi_energy_eV,
            "wall_time_s": doc.wall_time_s,
            "cpu_time_s": doc.cpu_time_s,
            "elapsed_s": round(time.time() - t0, 2),
            "pseudopotentials": _pseudo_info(elements, prot.pseudopotentials),
            "storage": stats,
            "provenance": provenance or {},
        }
        if retry is not None:
            meta["convergence_retry"] = retry
        record = DensityRecord(
            id=rid, structure=structure, grid_shape=grid.shape, mill=mill, total=total,
            magnetization=mag, energy_eV=doc.energy_eV, scf_iterations=doc.scf_iterations,
            metadata=meta,
        )  # fmt: skip
    except ValueError as exc:  # non-finite density, wrong electron count, cell mismatch
        return _fail(root, gen, "bad_density", str(exc), t0, workdir)
    ds.add(record)
    (root / "failures" / f"{rid}.json").unlink(missing_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "id": rid, "status": "ok", "scf_iterations": doc.scf_iterations,
        "wall_s": doc.wall_time_s, "nmape": stats["truncation_nmape_total_percent"],
    }  # fmt: skip


@job
def density_record_job(**kwargs) -> dict:
    """jobflow job around :func:`compute_density_record` (output: its small summary dict)."""
    return compute_density_record(**kwargs)


# ------------------------------------------------------------------ local execution
def _kill_descendants() -> None:
    """SIGKILL every process below this one (mpirun and pw.x)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def _on_term(signum, frame) -> None:  # noqa: ARG001
    try:
        _kill_descendants()
    finally:
        os._exit(1)


def _worker_init(parent_pid: int | None = None) -> None:
    """Pool worker: die (with its pw.x) when the parent dies, even by SIGKILL."""
    import ctypes
    import warnings

    warnings.simplefilter("ignore")  # jobflow's deprecations, pw.x symmetry advice
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the signal was armed


def run_job_locally(kwargs: dict) -> dict:
    """Run one :func:`density_record_job` with ``jobflow.run_locally`` (in-memory store)."""
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    j = density_record_job(**kwargs)
    try:
        responses = run_locally(j, store=JobStore(MemoryStore()), log=False, raise_immediately=True)
        return responses[j.uuid][1].output
    except Exception as exc:  # noqa: BLE001 - a crash of the job itself must not stop the rest
        gen = kwargs["gen"]
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        t0 = time.time()
        root = Path(kwargs["out"])
        return _fail(root, gen, "job_error", reason, t0, root / "work" / gen["id"])


def _gen_dict(g: GeneratedStructure) -> dict:
    return {"id": g.id, "family": g.family, "prototype": g.prototype, "info": g.info}


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True)


def _with_protocol_defaults(definition: dict) -> dict:
    """``definition`` with its protocol read through today's QEProtocol, so a field added
    since (e.g. ``pseudopotentials``, default: the registry files) takes its default value
    and a dataset made before it resumes; a protocol that no longer validates is left as is
    (and then differs)."""
    from pydantic import ValidationError

    from mlcharge_workflows.engines.qe.sets import QEProtocol

    proto = definition.get("protocol")
    if not isinstance(proto, dict):
        return definition
    try:
        return {**definition, "protocol": QEProtocol(**proto).model_dump(mode="json")}
    except (ValidationError, TypeError):
        return definition


def _prepare_manifest(root: Path, settings: GenerationSettings, n: int, gen, protocol
                      ) -> DensityDataset:
    ds = DensityDataset(root)
    want = {
        "generator": gen.settings(),
        "protocol": protocol.model_dump(mode="json"),
        "store_ecut_ry": settings.store_ecut_ry,
    }
    have = ds.manifest.get("definition")
    if have is not None:
        have = _with_protocol_defaults(have)
        diffs = [k for k in want if _canon(have.get(k)) != _canon(want[k])]
        if diffs:
            raise ValueError(
                f"{root} holds a dataset made with other settings ({', '.join(diffs)} differ: "
                f"{ {k: have.get(k) for k in diffs} }); use another --out or the same settings"
            )
    man = ds.manifest
    man.setdefault("created", now())
    man["kind"] = "qe-generated"
    man["definition"] = want
    man["planned"] = max(int(man.get("planned", 0)), n)
    man.setdefault("runs", []).append({"command": command_line(), **code_provenance()})
    man["engine"] = {"name": "quantum-espresso",
                     "pseudopotentials": _pseudo_info(gen.elements, protocol.pseudopotentials)}
    ds.save_manifest()
    return ds


def packed_ids(roots: list[str | Path], failures: bool = True) -> set[str]:
    """Every record id stored in the sharded datasets ``roots``, excluded records included,
    and (``failures``) the failures their packs listed.

    ``ValueError`` names a root that is not a sharded dataset (a typo must not silently
    rerun everything).
    """
    from mlcharge_workflows.training.shards import ShardDataset

    ids: set[str] = set()
    for root in roots:
        if not ShardDataset.is_shard_dataset(root):
            raise ValueError(f"--skip-packed {root}: not a sharded dataset (no shards/ manifest)")
        ds = ShardDataset(root)
        ids |= set(ds.entries) | (set(ds.manifest["failures"]) if failures else set())
    return ids


def generate_dataset(
    out: str | Path,
    n: int,
    settings: GenerationSettings | None = None,
    nprocs: int = 1,
    workers: int = 2,
    retry_failed: bool = False,
    fireworks: bool = False,
    launchpad_file: str | Path | None = None,
    project: str | Path | None = None,
    progress: bool = True,
    on_result: Callable[[dict], None] | None = None,
    timeout_s: float | None = None,
    skip_packed: list[str | Path] | None = None,
    convergence_retry: dict[str, Any] | None = None,
) -> dict:
    """Generate (or resume) a dataset of ``n`` structures in ``out``; returns the manifest.

    ``convergence_retry``: see :func:`compute_density_record` (default ``None``: no rerun).

    ``skip_packed`` names sharded datasets (``data/qe/<name>``, :mod:`.shards`): structures
    whose id is already stored there (packed or excluded) are not run again, so regenerating
    on a new machine costs only what the repository does not hold yet.

    With ``fireworks`` the jobs are submitted to the LaunchPad (embedded project or
    ``launchpad_file``) and the returned dict says how many; run ``mlcharge worker`` and then
    this function again (or :func:`finalize_manifest`) to collect the table.
    """
    if n < 0:
        raise ValueError(f"number of structures must be >= 0, got {n}")
    if workers < 1 or nprocs < 1:
        raise ValueError(f"workers and nprocs must be >= 1, got {workers} and {nprocs}")
    settings = settings or GenerationSettings()
    root = Path(out).resolve()
    gen = settings.generator()
    protocol = settings.qe_protocol()
    ds = _prepare_manifest(root, settings, n, gen, protocol)
    for stale in root.glob("records/*.tmp.npz"):
        stale.unlink(missing_ok=True)  # half-written by a killed process
    done = set(ds.ids) | packed_ids(skip_packed or [], failures=not retry_failed)
    failed = set(read_failures(root)) if not retry_failed else set()
    provenance = {"command": command_line(), **code_provenance()}

    def jobs():  # planned lazily: the first pw.x starts before the last structure is drawn
        for i in range(n):
            g = gen(i)
            if g.id in done or g.id in failed:
                continue
            yield {"structure": g.structure, "gen": _gen_dict(g), "out": str(root),
                   "nprocs": nprocs, "protocol": settings.protocol,
                   "store_ecut_ry": settings.store_ecut_ry, "provenance": provenance,
                   "timeout_s": timeout_s, "convergence_retry": convergence_retry}

    if fireworks:
        return _submit_fireworks(root, list(jobs()), launchpad_file, project,
                                 resubmit=retry_failed)
    total = None if skip_packed else max(0, n - len(done) - len(failed))  # packed: ids of any seed
    _run_pool(jobs(), workers, progress, on_result, total=total)
    return finalize_manifest(root)


def _run_pool(jobs, workers: int, progress: bool, on_result, total: int | None = None) -> None:
    """Run ``jobs`` (an iterable of job kwargs, consumed lazily: at most ``2 * workers`` in
    flight) in a pool of ``workers`` processes."""
    from tqdm import tqdm

    it = iter(jobs)
    first = next(it, None)
    if first is None:
        return
    counts = {"ok": 0, "failed": 0}
    bar = tqdm(total=total, desc="QE statics", unit="structure", disable=not progress)
    pool = ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_worker_init,
        initargs=(os.getpid(),),
    )  # fmt: skip
    futures: dict = {}

    def fill(kw=None) -> None:
        if kw is not None:
            futures[pool.submit(run_job_locally, kw)] = kw["gen"]["id"]
        while len(futures) < 2 * workers:
            kw = next(it, None)
            if kw is None:
                return
            futures[pool.submit(run_job_locally, kw)] = kw["gen"]["id"]

    try:
        fill(first)
        while futures:
            finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for fut in finished:
                rid = futures.pop(fut)
                try:
                    res = fut.result()
                except Exception as exc:  # noqa: BLE001 - a dead worker process
                    res = {"id": rid, "status": "failed", "kind": "worker_died",
                           "reason": repr(exc)}  # fmt: skip
                counts["failed" if res.get("status") == "failed" else "ok"] += 1
                bar.set_postfix(counts)
                bar.update()
                if on_result is not None:
                    on_result(res)
            fill()
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()  # their SIGTERM handler kills pw.x too
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)


def _submit_fireworks(
    root: Path, jobs: list[dict], launchpad_file, project, resubmit: bool = False
) -> dict:
    """Add the jobs not submitted before (all missing ones with ``resubmit``) to a LaunchPad."""
    from jobflow import Flow
    from jobflow.managers.fireworks import flow_to_workflow

    from mlcharge_workflows.submit.launchpad import open_launchpad

    ds = DensityDataset(root)
    fw_info = ds.manifest.setdefault("fireworks", {"submitted_ids": []})
    if not resubmit:
        before = set(fw_info.get("submitted_ids", []))
        jobs = [kw for kw in jobs if kw["gen"]["id"] not in before]
    handle = open_launchpad(launchpad_file, project)
    if jobs:
        flow = Flow([density_record_job(**kw) for kw in jobs], name=f"density dataset {root.name}")
        for j in flow.jobs:
            j.name = f"density {j.function_kwargs['gen']['id']}"
        with handle.transaction() as lp:
            lp.add_wf(flow_to_workflow(flow))
    ids = sorted(set(fw_info.get("submitted_ids", [])) | {kw["gen"]["id"] for kw in jobs})
    ds.manifest["fireworks"] = {"submitted_ids": ids, "launchpad": handle.description}
    ds.save_manifest()
    return {"submitted": len(jobs), "out": str(root), "launchpad": handle.description}
