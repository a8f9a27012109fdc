"""How the test split compares with training: cell size, coordination, composition, magnetism.

Usage::

    python benchmarks/data_split_report.py data/qe/real            # a sharded dataset
    python benchmarks/data_split_report.py data/qe/real --cost     # pw.x wall/CPU, failures
    python benchmarks/data_split_report.py --plan 2600 --manifest /work/datasets/real/manifest.json
                                                                    # generator 2's plan, no DFT

The plan mode splits the planned structures by family exactly as ``data pack`` does
(:func:`split_by_family`, seed 0, 80/10/10), so the report exists before pw.x has run.
Coordination: neighbours within 1.2 x the tabulated bond (:func:`crystal_types.bond`).
Prints a markdown table (one column per split).
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter

import numpy as np


def coordination(structure) -> float:
    """Mean number of neighbours within 1.2 x the expected bond."""
    from mlcharge_workflows.training.crystal_types import bond

    cn = []
    for i, neigh in enumerate(structure.get_all_neighbors(5.0)):
        a = structure[i].specie.symbol
        cn.append(sum(nb.nn_distance <= 1.2 * bond(a, nb.specie.symbol) for nb in neigh))
    return float(np.mean(cn))


def row_stats(items: list[dict]) -> dict:
    """Summary of ``[{structure, class, order, kind}]``."""
    if not items:
        return {}
    n = np.array([len(x["structure"]) for x in items])
    els = Counter(e.symbol for x in items for e in x["structure"].composition)
    nel = np.array([len(x["structure"].composition) for x in items])
    cls = Counter(x.get("class") or "-" for x in items)
    orders = Counter(x.get("order") or "none" for x in items)
    kinds = Counter(x.get("kind") or "bulk" for x in items)
    cn = np.array([coordination(x["structure"]) for x in items])
    vol = np.array([x["structure"].volume / len(x["structure"]) for x in items
                    if (x.get("kind") or "bulk") != "slab"])
    top = ", ".join(f"{e} {100 * c / len(items):.0f}" for e, c in els.most_common(8))
    return {
        "structures": len(items),
        "families": len({x["family"] for x in items}),
        "atoms mean / median / max": f"{n.mean():.1f} / {np.median(n):.0f} / {n.max()}",
        "cells with >= 8 atoms (%)": f"{100 * (n >= 8).mean():.0f}",
        "elements per cell (mean)": f"{nel.mean():.2f}",
        "coordination (mean, std)": f"{cn.mean():.1f}, {cn.std():.1f}",
        "volume per atom, bulk (Å³)": f"{vol.mean():.1f}" if vol.size else "-",
        "bulk / supercell / slab (%)": " / ".join(
            f"{100 * kinds[k] / len(items):.0f}" for k in ("bulk", "supercell", "slab")),
        "magnetic: FM / AFM (%)": f"{100 * orders['fm'] / len(items):.0f} / "
                                  f"{100 * orders['afm'] / len(items):.0f}",
        "classes (%)": ", ".join(f"{c} {100 * k / len(items):.0f}" for c, k in cls.most_common()),
        "most frequent elements (% of cells)": top,
        "distinct elements": len(els),
    }


def from_plan(n: int, seed: int, manifest: str | None = None) -> dict[str, list[dict]]:
    import json

    from mlcharge_workflows.training.realistic import RealisticGenerator, generator_from_settings
    from mlcharge_workflows.training.splits import split_by_family

    if manifest:  # the generator a generation folder recorded
        with open(manifest) as fh:
            gen = generator_from_settings(json.load(fh)["definition"]["generator"])
    else:
        gen = RealisticGenerator(seed=seed)
    items = {}
    for i in range(n):
        g = gen(i)
        items[g.id] = {"structure": g.structure, "family": g.family, "class": g.info.get("class"),
                       "order": g.info.get("magnetic_order"), "kind": g.info.get("kind")}
    splits = split_by_family({k: v["family"] for k, v in items.items()}, (0.8, 0.1, 0.1), 0)
    return {name: [items[i] for i in ids] for name, ids in splits.items()}


def from_shards(root: str) -> dict[str, list[dict]]:
    from mlcharge_workflows.training.shards import ShardDataset

    ds = ShardDataset(root)
    out: dict[str, list[dict]] = {}
    for name, ids in ds.manifest["splits"].items():
        rows = []
        for rid in ids:
            info = ds.info(rid)
            gi = info["metadata"].get("generator_info") or {}
            rows.append({"structure": info["structure"], "family": ds.entries[rid]["family"],
                         "class": gi.get("class"), "kind": gi.get("kind"),
                         "order": ds.entries[rid]["magnetic_start"]})
        out[name] = rows
    return out


def cost_table(root: str) -> None:
    """pw.x wall and CPU time per chemistry class (version 2) or prototype (version 1),
    magnetic starts and outcomes, and the failures with their reasons."""
    from mlcharge_workflows.training.shards import ShardDataset

    ds = ShardDataset(root)
    groups: dict[str, list[dict]] = {}
    for rid, e in ds.entries.items():
        gi = ds.info(rid)["metadata"].get("generator_info") or {}
        key = gi.get("class") or (e.get("prototype") or "-").replace("sc-", "")
        if gi.get("kind") in ("supercell", "slab"):
            key = f"{key} ({gi['kind']})"
        groups.setdefault(key, []).append(e)
    print("| family | records | atoms (mean) | spin-polarised | AFM starts | wall s mean / max | "
          "CPU s total |")
    print("|---|---|---|---|---|---|---|")
    tot_w = tot_c = 0.0
    for key in sorted(groups, key=lambda k: -len(groups[k])):
        es = groups[key]
        w = np.array([e.get("wall_s") or 0.0 for e in es])
        c = np.array([e.get("cpu_s") or 0.0 for e in es])
        tot_w, tot_c = tot_w + w.sum(), tot_c + c.sum()
        print(f"| {key} | {len(es)} | {np.mean([e['n_atoms'] for e in es]):.1f} | "
              f"{sum(e['spin_polarized'] for e in es)} | "
              f"{sum(e.get('magnetic_start') == 'afm' for e in es)} | "
              f"{w.mean():.0f} / {w.max():.0f} | {c.sum():.0f} |")
    print(f"\ntotal: {len(ds.entries)} records, pw.x wall {tot_w / 3600:.2f} h, CPU {tot_c / 3600:.2f} h")
    outcomes = Counter((e.get("magnetic_start"), e.get("magnetic_outcome")) for e in ds.entries.values())
    print("magnetic start -> outcome:", dict(outcomes))
    print("excluded:", ds.manifest["excluded"] or "none")
    fails = ds.manifest["failures"]
    print(f"failures ({len(fails)}):", dict(Counter(f.get("kind") for f in fails.values())))
    for rid, f in fails.items():
        print(f"  {rid}: {f.get('kind')}: {(f.get('reason') or '').splitlines()[0][:120] if f.get('reason') else ''}")


def summary(root: str) -> None:
    """Counts of a sharded dataset (the table of docs/dataset.md)."""
    from pathlib import Path

    from mlcharge_workflows.training.shards import ShardDataset

    ds = ShardDataset(root)
    es = list(ds.entries.values())
    size = sum(p.stat().st_size for p in (Path(root) / "shards").glob("shard-*"))
    els = Counter(el for e in es for el in e["elements"])
    atoms = Counter(e["n_atoms"] for e in es)
    split = {k: (len(v), len({ds.entries[i]["family"] for i in v}))
             for k, v in ds.manifest["splits"].items()}
    nm = [e["storage"]["nmape_total_percent"] for e in es]
    print(f"| shards | {len(ds.shards)} ({size / 1e6:.2f} MB, {size / max(1, len(es)) / 1e3:.1f} kB per record) |")
    print(f"| records | {len(es)} ({len(ds.manifest['excluded'])} excluded), "
          f"{len(ds.manifest['failures'])} failures listed "
          f"{dict(Counter(f.get('kind') for f in ds.manifest['failures'].values()))} |")
    print(f"| elements | {len(els)}: " + ", ".join(f"{k} {v}" for k, v in sorted(els.items())) + " |")
    print("| atoms per cell | " + ", ".join(f"{k}: {v}" for k, v in sorted(atoms.items()))
          + f" ({sum(v for k, v in atoms.items() if k >= 8)} with >= 8) |")
    print(f"| spin-polarised | {sum(e['spin_polarized'] for e in es)}; AFM starts "
          f"{sum(e.get('magnetic_start') == 'afm' for e in es)} |")
    print("| splits (records, families) | " + ", ".join(f"{k} {a} ({b})" for k, (a, b) in split.items()) + " |")
    if nm:
        print(f"| storage NMAPE | mean {np.mean(nm):.4f} %, max {np.max(nm):.4f} % |")


def main() -> None:
    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", nargs="?", help="sharded dataset folder (data/qe/NAME)")
    ap.add_argument("--plan", type=int, help="report on the first N structures of generator 2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--manifest", help="with --plan: the generator of this manifest.json")
    ap.add_argument("--cost", action="store_true", help="pw.x cost and failures of a dataset")
    ap.add_argument("--summary", action="store_true", help="counts of a dataset")
    args = ap.parse_args()
    if args.cost:
        cost_table(args.dataset)
        return
    if args.summary:
        summary(args.dataset)
        return
    if args.plan:
        splits = from_plan(args.plan, args.seed, args.manifest)
    elif args.dataset:
        splits = from_shards(args.dataset)
    else:
        ap.error("give a dataset folder or --plan N")
    stats = {name: row_stats(items) for name, items in splits.items()}
    names = [n for n in ("train", "val", "test") if stats.get(n)]
    keys = list(next(iter(stats[names[0]].values())) and stats[names[0]])
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for k in keys:
        print(f"| {k} | " + " | ".join(str(stats[n].get(k, "-")) for n in names) + " |")


if __name__ == "__main__":
    main()
