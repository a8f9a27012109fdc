"""Write a realistic unseen test set: structure files for ``model_scf.py --structures``.

Usage::

    .venv/bin/python benchmarks/realistic_set.py OUT_DIR --n 12 --seed 20261208 --max-atoms 8
        [--elements Li Mg ...] [--require-any Li Mg ...] [--exclude-data data/qe/main ...]

The first ``--n`` structures of the realistic generator (training/realistic.py, version 2,
``--seed``) on ``--elements`` (default: every element the QE engine supports), at most
``--max-atoms``, half with a magnetic start, each holding at least one of
``--require-any`` (when given), whose prototype no record of the ``--exclude-data``
datasets has (so no model trained on them saw it; the repository's datasets by default).
Same rule as ``compare_unseen.py --realistic``, with the element filter added.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dataset_prototypes(roots: list[Path]) -> set[str]:
    """Prototypes of every generated record id in the given datasets (records or shards)."""
    from mlcharge_workflows.training.pack import parse_generated_id
    from mlcharge_workflows.training.shards import open_dataset

    out = set()
    for root in roots:
        for rid in open_dataset(root).ids:
            if parsed := parse_generated_id(rid):
                out.add(parsed["prototype"])
    return out


def magnetic_start(structure) -> bool:
    """A non-zero ``magmom`` on some site (FM or AFM start)."""
    return any(abs(m) > 0 for m in structure.site_properties.get("magmom", []) or [])


def pick(n: int, seed: int, max_atoms: int, elements: list[str] | None, skip) -> list:
    """The first ``n`` structures of the realistic generator with at most ``max_atoms``, half
    with a magnetic start, for which ``skip(generated, prototype)`` is false."""
    from mlcharge_workflows.training.realistic import RealisticGenerator

    gen = RealisticGenerator(seed=seed, elements=elements, max_atoms=max_atoms)
    want = {True: n // 2, False: n - n // 2}
    picked = []
    for index in range(200 * n):
        if not any(want.values()):
            break
        g = gen(index)
        proto = g.id.rsplit("-", 3)[0]
        magnetic = magnetic_start(g.structure)
        if len(g.structure) > max_atoms or not want[magnetic] or skip(g, proto):
            continue
        want[magnetic] -= 1
        picked.append(g)
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=20261208)
    ap.add_argument("--max-atoms", type=int, default=8)
    ap.add_argument("--elements", nargs="+", default=None)
    ap.add_argument("--require-any", nargs="+", default=[])
    ap.add_argument("--exclude-data", type=Path, nargs="+",
                    default=sorted((REPO / "data" / "qe").glob("*")))
    args = ap.parse_args()
    seen = dataset_prototypes(args.exclude_data)
    require_any = set(args.require_any)

    def skip(g, proto: str) -> bool:
        if proto in seen or (require_any and not {x.specie.symbol for x in g.structure} & require_any):
            return True
        seen.add(proto)  # one structure per prototype
        return False

    picked = pick(args.n, args.seed, args.max_atoms, args.elements, skip)
    args.out.mkdir(parents=True, exist_ok=True)
    for g in picked:
        (args.out / f"{g.id}.json").write_text(json.dumps(g.structure.as_dict()))
        print(g.id, len(g.structure), "magnetic" if magnetic_start(g.structure) else "")
    print(f"{len(picked)} structures in {args.out} (prototypes in none of {len(args.exclude_data)} datasets)")


if __name__ == "__main__":
    main()
