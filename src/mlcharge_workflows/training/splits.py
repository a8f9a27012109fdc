"""Train / validation / test splits by composition family.

All structures of one family (the chemical system, e.g. ``"Fe-O"``: every
prototype, strain, rattle and supercell of iron oxides) land in the same split, so
a test structure is never a strained or rattled copy of a training structure.

The assignment is deterministic from the seed and the set of families: families
are put in a seeded pseudo-random order (a hash of ``seed:family``, independent of
Python's hash randomisation and of the order of the input) and each goes to the
split furthest below its target share of structures.

A growing dataset keeps its splits: families given in ``keep`` (from the previous
manifest) stay where they were, and only new families are dealt out, so a model
trained on an earlier snapshot still has a clean test split on the later one.

Examples
--------
>>> from mlcharge_workflows.training.splits import split_by_family
>>> s = split_by_family({"a": "Fe", "b": "Fe", "c": "Ni", "d": "O"}, (0.5, 0.25, 0.25), seed=0)
>>> sorted(s) == ["test", "train", "val"] and sum(map(len, s.values())) == 4
True
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence

SPLIT_NAMES = ("train", "val", "test")


def _order_key(seed: int, family: str) -> str:
    return hashlib.sha256(f"{seed}:{family}".encode()).hexdigest()


def split_by_family(
    families: Mapping[str, str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    keep: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Split record ids into train / val / test with no family shared between splits.

    Parameters
    ----------
    families
        Record id -> family key.
    fractions
        Target shares of structures for (train, val, test); must be >= 0 and sum to 1.
    seed
        Seed of the family order.
    keep
        Family key -> split name for families whose split is fixed already (e.g. the
        previous manifest's); only the other families are assigned.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, ids sorted within each split.
    """
    fr = [float(f) for f in fractions]
    if len(fr) != len(SPLIT_NAMES):
        raise ValueError(f"need {len(SPLIT_NAMES)} fractions (train, val, test), got {fr}")
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fr}")
    by_family: dict[str, list[str]] = defaultdict(list)
    for rid, fam in families.items():
        if not fam:
            raise ValueError(f"record {rid!r} has an empty family key")
        by_family[fam].append(rid)
    total = sum(len(v) for v in by_family.values())
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    keep = dict(keep or {})
    bad = {f: k for f, k in keep.items() if k not in SPLIT_NAMES}
    if bad:
        raise ValueError(f"unknown split names for kept families: {bad} (known: {list(SPLIT_NAMES)})")
    for fam in sorted(by_family):
        if fam in keep:
            out[keep[fam]].extend(by_family[fam])
    order = sorted((f for f in by_family if f not in keep), key=lambda f: (_order_key(seed, f), f))
    for fam in order:
        # the split with the largest deficit (target count minus current count) gets the family;
        # ties (e.g. at the start) go to the split with the larger target
        deficits = [fr[k] * total - len(out[name]) for k, name in enumerate(SPLIT_NAMES)]
        k = max(range(len(SPLIT_NAMES)), key=lambda j: (deficits[j] / max(fr[j], 1e-12)
                                                        if fr[j] > 0 else -1e300, fr[j]))
        out[SPLIT_NAMES[k]].extend(by_family[fam])
    return {name: sorted(ids) for name, ids in out.items()}


def split_summary(splits: Mapping[str, Sequence[str]], families: Mapping[str, str]) -> dict:
    """Structure and family counts per split (for the manifest and docs)."""
    return {
        name: {
            "structures": len(ids),
            "families": len({families[i] for i in ids if i in families}),
        }
        for name, ids in splits.items()
    }


def check_disjoint(splits: Mapping[str, Sequence[str]], families: Mapping[str, str]) -> None:
    """Raise ``ValueError`` if a record or a family appears in two splits."""
    seen_id: dict[str, str] = {}
    seen_fam: dict[str, str] = {}
    for name, ids in splits.items():
        for rid in ids:
            if rid in seen_id and seen_id[rid] != name:
                raise ValueError(f"record {rid!r} is in splits {seen_id[rid]!r} and {name!r}")
            seen_id[rid] = name
            fam = families.get(rid)
            if fam is None:
                continue
            if fam in seen_fam and seen_fam[fam] != name:
                raise ValueError(f"family {fam!r} is in splits {seen_fam[fam]!r} and {name!r}")
            seen_fam[fam] = name
