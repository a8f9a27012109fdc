"""Compact, append-only shards of density records, for datasets kept in git.

A sharded dataset is a folder (``data/qe/<name>`` in the repository)::

    shards/shard-00000.npz    the records of one pack, immutable once written
    shards/shard-00000.json   its manifest: dataset definition (generator version, seed,
                              settings, QE protocol), pseudopotentials (file, md5), the
                              command and code that packed it, and one line per record
                              (split, family, generator index, magnetic start and outcome,
                              storage error), plus the failures first seen by this pack

Adding records writes new shard files; old ones are never rewritten (git keeps each
version once). The ``.json`` is written after the ``.npz`` and marks the shard complete:
a shard without its manifest is ignored and replaced by the next pack.

Storage (per record): one of each ``±m`` pair of the density's G sphere (the density is
real), in lexicographic Miller order, the sphere itself kept as runs ``(m1, m2, m3_lo,
m3_hi)`` (exact, whatever made it), the coefficients rounded to integer multiples of a
step chosen per record and channel so that the real-space NMAPE of the stored density
against the full one (on the engine's grid) is at most ``target_percent`` (measured, the
step halved until it holds), then LZMA-compressed. High-G coefficients below the step
become zeros, which cost almost nothing: the scheme is an adaptive cutoff with a
measured error. The magnetisation is held to the same NMAPE relative to
``max(sum|m|, mag_floor * sum|rho|)``, so a run that converged (almost) non-magnetic
does not spend bytes on numerical noise.
"""

from __future__ import annotations

import json
import lzma
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from mlcharge_workflows.density.grid import grid_from_coefficients
from mlcharge_workflows.training.dataset import DensityDataset, DensityRecord, hermitian_half

SHARD_FORMAT = "mlcharge-shard-1"
#: NMAPE (percent) the quantisation aims at; records are verified against ``LIMIT_PERCENT``.
TARGET_PERCENT = 0.05
LIMIT_PERCENT = 0.1
#: Magnetisation error is measured against max(sum|m|, MAG_FLOOR * sum|rho|).
MAG_FLOOR = 0.02
_SHARD_RE = re.compile(r"shard-(\d{5})\.json$")


def _nmape(approx: np.ndarray, reference: np.ndarray, scale: float | None = None) -> float:
    denom = float(np.abs(reference).sum()) if scale is None else scale
    return 100.0 * float(np.abs(approx - reference).sum()) / denom if denom > 0 else 0.0


def _lzma(a: np.ndarray) -> np.ndarray:
    return np.frombuffer(lzma.compress(np.ascontiguousarray(a).tobytes(), preset=9), np.uint8)


def _unlzma(b: np.ndarray, dtype, shape=(-1,)) -> np.ndarray:
    return np.frombuffer(lzma.decompress(b.tobytes()), dtype=dtype).reshape(shape)


# ------------------------------------------------------------------ Miller sets
def mill_runs(mill: np.ndarray) -> np.ndarray | None:
    """``(K, 4)`` runs ``(m1, m2, lo, hi)`` of a lexicographically sorted Miller set whose
    third index is contiguous for each ``(m1, m2)`` (any sphere or box), else None."""
    mill = np.asarray(mill, dtype=np.int64)
    if len(mill) == 0:
        return None
    head = mill[:, :2]
    new = np.ones(len(mill), dtype=bool)
    new[1:] = (head[1:] != head[:-1]).any(axis=1)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(mill)) - 1
    lo, hi = mill[starts, 2], mill[ends, 2]
    if not np.array_equal(hi - lo, ends - starts):
        return None
    return np.column_stack([mill[starts, 0], mill[starts, 1], lo, hi])


def mill_from_runs(runs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`mill_runs`."""
    runs = np.asarray(runs, dtype=np.int64)
    lengths = runs[:, 3] - runs[:, 2] + 1
    m12 = np.repeat(runs[:, :2], lengths, axis=0)
    offs = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    m3 = np.repeat(runs[:, 2], lengths) + offs
    return np.column_stack([m12, m3])


# ------------------------------------------------------------------ one record
def _quantize(c: np.ndarray, step: float) -> np.ndarray:
    q = np.round(np.column_stack([c.real, c.imag]) / step)
    if np.abs(q).max(initial=0) >= 2**31 - 1:
        raise ValueError(f"coefficients too large for the quantisation step {step:g}")
    return q.astype("<i4")


def _dequantize(q: np.ndarray, step: float) -> np.ndarray:
    return (q[:, 0] + 1j * q[:, 1]) * step


def _full(mill: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nz = ~(mill == 0).all(axis=1)
    return np.concatenate([mill, -mill[nz]]), np.concatenate([c, np.conj(c[nz])])


def encode_record(
    rec: DensityRecord, target_percent: float = TARGET_PERCENT, mag_floor: float = MAG_FLOOR
) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays of ``rec`` for a shard and the measured storage error.

    Returns ``(arrays, storage)``: ``storage`` holds the steps (e/Å³), the NMAPE (percent)
    of the stored total density and magnetisation against the record's, on its grid,
    and the number of coefficients.
    """
    half = hermitian_half(rec.mill, rec.total, rec.magnetization)
    if half is None:
        raise ValueError(f"record {rec.id}: coefficients are not those of a real density on a "
                         "set closed under m -> -m; cannot store one of each ±m pair")
    mill = np.asarray(rec.mill, dtype=np.int64)[half]
    order = np.lexsort((mill[:, 2], mill[:, 1], mill[:, 0]))
    mill = mill[order]
    channels = {"total": np.asarray(rec.total)[half][order]}
    if rec.magnetization is not None:
        channels["magnetization"] = np.asarray(rec.magnetization)[half][order]
    full_mill = _full(mill, channels["total"])[0]
    shape = tuple(rec.grid_shape)
    ref_total = grid_from_coefficients(rec.total, rec.mill, shape)
    n_full = len(full_mill)
    storage: dict = {"n_coefficients": len(mill), "target_percent": target_percent}
    arrays: dict[str, np.ndarray] = {}
    runs = mill_runs(mill)
    if runs is not None and np.abs(runs).max() < 2**15:
        arrays["runs"] = runs.astype("<i2")
    else:
        arrays["mill"] = _lzma(mill.astype("<i2"))
    for name, c in channels.items():
        ref = ref_total if name == "total" else grid_from_coefficients(
            rec.magnetization, rec.mill, shape)
        scale = float(np.abs(ref).sum())
        if name == "magnetization":
            scale = max(scale, mag_floor * float(np.abs(ref_total).sum()))
        mean_abs = scale / ref.size
        # uniform rounding of re and im: rms real-space error sqrt(n_full / 6) * step
        step = target_percent / 100.0 * mean_abs / np.sqrt(2 / np.pi) / np.sqrt(n_full / 6.0)
        if not step > 0:
            step = 1e-12
        for _ in range(12):
            q = _quantize(c, step)
            back = grid_from_coefficients(_full(mill, _dequantize(q, step))[1], full_mill, shape)
            err = _nmape(back, ref, scale)
            if err <= target_percent:
                break
            step /= 2
        else:
            raise ValueError(f"record {rec.id}: cannot store {name} within {target_percent} %")
        arrays[name] = _lzma(q)
        storage[f"step_{name}"] = float(step)
        key = "nmape_total_percent" if name == "total" else "nmape_magnetization_percent"
        storage[key] = float(err)
        if name == "magnetization":
            storage["nmape_magnetization_own_percent"] = _nmape(back, ref)
    return arrays, storage


def decode_record(arrays: Mapping[str, np.ndarray], head: dict) -> DensityRecord:
    """A :class:`DensityRecord` (full sphere) from :func:`encode_record`'s arrays and head."""
    from pymatgen.core import Structure

    st = head["storage"]
    mill = mill_from_runs(arrays["runs"]) if "runs" in arrays else _unlzma(
        arrays["mill"], "<i2", (-1, 3)).astype(np.int64)
    if len(mill) != st["n_coefficients"]:
        raise ValueError(f"record {head['id']}: {len(mill)} Miller indices, expected "
                         f"{st['n_coefficients']}")
    total = _dequantize(_unlzma(arrays["total"], "<i4", (-1, 2)), st["step_total"])
    mag = None
    if "magnetization" in arrays:
        mag = _dequantize(_unlzma(arrays["magnetization"], "<i4", (-1, 2)),
                          st["step_magnetization"])
        mill_f, mag = _full(mill, mag)
    mill_f, total = _full(mill, total)
    return DensityRecord(
        id=head["id"],
        structure=Structure.from_dict(head["structure"]),
        grid_shape=tuple(head["grid_shape"]),
        mill=mill_f,
        total=total,
        magnetization=mag,
        energy_eV=head.get("energy_eV"),
        scf_iterations=head.get("scf_iterations"),
        metadata=head.get("metadata") or {},
    )


def record_head(rec: DensityRecord, storage: dict) -> dict:
    """Everything of a record but its coefficients (stored LZMA-compressed JSON)."""
    return {
        "id": rec.id,
        "structure": rec.structure.as_dict(),
        "grid_shape": [int(n) for n in rec.grid_shape],
        "energy_eV": rec.energy_eV,
        "scf_iterations": rec.scf_iterations,
        "metadata": rec.metadata,
        "storage": storage,
    }


# ------------------------------------------------------------------ reading
class ShardDataset:
    """Read-only view of a sharded dataset with the interface training uses.

    ``ids``, ``split(name)``, ``records(split)``, ``ds[id]``, ``info(id)``, ``len(ds)``,
    and ``manifest`` (``splits``, ``records``, ``definitions``, ``failures``, ``excluded``).
    Records a pack marked ``excluded`` (e.g. an antiferromagnetic start that converged
    ferromagnetic) are listed in ``manifest["excluded"]`` and left out of ``ids``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shards_dir = self.root / "shards"
        self.shards: list[dict] = []
        self._where: dict[str, str] = {}
        self.entries: dict[str, dict] = {}
        excluded: dict[str, str] = {}
        failures: dict[str, dict] = {}
        for p in sorted(self.shards_dir.glob("shard-*.json")):
            if not _SHARD_RE.search(p.name) or not p.with_suffix(".npz").is_file():
                continue
            doc = json.loads(p.read_text())
            if doc.get("format") != SHARD_FORMAT:
                raise ValueError(f"{p}: unknown shard format {doc.get('format')!r}")
            self.shards.append(doc)
            for e in doc["records"]:
                if e["id"] in self._where:
                    raise ValueError(f"record {e['id']} is in {self._where[e['id']]} and {p.name}")
                self._where[e["id"]] = p.stem
                self.entries[e["id"]] = e
                if e.get("excluded"):
                    excluded[e["id"]] = e["excluded"]
            failures.update(doc.get("failures") or {})
        self._excluded = excluded
        splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for rid, e in self.entries.items():
            if rid not in excluded:
                splits.setdefault(e["split"], []).append(rid)
        self.manifest = {
            "kind": "shards",
            "splits": {k: sorted(v) for k, v in splits.items()},
            "records": self.entries,
            "definitions": {d["source"].get("name", d["shard"]): d["definition"]
                            for d in self.shards},
            "failures": {k: v for k, v in failures.items() if k not in self.entries},
            "excluded": excluded,
        }
        self._open: dict[str, np.lib.npyio.NpzFile] = {}

    @staticmethod
    def is_shard_dataset(root: str | Path) -> bool:
        """Whether ``root`` holds at least one complete shard."""
        d = Path(root) / "shards"
        return d.is_dir() and any(d.glob("shard-*.json"))

    @property
    def ids(self) -> list[str]:
        """Ids of the usable (not excluded) records, sorted."""
        return sorted(r for r in self.entries if r not in self._excluded)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.entries

    def split(self, name: str) -> list[str]:
        """Ids in split ``name``."""
        if name not in self.manifest["splits"]:
            raise KeyError(f"dataset {self.root} has no split {name!r}")
        return list(self.manifest["splits"][name])

    def _npz(self, shard: str):
        if shard not in self._open:
            self._open[shard] = np.load(self.shards_dir / f"{shard}.npz", allow_pickle=False)
        return self._open[shard]

    def _arrays(self, record_id: str) -> tuple[dict[str, np.ndarray], dict]:
        if record_id not in self._where:
            raise KeyError(f"no record {record_id!r} in {self.root}")
        z = self._npz(self._where[record_id])
        prefix = f"{record_id}__"
        arrays = {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}
        head = json.loads(lzma.decompress(arrays.pop("head").tobytes()))
        return arrays, head

    def __getitem__(self, record_id: str) -> DensityRecord:
        try:
            arrays, head = self._arrays(record_id)
            return decode_record(arrays, head)
        except (OSError, lzma.LZMAError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot read record {record_id} from {self.root}: {exc}") from exc

    def info(self, record_id: str) -> dict:
        """Structure, energy, iterations and metadata of a record without its coefficients."""
        from pymatgen.core import Structure

        _, head = self._arrays(record_id)
        return {
            "id": record_id,
            "structure": Structure.from_dict(head["structure"]),
            "grid_shape": tuple(head["grid_shape"]),
            "energy_eV": head.get("energy_eV"),
            "scf_iterations": head.get("scf_iterations"),
            "spin_polarized": "step_magnetization" in head["storage"],
            "metadata": head.get("metadata") or {},
        }

    def records(self, split: str | None = None) -> Iterator[DensityRecord]:
        """Records of ``split`` (all usable ones when None)."""
        for rid in self.ids if split is None else self.split(split):
            yield self[rid]

    def next_shard_index(self) -> int:
        """Index of the next shard (after every shard file, complete or not)."""
        idx = [int(m.group(1)) for p in self.shards_dir.glob("shard-*")
               if (m := re.search(r"shard-(\d{5})\.", p.name))]
        return max(idx) + 1 if idx else 0


def open_dataset(root: str | Path) -> DensityDataset | ShardDataset:
    """A dataset folder of either kind: shards (``shards/``) or records (``records/``).

    ``ValueError`` if ``root`` holds neither.
    """
    root = Path(root)
    if ShardDataset.is_shard_dataset(root):
        return ShardDataset(root)
    if (root / "records").is_dir():
        return DensityDataset(root)
    raise ValueError(f"{root} is not a dataset folder (no shards/shard-*.json nor records/)")


def write_shard(path: Path, items: list[tuple[dict, dict[str, np.ndarray]]]) -> int:
    """Write ``(head, arrays)`` pairs to ``path`` (.npz, atomic); returns its size in bytes."""
    out: dict[str, np.ndarray] = {}
    for head, arrays in items:
        rid = head["id"]
        out[f"{rid}__head"] = _lzma(np.frombuffer(json.dumps(head).encode(), np.uint8))
        for k, v in arrays.items():
            out[f"{rid}__{k}"] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return path.stat().st_size
