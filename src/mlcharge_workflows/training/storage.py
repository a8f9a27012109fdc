"""Shared by ``data generate`` and ``data ingest``: densities -> stored coefficients, manifests.

A record keeps the Fourier coefficients of the density inside a sphere
``|G|² <= store_ecut`` (Ry, QE's convention: ``E = |G|²`` in bohr⁻²). The truncation
error of every record is measured on its own grid and stored with it:
``NMAPE = 100 * sum|rho_truncated - rho_full| / sum|rho_full|`` (percent).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from mlcharge_workflows.density.grid import DensityGrid, grid_from_coefficients
from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.splits import check_disjoint, split_by_family, split_summary
from mlcharge_workflows.units import BOHR_TO_ANGSTROM


def nmape(approx: np.ndarray, reference: np.ndarray) -> float:
    """Normalised mean absolute percentage error ``100 * sum|a - r| / sum|r|``."""
    denom = float(np.abs(reference).sum())
    return 100.0 * float(np.abs(approx - reference).sum()) / denom if denom > 0 else 0.0


def sphere_mill(lattice_matrix: np.ndarray, ecut_ry: float) -> np.ndarray:
    """Miller indices with ``|G|² <= ecut_ry`` (G in bohr⁻¹), in pw.x's order."""
    from mlcharge_workflows.density.qe_gvectors import qe_gvector_order

    return np.asarray(qe_gvector_order(np.asarray(lattice_matrix), float(ecut_ry), False))


def inscribed_ecut_ry(lattice_matrix: np.ndarray, shape: tuple[int, int, int]) -> float:
    """Largest density cutoff (Ry) whose G sphere fits in an FFT grid of ``shape`` without
    reaching the Nyquist planes: ``min_i (2π M_i / |a_i|)²`` with ``M_i = (n_i - 1) // 2``."""
    a = np.linalg.norm(np.asarray(lattice_matrix), axis=1)
    m = (np.asarray(shape) - 1) // 2
    gmax_per_angstrom = float(np.min(2.0 * np.pi * m / a))
    return (gmax_per_angstrom * BOHR_TO_ANGSTROM) ** 2


def box_mill(shape: tuple[int, int, int]) -> np.ndarray:
    """Every Miller index of an FFT grid except the Nyquist planes (a set closed under -m)."""
    axes = [np.arange(-((n - 1) // 2), (n - 1) // 2 + 1) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def stored_coefficients(
    grid: DensityGrid, store_ecut_ry: float | None, full_ecut_ry: float, box: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """Coefficients of ``grid`` inside the storage sphere, and the truncation error.

    Parameters
    ----------
    grid
        The full density (e.g. pw.x's, on its FFT grid, which holds its whole G sphere).
    store_ecut_ry
        Storage cutoff in Ry; None or >= ``full_ecut_ry`` keeps the full sphere.
    full_ecut_ry
        Cutoff of the density itself (pw.x's ``ecutrho``; for a CHGCAR the inscribed sphere).
    box
        With ``store_ecut_ry`` None: keep every coefficient of the grid but the Nyquist
        planes (a real-space grid such as a CHGCAR has no sphere; ``store_ecut_ry`` None).

    Returns
    -------
    mill, total, magnetization, stats
        ``stats``: ``store_ecut_ry``, ``n_coefficients`` and the truncation NMAPE (percent) of
        the total density and the magnetisation (None when not spin-polarised) on ``grid``.
    """
    ecut = full_ecut_ry if store_ecut_ry is None else min(float(store_ecut_ry), full_ecut_ry)
    if not ecut > 0:
        raise ValueError(f"storage cutoff must be positive, got {store_ecut_ry} Ry")
    if box and store_ecut_ry is None:
        mill = box_mill(grid.shape)
        ecut = None
    else:
        mill = sphere_mill(grid.structure.lattice.matrix, ecut)
    total, mag = grid.fourier(mill)
    if not np.all(np.isfinite(total)) or (mag is not None and not np.all(np.isfinite(mag))):
        raise ValueError("density has non-finite Fourier coefficients")
    back = grid_from_coefficients(total, mill, grid.shape)
    stats = {
        "store_ecut_ry": None if ecut is None else round(ecut, 6),
        "stored": "grid box without Nyquist planes" if ecut is None else "G sphere",
        "full_ecut_ry": round(float(full_ecut_ry), 6),
        "n_coefficients": len(mill),
        "truncation_nmape_total_percent": nmape(back, grid.total),
        "truncation_nmape_magnetization_percent": None,
    }
    if mag is not None:
        mback = grid_from_coefficients(mag, mill, grid.shape)
        stats["truncation_nmape_magnetization_percent"] = nmape(mback, grid.magnetization)
    return mill, total, mag, stats


# ------------------------------------------------------------------ provenance
def now() -> str:
    """Local time as ``2026-01-31 12:00:00 +0000``: no ISO "T", which FireWorks would turn
    into a datetime inside job arguments (and then fail to serialise)."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


def code_provenance() -> dict:
    """Package version, git commit of the source tree (when in one), Python, host, time."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("mlcharge_workflows")
    except PackageNotFoundError:
        pkg = "unknown"
    git = None
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=src, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        git = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "package": "mlcharge_workflows",
        "version": pkg,
        "git": git,
        "python": platform.python_version(),
        "host": platform.node(),
        "time": now(),
    }


def command_line() -> str:
    """The command that is running (``mlcharge data generate ...``)."""
    prog = Path(sys.argv[0]).name if sys.argv else "python"
    return " ".join([prog, *sys.argv[1:]])


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


# ------------------------------------------------------------------ manifest
def record_summary(info: dict) -> dict:
    """One line of the manifest's ``records`` table from :meth:`DensityDataset.info`."""
    s = info["structure"]
    meta = info["metadata"]
    trunc = meta.get("storage", {})
    return {
        "family": meta.get("family") or s.composition.chemical_system,
        "prototype": meta.get("prototype"),
        "formula": s.composition.reduced_formula,
        "n_atoms": len(s),
        "elements": sorted(e.symbol for e in s.composition),
        "energy_eV": info["energy_eV"],
        "scf_iterations": info["scf_iterations"],
        "spin_polarized": info["spin_polarized"],
        "wall_s": meta.get("wall_time_s"),
        "truncation_nmape_total_percent": trunc.get("truncation_nmape_total_percent"),
    }


def read_failures(root: Path) -> dict[str, dict]:
    """``failures/<id>.json`` of a dataset folder (id -> kind, reason, ...)."""
    out = {}
    for p in sorted((root / "failures").glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # half-written by a killed process: ignored, the structure is retried
    return out


def finalize_manifest(
    root: str | Path,
    split_seed: int | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    extra: dict | None = None,
    resplit: bool = False,
) -> dict:
    """Rebuild the manifest's tables from the files: records, failures, splits, counts, size.

    Records are the truth (``records/*.npz``); a failure of a structure that has a record
    since is dropped. The split is by composition family (:mod:`.splits`); families the
    previous manifest already placed keep their split (same seed, ``resplit=False``), so
    a test split stays unseen by models trained on an earlier snapshot of the dataset.
    """
    ds = DensityDataset(root)
    man = ds.manifest
    man.update(extra or {})
    records: dict[str, dict] = {}
    for rid in ds.ids:
        try:
            records[rid] = record_summary(ds.info(rid))
        except ValueError as exc:  # unreadable record: report it, do not count it
            man.setdefault("unreadable_records", {})[rid] = str(exc)
    failures = {k: v for k, v in read_failures(ds.root).items() if k not in records}
    old_seed = man.get("split", {}).get("seed", 0)
    seed = split_seed if split_seed is not None else old_seed
    families = {rid: r["family"] for rid, r in records.items()}
    keep: dict[str, str] = {}
    if not resplit and seed == old_seed:
        old_records = man.get("records") or {}
        for name, ids in (man.get("splits") or {}).items():
            for rid in ids:
                fam = (old_records.get(rid) or {}).get("family") or families.get(rid)
                if fam:
                    keep.setdefault(fam, name)
    splits = split_by_family(families, fractions, seed, keep=keep)
    check_disjoint(splits, families)
    size = sum(ds.path(r).stat().st_size for r in records)
    elements = Counter(e for r in records.values() for e in r["elements"])
    nm = [r["truncation_nmape_total_percent"] for r in records.values()]
    nm = [x for x in nm if x is not None]
    walls = [r["wall_s"] for r in records.values() if r["wall_s"] is not None]
    man.update(
        records=records,
        failures={k: {"kind": v.get("kind"), "reason": v.get("reason", "")[:500]}
                  for k, v in failures.items()},
        splits=splits,
        split={"by": "composition family (chemical system)", "seed": seed,
               "fractions": list(fractions), "summary": split_summary(splits, families),
               "families_kept": len(set(keep) & set(families.values()))},
        summary={
            "n_records": len(records),
            "n_failures": len(failures),
            "failure_kinds": dict(Counter(v.get("kind") for v in failures.values())),
            "records_size_bytes": int(size),
            "structures_with_element": dict(sorted(elements.items())),
            "n_atoms_histogram": dict(sorted(Counter(r["n_atoms"]
                                                     for r in records.values()).items())),
            "spin_polarized": sum(bool(r["spin_polarized"]) for r in records.values()),
            "sum_pw_wall_s": round(float(sum(walls)), 1),
            "truncation_nmape_total_percent": (
                {"mean": float(np.mean(nm)), "median": float(np.median(nm)),
                 "max": float(np.max(nm))}
                if nm else None
            ),
        },
        updated=now(),
    )  # fmt: skip
    ds.save_manifest()
    return man
