"""The density dataset format shared by ``mlcharge data generate``, ``data ingest`` and training.

A dataset is a folder::

    DIR/manifest.json        format version, engine settings, generator, splits, failures
    DIR/records/<id>.npz     one structure each (written atomically: tmp file + rename)

A record stores the converged density as Fourier coefficients on a sphere of
Miller indices (the convention of :mod:`mlcharge_workflows.density.grid`,
e/Å³), which is compact and exact up to the stored cutoff, and is what both a QE
file (G space) and any real-space grid are made from. Files hold complex64 and,
for a real density on a sphere, only one of each ``±m`` pair (``hermitian_half``);
:meth:`DensityRecord.load` restores the full set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlcharge_workflows.density.grid import DensityGrid

FORMAT_VERSION = 1

#: The tiny dataset shipped with the package (made by ``mlcharge data generate``; see
#: docs/dataset.md for the command).
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"


def _keys(mill: np.ndarray, k: int) -> np.ndarray:
    m = np.asarray(mill, dtype=np.int64) + k
    w = 2 * k + 1
    return (m[:, 0] * w + m[:, 1]) * w + m[:, 2]


def hermitian_half(
    mill: np.ndarray, total: np.ndarray, magnetization: np.ndarray | None = None, rtol: float = 1e-5
) -> np.ndarray | None:
    """Indices of one Miller index of each ``±m`` pair (and ``m = 0``), or None.

    None unless the set of ``mill`` is closed under ``m -> -m`` and the coefficients are
    those of a real function (``c(-m) = conj c(m)`` within ``rtol`` of the largest one).
    """
    mill = np.asarray(mill, dtype=np.int64)
    if mill.ndim != 2 or len(mill) == 0:
        return None
    k = int(np.abs(mill).max()) + 1
    keys = _keys(mill, k)
    order = np.argsort(keys)
    neg_keys = _keys(-mill, k)
    pos = np.searchsorted(keys, neg_keys, sorter=order)
    pos = np.minimum(pos, len(keys) - 1)
    partner = order[pos]
    if not np.array_equal(keys[partner], neg_keys):
        return None
    for c in (total, magnetization):
        if c is None:
            continue
        c = np.asarray(c)
        scale = float(np.abs(c).max()) or 1.0
        if np.abs(c[partner] - np.conj(c)).max() > rtol * scale:
            return None
    m0, m1, m2 = mill[:, 0], mill[:, 1], mill[:, 2]
    keep = (m0 > 0) | ((m0 == 0) & (m1 > 0)) | ((m0 == 0) & (m1 == 0) & (m2 >= 0))
    return np.flatnonzero(keep)


def _expand_half(
    mill: np.ndarray, total: np.ndarray, mag: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inverse of :func:`hermitian_half`: add ``conj c(m)`` at ``-m`` for every ``m != 0``."""
    nz = ~(mill == 0).all(axis=1)
    mill = np.concatenate([mill, -mill[nz]])
    total = np.concatenate([total, np.conj(total[nz])])
    if mag is not None:
        mag = np.concatenate([mag, np.conj(mag[nz])])
    return mill, total, mag


@dataclass
class DensityRecord:
    """One structure with its converged density.

    Attributes
    ----------
    id
        Unique, filesystem-safe identifier.
    structure
        pymatgen Structure (Å).
    grid_shape
        The engine's FFT / fine grid ``(n1, n2, n3)``.
    mill
        ``(N, 3)`` Miller indices of the stored coefficients.
    total
        ``(N,)`` complex coefficients of the total density, e/Å³.
    magnetization
        ``(N,)`` complex coefficients of ``rho_up - rho_down``, or None.
    energy_eV, scf_iterations
        Total energy and SCF iterations of the run from atoms (None if unknown).
    metadata
        Engine, settings, pseudopotentials, provenance (code version, command), cutoff.
    """

    id: str
    structure: object
    grid_shape: tuple[int, int, int]
    mill: np.ndarray
    total: np.ndarray
    magnetization: np.ndarray | None = None
    energy_eV: float | None = None
    scf_iterations: int | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not np.all(np.isfinite(self.total)):
            raise ValueError(f"record {self.id}: non-finite total density coefficients")
        if self.magnetization is not None and not np.all(np.isfinite(self.magnetization)):
            raise ValueError(f"record {self.id}: non-finite magnetization coefficients")

    @property
    def n_electrons(self) -> float:
        """Electron count from the G = 0 coefficient."""
        i0 = np.flatnonzero((self.mill == 0).all(axis=1))
        return float(self.total[i0[0]].real * self.structure.lattice.volume) if i0.size else 0.0

    def to_grid(self, shape: tuple[int, int, int] | None = None) -> DensityGrid:
        """The density on ``shape`` (default: the engine's grid)."""
        return DensityGrid.from_fourier(
            self.structure,
            tuple(shape or self.grid_shape),
            self.mill,
            self.total,
            self.magnetization,
            metadata={"record_id": self.id, **self.metadata},
        )

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (.npz) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "structure_json": np.array(json.dumps(self.structure.as_dict())),
            "grid_shape": np.asarray(self.grid_shape, dtype=np.int32),
            "mill": np.asarray(self.mill, dtype=np.int16),
            "total": np.asarray(self.total, dtype=np.complex64),
            "energy_eV": np.array(np.nan if self.energy_eV is None else self.energy_eV),
            "scf_iterations": np.array(-1 if self.scf_iterations is None else self.scf_iterations),
            "metadata_json": np.array(json.dumps(self.metadata)),
        }
        if self.magnetization is not None:
            arrays["magnetization"] = np.asarray(self.magnetization, dtype=np.complex64)
        half = hermitian_half(self.mill, self.total, self.magnetization)
        if half is not None:  # a real density: c(-m) = conj c(m), store one of each pair
            for key in ("mill", "total", "magnetization"):
                if key in arrays:
                    arrays[key] = arrays[key][half]
            arrays["hermitian_half"] = np.array(True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DensityRecord:
        """Read a record written by :meth:`save`; a corrupt file raises ``ValueError``."""
        from pymatgen.core import Structure

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                energy = float(z["energy_eV"])
                iters = int(z["scf_iterations"])
                mill = z["mill"].astype(np.int64)
                total = z["total"].astype(np.complex128)
                mag = z["magnetization"].astype(np.complex128) if "magnetization" in z else None
                if "hermitian_half" in z and bool(z["hermitian_half"]):
                    mill, total, mag = _expand_half(mill, total, mag)
                return cls(
                    id=path.stem,
                    structure=Structure.from_dict(json.loads(str(z["structure_json"]))),
                    grid_shape=tuple(int(n) for n in z["grid_shape"]),
                    mill=mill,
                    total=total,
                    magnetization=mag,
                    energy_eV=None if np.isnan(energy) else energy,
                    scf_iterations=None if iters < 0 else iters,
                    metadata=json.loads(str(z["metadata_json"])),
                )
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ValueError(f"cannot read density record {path}: {exc}") from exc


class DensityDataset:
    """A dataset folder: ``manifest.json`` plus ``records/*.npz``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"
        manifest = self.root / "manifest.json"
        self.manifest: dict = json.loads(manifest.read_text()) if manifest.exists() else {}

    # -------------------------------------------------------------- manifest
    def save_manifest(self) -> None:
        """Write ``manifest.json`` atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest.setdefault("format_version", FORMAT_VERSION)
        tmp = self.root / "manifest.json.tmp"
        tmp.write_text(json.dumps(self.manifest, indent=2, sort_keys=True))
        os.replace(tmp, self.root / "manifest.json")

    @property
    def ids(self) -> list[str]:
        """Ids of all finished records, sorted."""
        if not self.records_dir.exists():
            return []
        return sorted(p.stem for p in self.records_dir.glob("*.npz") if ".tmp" not in p.name)

    def split(self, name: str) -> list[str]:
        """Ids in split ``name`` (train / val / test) as recorded in the manifest."""
        splits = self.manifest.get("splits") or {}
        if name not in splits:
            raise KeyError(f"dataset {self.root} has no split {name!r} (has: {sorted(splits)})")
        have = set(self.ids)
        return [i for i in splits[name] if i in have]

    # -------------------------------------------------------------- records
    def path(self, record_id: str) -> Path:
        """Where record ``record_id`` lives."""
        return self.records_dir / f"{record_id}.npz"

    def __contains__(self, record_id: str) -> bool:
        return self.path(record_id).exists()

    def __getitem__(self, record_id: str) -> DensityRecord:
        return DensityRecord.load(self.path(record_id))

    def __len__(self) -> int:
        return len(self.ids)

    def info(self, record_id: str) -> dict:
        """Structure, energy, iterations and metadata of a record without its coefficients."""
        from pymatgen.core import Structure

        path = self.path(record_id)
        try:
            with np.load(path, allow_pickle=False) as z:
                energy = float(z["energy_eV"])
                iters = int(z["scf_iterations"])
                return {
                    "id": record_id,
                    "structure": Structure.from_dict(json.loads(str(z["structure_json"]))),
                    "grid_shape": tuple(int(n) for n in z["grid_shape"]),
                    "energy_eV": None if np.isnan(energy) else energy,
                    "scf_iterations": None if iters < 0 else iters,
                    "spin_polarized": "magnetization" in z.files,
                    "metadata": json.loads(str(z["metadata_json"])),
                }
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ValueError(f"cannot read density record {path}: {exc}") from exc

    def add(self, record: DensityRecord) -> Path:
        """Store ``record`` (atomic write)."""
        return record.save(self.path(record.id))

    def records(self, split: str | None = None) -> Iterator[DensityRecord]:
        """Iterate over the records of ``split`` (all when None)."""
        for rid in self.ids if split is None else self.split(split):
            yield self[rid]


def sample_dataset() -> DensityDataset:
    """The tiny committed sample dataset (``ValueError`` if the installation lacks it)."""
    if not (SAMPLE_DIR / "records").is_dir():
        raise ValueError(f"the sample dataset is missing from this installation ({SAMPLE_DIR})")
    return DensityDataset(SAMPLE_DIR)
