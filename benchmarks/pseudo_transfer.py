"""Transfer of the ML start to other pseudopotentials (QE): the VASP situation, reproduced.

The model was trained on the registry's files. Here every structure is compared twice with
``mlcharge compare`` (the library function :func:`mlcharge_workflows.compare.run_compare`):
once with the registry's Si, C and Fe files, once with Debian's alternates (US Si from
pslibrary 1.0.0, Vanderbilt C, and the 3s3p-semicore Fe of pslibrary 0.2.1: 16 electrons
instead of 8). The start density is built on the run's own ``PP_RHOATOM``s
(``QEProtocol.pseudopotentials`` -> ``predict_density(reference=...)``).

The structures are small cells (1-8 atoms) of families absent from the training data where
possible (beta-Sn and simple hexagonal Si, lonsdaleite, 2H and rocksalt SiC, CsCl and B20
FeSi, D0_3 Fe3Si, rocksalt FeC, bcc/fcc Fe ferro- and antiferromagnetic).

Both sets run under one cheaper protocol (``--protocol`` below: the same cutoffs for both,
so each pair of arms differs only in its start density)::

    python benchmarks/pseudo_transfer.py --out pseudo_transfer --jobs 2

writes ``pseudo_transfer/{registry,alternate}.json`` (the records) and
``pseudo_transfer/table.md`` (the table of docs/benchmarks.md).

``--reference-configuration file|training`` sets ``MLCHARGE_REFERENCE_CONFIGURATION`` for
the run (each foreign file's own ``PP_RHOATOM``, or its density in the training atomic
configuration: :mod:`mlcharge_workflows.model.configuration`); run both into two folders
and ``--matching-table FILE_DIR TRAINING_DIR`` writes their side-by-side table, with the
first SCF step's "estimated scf accuracy" of each arm::

    python benchmarks/pseudo_transfer.py --out pt-file --jobs 1 --arm alternate \
        --reference-configuration file --only Fe-bcc-FM
    python benchmarks/pseudo_transfer.py --out pt-matched --jobs 1 --arm alternate \
        --reference-configuration training --only Fe-bcc-FM
    python benchmarks/pseudo_transfer.py --matching-table pt-file pt-matched
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from pathlib import Path

from pymatgen.core import Lattice, Structure

ALTERNATES = {
    "Si": "/usr/share/espresso/pseudo/Si.pbe-nl-rrkjus_psl.1.0.0.UPF",
    "C": "/usr/share/espresso/pseudo/C.pbe-van_bm.UPF",
    "Fe": "/usr/share/espresso/pseudo/Fe.pbe-spn-rrkjus_psl.0.2.1.UPF",
}
#: One protocol for both sets (the alternates' own suggestion for Fe is 64/782 Ry).
PROTOCOL = {"ecutwfc_ry": 35.0, "ecutrho_ry": 280.0, "kspacing": 0.4}
RY_TO_EV = 13.605693


def structures() -> dict[str, Structure]:
    """The unseen cells, named."""
    sg = Structure.from_spacegroup
    out = {
        "Si-betaSn": sg("I4_1/amd", Lattice.tetragonal(4.80, 2.65), ["Si"], [[0, 0, 0]]),
        "Si-sh": Structure(Lattice.hexagonal(2.64, 2.48), ["Si"], [[0, 0, 0]]),
        "C-lonsdaleite": sg("P6_3/mmc", Lattice.hexagonal(2.52, 4.12), ["C"], [[1 / 3, 2 / 3, 0.0625]]),
        "SiC-2H": sg("P6_3mc", Lattice.hexagonal(3.08, 5.05), ["Si", "C"],
                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]]),
        "SiC-rocksalt": sg("Fm-3m", Lattice.cubic(4.03), ["Si", "C"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Fe-bcc-FM": sg("Im-3m", Lattice.cubic(2.83), ["Fe"], [[0, 0, 0]]),
        "Fe-bcc-AFM": Structure(Lattice.cubic(2.83), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]],
                                site_properties={"magmom": [2.0, -2.0]}),
        "Fe-fcc-AFM": Structure(Lattice.tetragonal(2.55, 3.60), ["Fe", "Fe"],
                                [[0, 0, 0], [0.5, 0.5, 0.5]], site_properties={"magmom": [1.5, -1.5]}),
        "FeSi-CsCl": Structure(Lattice.cubic(2.78), ["Fe", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "FeC-rocksalt": sg("Fm-3m", Lattice.cubic(4.00), ["Fe", "C"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Fe3Si-D03": sg("Fm-3m", Lattice.cubic(5.65), ["Si", "Fe", "Fe"],
                        [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]),
        "FeSi-B20": sg("P2_13", Lattice.cubic(4.49), ["Fe", "Si"], [[0.137] * 3, [0.842] * 3]),
    }
    return {k: s.get_primitive_structure() if "AFM" not in k else s for k, s in out.items()}


def run(out: Path, jobs: int, names: list[str] | None, arms: list[str],
        nonmagnetic: bool = False) -> None:
    from mlcharge_workflows.compare import run_compare

    out.mkdir(parents=True, exist_ok=True)
    cells = out / "cells"
    cells.mkdir(exist_ok=True)
    paths = []
    for name, s in structures().items():
        if names and name not in names:
            continue
        path = cells / f"{name}.json"
        path.write_text(json.dumps(s.as_dict()))
        paths.append(str(path))
    for arm in arms:
        files = {} if arm == "registry" else ALTERNATES
        protocol = {**PROTOCOL, "pseudopotentials": files}
        if nonmagnetic:  # nspin=1: the start's charge alone, no magnetisation to relax
            protocol["starting_magnetization"] = {}
        target = out / f"{arm}.json"
        run_compare(paths, "qe", workdir=out / f"runs-{arm}", jobs=jobs, nprocs=1,
                    progress=False, protocol=protocol, output=target,
                    resume=target.exists())
        table(out)


def _saving(rec: dict) -> float | None:
    it = rec["scf_iterations"]
    if rec.get("error") or it.get("baseline") is None or it.get("ml") is None:
        return None
    return 1.0 - it["ml"] / it["baseline"]


def table(out: Path) -> str:
    """Markdown table of both sets (whatever has finished)."""
    sets = {}
    for arm in ("registry", "alternate"):
        f = out / f"{arm}.jsonl"  # the documents (record + details), one per line, latest last
        lines = f.read_text().splitlines() if f.is_file() else []
        sets[arm] = {Path(r["structure"]).stem: r for r in map(json.loads, filter(str.strip, lines))}
    names = [n for n in structures() if n in sets["registry"] or n in sets["alternate"]]
    lines = ["| structure | magnetic (reg / alt, μB) | registry: atoms -> ML | alternates: atoms -> ML "
             "| energy ML - atoms (meV, reg / alt) | fallback (reg / alt) |",
             "|---|---|---|---|---|---|"]
    savings = {"registry": [], "alternate": []}
    totals = {"registry": [0, 0], "alternate": [0, 0]}  # iterations atoms, ML
    for n in names:
        cells = []
        mags, iters, de, fb = [], [], [], []
        for arm in ("registry", "alternate"):
            r = sets[arm].get(n)
            if r is None:
                mags.append("-"), iters.append("-"), de.append("-"), fb.append("-")
                continue
            if r.get("error"):
                mags.append("-"), iters.append(f"error: {r['error'][:60]}"), de.append("-"), fb.append("-")
                continue
            m = (r.get("details") or {}).get("total_magnetization", {}).get("baseline")
            mags.append("-" if m is None else f"{m:.2f}")
            it = r["scf_iterations"]
            iters.append(f"{it['baseline']} -> {it['ml']}")
            e = r["energy_eV"]
            de.append("-" if None in (e["ml"], e["baseline"]) else f"{1000 * (e['ml'] - e['baseline']):+.3f}")
            fb.append(r.get("fallback") or "none")
            s = _saving(r)
            if s is not None:
                savings[arm].append(s)
                totals[arm][0] += it["baseline"]
                totals[arm][1] += it["ml"]
        cells = [n, " / ".join(mags), iters[0], iters[1], " / ".join(de), " / ".join(fb)]
        lines.append("| " + " | ".join(cells) + " |")
    med = {k: statistics.median(v) if v else None for k, v in savings.items()}
    lines.append("")
    for arm in ("registry", "alternate"):
        m = med[arm]
        lines.append(f"- median saving ({arm}, {len(savings[arm])} structures): "
                     + ("-" if m is None else f"{100 * m:.1f} %")
                     + f"; iterations summed, atoms -> ML: {totals[arm][0]} -> {totals[arm][1]}")
    if med["registry"] and med["alternate"] is not None and med["registry"] > 0:
        lines.append(f"- ratio alternate / registry: {med['alternate'] / med['registry']:.2f}")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def first_accuracy(folder: str | None) -> float | None:
    """The first "estimated scf accuracy" (Ry) of the pw.x run in ``folder``."""
    out = Path(folder or "") / "pw.out"
    if not folder or not out.is_file():
        return None
    m = re.search(r"estimated scf accuracy\s*<\s*([-+0-9.Ee]+)", out.read_text(errors="replace"))
    return float(m.group(1)) if m else None


def _records(folder: Path, arm: str = "alternate") -> dict[str, dict]:
    f = folder / f"{arm}.jsonl"
    lines = f.read_text().splitlines() if f.is_file() else []
    return {Path(r["structure"]).stem: r for r in map(json.loads, filter(str.strip, lines))}


def _configurations(doc, element: str):
    """The ``configuration`` records of ``element``'s reference anywhere in a document."""
    if isinstance(doc, dict):
        if "configuration" in doc and str(doc.get("file", "")).startswith(f"{element}."):
            yield doc["configuration"]
        for v in doc.values():
            yield from _configurations(v, element)
    elif isinstance(doc, list):
        for v in doc:
            yield from _configurations(v, element)


def matching_table(file_dir: Path, matched_dir: Path) -> str:
    """The alternates with each file's own reference vs the training configuration."""
    own, matched = _records(file_dir), _records(matched_dir)
    lines = ["| structure | atoms | ML, file's own reference | ML, training configuration "
             "| first-step accuracy, Ry (atoms / own / training) | Fe configuration used |",
             "|---|---|---|---|---|---|"]
    for n in [n for n in structures() if n in own or n in matched]:
        a, b = own.get(n, {}), matched.get(n, {})
        it_a, it_b = a.get("scf_iterations") or {}, b.get("scf_iterations") or {}
        base = it_b.get("baseline") or it_a.get("baseline")
        acc = [first_accuracy(((r.get("details") or {}).get("dir_names") or {}).get(k))
               for r, k in ((b or a, "baseline"), (a, "ml"), (b, "ml"))]
        used = next((c.get("used") for c in _configurations(b, "Fe")), "-")
        lines.append(f"| {n} | {base} | {it_a.get('ml', '-')} | {it_b.get('ml', '-')} | "
                     + " / ".join("-" if x is None else f"{x:.3g}" for x in acc) + f" | {used} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("pseudo_transfer"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="structure names (default: all)")
    ap.add_argument("--arm", choices=("registry", "alternate"), action="append",
                    help="which set to run (default both; two processes may run one each)")
    ap.add_argument("--table", action="store_true", help="only rewrite the table")
    ap.add_argument("--reference-configuration", choices=("training", "file"),
                    help="MLCHARGE_REFERENCE_CONFIGURATION for this run (default: the package's)")
    ap.add_argument("--nonmagnetic", action="store_true",
                    help="run every cell without spin polarisation (nspin=1; use it without "
                    "the AFM cells, whose moments need two spins)")
    ap.add_argument("--matching-table", nargs=2, type=Path, metavar=("FILE_DIR", "TRAINING_DIR"),
                    help="only print the table of two runs made with each reference configuration")
    args = ap.parse_args()
    if args.matching_table:
        print(matching_table(*args.matching_table))
        return
    if args.reference_configuration:
        os.environ["MLCHARGE_REFERENCE_CONFIGURATION"] = args.reference_configuration
    if not args.table:
        run(args.out, args.jobs, args.only, args.arm or ["registry", "alternate"], args.nonmagnetic)
    print(table(args.out))


if __name__ == "__main__":
    main()
