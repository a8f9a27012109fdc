"""``mlcharge data pack``: finished records of a dataset folder -> new shards (:mod:`.shards`).

Only records not yet in the sharded dataset are packed; each is checked (readable,
finite, converged, electron count, magnetic outcome), stored within the measured error
bound, read back and compared with the source record before the shard counts as done.
Records whose run ended in an unexpected magnetic state (an antiferromagnetic start that
converged ferromagnetic, or a ferromagnetic start that converged compensated) are packed
with an ``excluded`` reason: kept for the record, left out of training.

Splits: a family placed by an earlier shard keeps its split; families named by
``splits_from`` (a dataset manifest with ``splits`` or model weights that list their
training record ids) keep theirs, in this pack and every later one (the map is written to
each shard as ``family_splits_from``); new families are dealt out by :func:`.split_by_family`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlcharge_workflows.training.dataset import DensityDataset, DensityRecord
from mlcharge_workflows.training.shards import (
    LIMIT_PERCENT,
    MAG_FLOOR,
    SHARD_FORMAT,
    TARGET_PERCENT,
    ShardDataset,
    decode_record,
    encode_record,
    record_head,
    write_shard,
)
from mlcharge_workflows.training.splits import split_by_family
from mlcharge_workflows.training.storage import (
    code_provenance,
    command_line,
    nmape,
    now,
    read_failures,
    write_json_atomic,
)

_ID_RE = re.compile(r"^(?P<proto>.+)-(?P<formula>[A-Za-z0-9]+)-(?P<seed>\d+)-(?P<index>\d{5})$")


def parse_generated_id(record_id: str) -> dict | None:
    """``{prototype, formula, seed, index}`` of a generated id, None for other ids."""
    m = _ID_RE.match(record_id)
    if not m:
        return None
    return {"prototype": m["proto"], "formula": m["formula"], "seed": int(m["seed"]),
            "index": int(m["index"])}


def _family_of_id(record_id: str) -> str | None:
    from pymatgen.core import Composition

    p = parse_generated_id(record_id.split("/")[-1])
    if p is None:
        return None
    try:
        return Composition(p["formula"]).chemical_system
    except ValueError:
        return None


def splits_from_file(path: str | Path) -> dict[str, str]:
    """Family -> split from a dataset ``manifest.json`` (``splits`` + ``records``) or from
    model weights (``metadata.training.record_ids``, families from the generated ids)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"splits file not found: {path}")
    if path.suffix == ".json":
        man = json.loads(path.read_text())
        splits, records = man.get("splits") or {}, man.get("records") or {}
    else:
        import torch

        meta = torch.load(path, map_location="cpu", weights_only=False).get("metadata", {})
        splits, records = (meta.get("training") or {}).get("record_ids") or {}, {}
    if not splits:
        raise ValueError(f"{path} names no splits")
    out: dict[str, str] = {}
    for name, ids in splits.items():
        for rid in ids:
            fam = (records.get(rid) or {}).get("family") or _family_of_id(rid)
            if fam:
                out.setdefault(fam, name)
    return out


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def magnetic_start(structure) -> str:
    """``none``, ``fm`` (all initial moments >= 0) or ``afm`` (moments of both signs)."""
    moms = np.asarray(structure.site_properties.get("magmom") or [0.0] * len(structure), float)
    if not np.any(np.abs(moms) > 1e-6):
        return "none"
    return "afm" if (moms > 1e-6).any() and (moms < -1e-6).any() else "fm"


def magnetic_outcome(total: float | None, absolute: float | None, spin: bool) -> str:
    """``unpolarised``, ``nonmagnetic`` (|m| < 0.05 μB per cell), ``compensated`` (|M| under
    half of ∫|m|) or ``ferromagnetic`` from pw.x's total and absolute magnetisation."""
    if not spin or total is None or absolute is None:
        return "unpolarised"
    if absolute < 0.05:
        return "nonmagnetic"
    return "compensated" if abs(total) < 0.5 * absolute else "ferromagnetic"


def check_record(rec: DensityRecord) -> tuple[dict, str | None]:
    """Physics checks of one record: ``(facts, reason to exclude or None)``."""
    meta = rec.metadata or {}
    pseudos = meta.get("pseudopotentials") or {}
    facts: dict = {"n_electrons": round(rec.n_electrons, 6)}
    expected = None
    if pseudos and all(isinstance(p, dict) and "z_valence" in p for p in pseudos.values()):
        expected = sum(float(pseudos[s.specie.symbol]["z_valence"]) for s in rec.structure)
        facts["n_electrons_expected"] = expected
    start = magnetic_start(rec.structure)
    outcome = magnetic_outcome(meta.get("total_magnetization"), meta.get("absolute_magnetization"),
                               rec.magnetization is not None)
    facts.update(magnetic_start=start, magnetic_outcome=outcome)
    if meta.get("converged") is False:
        return facts, "not converged"
    if expected is not None and abs(rec.n_electrons - expected) > 0.01 * expected:
        return facts, f"electron count {rec.n_electrons:.4f}, pseudopotentials give {expected:g}"
    if start == "afm" and outcome == "ferromagnetic":
        return facts, (f"antiferromagnetic start converged ferromagnetic (total "
                       f"{meta.get('total_magnetization')} of absolute "
                       f"{meta.get('absolute_magnetization')} μB)")
    if start == "fm" and outcome == "compensated":
        return facts, (f"ferromagnetic start converged compensated (total "
                       f"{meta.get('total_magnetization')} of absolute "
                       f"{meta.get('absolute_magnetization')} μB)")
    return facts, None


def _entry(rec: DensityRecord, facts: dict, storage: dict, definition: dict, nbytes: int) -> dict:
    meta = rec.metadata or {}
    s = rec.structure
    gen = (definition or {}).get("generator") or {}
    parsed = parse_generated_id(rec.id) or {}
    return {
        "id": rec.id,
        "family": meta.get("family") or s.composition.chemical_system,
        "prototype": meta.get("prototype"),
        "formula": s.composition.reduced_formula,
        "n_atoms": len(s),
        "elements": sorted(e.symbol for e in s.composition),
        "spin_polarized": rec.magnetization is not None,
        **facts,
        "total_magnetization": meta.get("total_magnetization"),
        "absolute_magnetization": meta.get("absolute_magnetization"),
        "energy_eV": rec.energy_eV,
        "scf_iterations": rec.scf_iterations,
        "wall_s": meta.get("wall_time_s"),
        "cpu_s": meta.get("cpu_time_s"),
        "n_kpoints": meta.get("n_kpoints"),
        "generator": {"version": gen.get("version", 1), "seed": parsed.get("seed", gen.get("seed")),
                      "index": parsed.get("index"),
                      "attempt": (meta.get("generator_info") or {}).get("attempt")},
        "protocol": _key(meta.get("protocol")) if meta.get("protocol") else None,
        "pseudopotentials": {el: {"file": p.get("file"), "md5": p.get("md5")}
                             for el, p in (meta.get("pseudopotentials") or {}).items()
                             if isinstance(p, dict)},
        "storage": {k: storage[k] for k in ("nmape_total_percent", "nmape_magnetization_percent",
                                            "nmape_magnetization_own_percent") if k in storage}
        | {"bytes": nbytes},
    }


def _sort_key(rid: str) -> tuple:
    p = parse_generated_id(rid)
    return (p["index"], rid) if p else (10**9, rid)


def pack_dataset(
    src: str | Path,
    into: str | Path,
    shard_size: int = 500,
    splits_from: str | Path | None = None,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    target_percent: float = TARGET_PERCENT,
    log: Callable[[str], None] = print,
) -> dict:
    """Pack the records of ``src`` not yet in ``into`` into new shards; returns a summary."""
    src, into = Path(src), Path(into)
    if not (src / "records").is_dir():
        raise ValueError(f"{src} is not a dataset folder (no records/)")
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    source = DensityDataset(src)
    dest = ShardDataset(into)
    definition = source.manifest.get("definition") or {}
    new_ids = sorted((r for r in source.ids if r not in dest), key=_sort_key)
    known_fail = set(dest.manifest["failures"]) | set(dest.entries)
    failures = {k: {"kind": v.get("kind"), "reason": (v.get("reason") or "")[:400]}
                for k, v in read_failures(src).items()
                if k not in known_fail and k not in source.ids}
    inherited: dict[str, str] = {}  # family splits named by earlier packs' --splits-from
    for doc in dest.shards:
        inherited.update(doc.get("family_splits_from") or {})
    if splits_from:
        inherited.update(splits_from_file(splits_from))
    keep = dict(inherited)
    keep.update({e["family"]: e["split"] for e in dest.entries.values()})
    items, unreadable = [], {}
    for rid in new_ids:
        try:
            rec = source[rid]
        except ValueError as exc:
            unreadable[rid] = {"kind": "unreadable", "reason": str(exc)[:400]}
            continue
        facts, reason = check_record(rec)
        arrays, storage = encode_record(rec, target_percent)
        back = decode_record(arrays, record_head(rec, storage))
        _verify(rec, back, storage)
        nbytes = int(sum(a.nbytes for a in arrays.values()))
        entry = _entry(rec, facts, storage, definition, nbytes)
        if reason:
            entry["excluded"] = reason
        items.append((rec, arrays, storage, entry))
    failures.update(unreadable)
    if not items and not failures:
        log(f"nothing new to pack from {src} ({len(dest.entries)} records in {into})")
        return {"new_records": 0, "shards": [], "records_total": len(dest.entries)}
    fams = {e["id"]: e["family"] for e in dest.entries.values()}
    fams.update({it[3]["id"]: it[3]["family"] for it in items})
    splits = split_by_family(fams, fractions, split_seed, keep=keep)
    split_of = {rid: name for name, ids in splits.items() for rid in ids}
    for it in items:
        it[3]["split"] = split_of[it[3]["id"]]
    protocols = {_key(it[0].metadata["protocol"]): it[0].metadata["protocol"]
                 for it in items if (it[0].metadata or {}).get("protocol")}
    pseudos: dict = {}
    for it in items:
        pseudos.update(it[0].metadata.get("pseudopotentials") or {})
    written = []
    chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)] or [[]]
    for k, chunk in enumerate(chunks):
        idx = dest.next_shard_index()
        name = f"shard-{idx:05d}"
        path = into / "shards" / f"{name}.npz"
        size = write_shard(path, [(record_head(r, s), a) for r, a, s, _ in chunk])
        check = np.load(path, allow_pickle=False)  # read back what git will hold
        view_arrays = {e["id"]: {} for *_, e in chunk}
        for key in check.files:
            rid, part = key.split("__", 1)
            view_arrays[rid][part] = check[key]
        for rec, _, storage, entry in chunk:
            arrays = dict(view_arrays[rec.id])
            head = json.loads(lzma.decompress(arrays.pop("head").tobytes()))
            _verify(rec, decode_record(arrays, head), storage)
        doc = {
            "format": SHARD_FORMAT,
            "shard": name,
            "created": now(),
            "source": {"name": src.resolve().name, "path": str(src.resolve()),
                       "kind": source.manifest.get("kind"),
                       "created": source.manifest.get("created"),
                       "runs": source.manifest.get("runs", [])[-3:]},
            "definition": definition,
            "protocols": protocols,
            "pseudopotentials": pseudos,
            "packed_by": {"command": command_line(), **code_provenance()},
            "storage": {"target_nmape_percent": target_percent, "limit_nmape_percent": LIMIT_PERCENT,
                        "magnetization_floor": MAG_FLOOR,
                        "scheme": "one of each ±m pair, lexicographic Miller runs, coefficients "
                                  "rounded to a per-record step, LZMA"},
            "family_splits_from": inherited,
            "records": [e for *_, e in chunk],
            "failures": failures if k == 0 else {},
            "summary": {"n_records": len(chunk), "bytes": size,
                        "max_nmape_total_percent": max(
                            (e["storage"]["nmape_total_percent"] for *_, e in chunk), default=None),
                        "excluded": sum(bool(e.get("excluded")) for *_, e in chunk)},
        }
        write_json_atomic(path.with_suffix(".json"), doc)
        dest = ShardDataset(into)
        written.append({"shard": name, "records": len(chunk), "bytes": size})
        log(f"{name}: {len(chunk)} records, {size / 1e6:.2f} MB")
    return {"new_records": len(items), "new_failures": len(failures), "shards": written,
            "records_total": len(dest.entries),
            "excluded": {it[3]["id"]: it[3]["excluded"] for it in items if it[3].get("excluded")}}


def _verify(rec: DensityRecord, back: DensityRecord, storage: dict) -> None:
    """The stored record is the source within :data:`LIMIT_PERCENT` NMAPE (total, magnetisation
    relative to its floor), with the same structure, grid and energy."""
    if back.id != rec.id or tuple(back.grid_shape) != tuple(rec.grid_shape):
        raise ValueError(f"record {rec.id}: stored id or grid differs")
    if len(back.structure) != len(rec.structure) or not np.allclose(
            back.structure.cart_coords, rec.structure.cart_coords, atol=1e-8):
        raise ValueError(f"record {rec.id}: stored structure differs")
    ref = rec.to_grid()
    got = back.to_grid(rec.grid_shape)
    err = nmape(got.total, ref.total)
    if err > LIMIT_PERCENT:
        raise ValueError(f"record {rec.id}: stored total density NMAPE {err:.4f} % > {LIMIT_PERCENT} %")
    if rec.magnetization is not None:
        scale = max(float(np.abs(ref.magnetization).sum()), MAG_FLOOR * float(np.abs(ref.total).sum()))
        merr = 100.0 * float(np.abs(got.magnetization - ref.magnetization).sum()) / scale
        if merr > LIMIT_PERCENT:
            raise ValueError(f"record {rec.id}: stored magnetisation error {merr:.4f} % > "
                             f"{LIMIT_PERCENT} %")
