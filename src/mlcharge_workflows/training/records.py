"""The training data: every usable record of the configured datasets, by split.

Splits come from the dataset manifest when it has them, else from a hash of each record's
composition family (:func:`hash_split`: stable while a dataset grows; a family never
straddles splits). The manifest's own splits are made by
:func:`mlcharge_workflows.training.splits.split_by_family`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from mlcharge_workflows.training.config import TrainConfig
from mlcharge_workflows.training.dataset import DensityRecord
from mlcharge_workflows.training.pack import parse_generated_id
from mlcharge_workflows.training.shards import open_dataset


def hash_split(key: str, seed: int, val: float, test: float) -> str:
    """``train``/``val``/``test`` from a hash of ``key`` (a family): stable as the dataset grows."""
    u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12
    return "test" if u < test else "val" if u < test + val else "train"


def family(rec: DensityRecord) -> str:
    """Composition family of a record (metadata ``family``, else its chemical system)."""
    fam = (rec.metadata or {}).get("family")
    return str(fam) if fam else "-".join(sorted({s.specie.symbol for s in rec.structure}))


def load_records(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, list[DensityRecord]]:
    """All usable records of the configured datasets, by split.

    A record listed in its manifest's ``splits`` keeps that split; another record joins
    the split of its family when the family is listed, else a split drawn from a hash of
    the family name: a family never straddles splits, and splits stay put as data grows.
    """
    out: dict[str, list[DensityRecord]] = {"train": [], "val": [], "test": []}
    records, by_id = [], {}
    held_out, n_held_out = set(cfg.exclude_prototypes), 0
    for root in cfg.datasets:
        ds = open_dataset(root)  # records/ folder or repository shards; ValueError if neither
        manifest_splits = (ds.manifest.get("splits") or {}) if isinstance(ds.manifest, dict) else {}
        for name in ("train", "val", "test"):
            by_id.update({(str(root), rid): name for rid in manifest_splits.get(name, [])})
        for rid in ds.ids:
            try:
                rec = ds[rid]
            except ValueError as exc:
                log(f"skipping {rid}: {exc}")
                continue
            if cfg.max_atoms and len(rec.structure) > cfg.max_atoms:
                continue
            if held_out and (parse_generated_id(rid) or {}).get("prototype") in held_out:
                n_held_out += 1
                continue
            rec.metadata = {**(rec.metadata or {}), "_dataset": str(root)}
            records.append(rec)
    if held_out:
        log(f"left out {n_held_out} records of the held-out prototypes {sorted(held_out)}")
    key = lambda r: (r.metadata["_dataset"], r.id)  # noqa: E731
    by_family: dict[str, str] = {}
    for rec in records:  # families listed in a manifest keep their split, in every dataset
        if key(rec) in by_id:
            by_family.setdefault(family(rec), by_id[key(rec)])
    for rec in records:
        fam = family(rec)
        split = by_id.get(key(rec)) or by_family.get(fam)
        if split is None:
            split = by_family[fam] = hash_split(fam, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        out[split].append(rec)
    if not out["train"]:
        raise ValueError(f"no training records in {[str(d) for d in cfg.datasets]}")
    return out
