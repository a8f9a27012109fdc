"""Full-grid inference time: the shipped orbital model vs a ChargE3Net-size probe network.

Usage::

    .venv/bin/python benchmarks/model_speed.py                # 64-atom Si cell, QE grid
    .venv/bin/python benchmarks/model_speed.py --memory 216   # peak memory, 216 atoms

Same CPU, structure and grid for both. The probe network (random weights, see
``model_probe_baseline.py``) is timed on ``--probe-chunks`` chunks of ``--chunk`` grid points
after its atom layers, and its full-grid time is extrapolated linearly in the number of
probe edges (its cost is linear in them); ``--full-probe`` runs the whole grid instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def silicon(n_atoms: int, seed: int = 0):
    """A rattled diamond-Si supercell of 8 * k^3 atoms (64: 2x2x2, 216: 3x3x3)."""
    from pymatgen.core import Lattice, Structure

    k = round((n_atoms / 8) ** (1 / 3))
    if 8 * k**3 != n_atoms:
        raise SystemExit(f"--atoms must be 8 k^3 (8, 64, 216, ...), got {n_atoms}")
    base = Structure(
        Lattice.cubic(5.43),
        ["Si"] * 8,
        [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0], [0.25] * 3,
         [0.25, 0.75, 0.75], [0.75, 0.25, 0.75], [0.75, 0.75, 0.25]],
    ) * (k, k, k)
    rng = np.random.default_rng(seed)
    for i in range(len(base)):
        base.translate_sites([i], rng.normal(0, 0.03, 3), frac_coords=False)
    return base


def time_model(structure, repeats: int, threads: int | None = None, path: str | None = None) -> dict:
    from mlcharge_workflows.model import default_grid, load_model, predict_density

    t0 = time.perf_counter()
    model = load_model(path)
    load_s = time.perf_counter() - t0
    shape = default_grid(structure, model)
    predict_density(structure, shape, model, threads=threads)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        grid = predict_density(structure, shape, model, threads=threads)
        times.append(time.perf_counter() - t)
    return {"shape": list(shape), "points": int(np.prod(shape)), "load_s": load_s,
            "best_s": min(times), "median_s": float(np.median(times)), "electrons": grid.n_electrons}


def time_probe(structure, shape, chunk: int, n_chunks: int, full: bool) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from model_probe_baseline import ProbeNetwork, graphs

    torch.manual_seed(0)
    net = ProbeNetwork().eval()
    lattice = np.asarray(structure.lattice.matrix)
    cart = np.asarray(structure.cart_coords)
    idx = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1).reshape(-1, 3)
    probes = idx @ lattice
    with torch.no_grad():
        t = time.perf_counter()
        atom, _ = graphs(lattice, cart, probes[:1], net.cutoff)
        pos = torch.as_tensor(cart, dtype=torch.float32)
        layers = net.atoms(torch.zeros(len(cart), dtype=torch.long), pos, *atom)
        atom_s = time.perf_counter() - t
        order = np.random.default_rng(0).permutation(len(probes))
        chunks = range(0, len(probes), chunk) if full else range(0, n_chunks * chunk, chunk)
        probe_s, edges_done, points_done = 0.0, 0, 0
        for start in chunks:
            sel = np.sort(order[start : start + chunk])
            t = time.perf_counter()
            _, (src, dst, shift) = graphs(lattice, cart, probes[sel], net.cutoff)
            net.probes(layers, pos, torch.as_tensor(probes[sel], dtype=torch.float32), src, dst, shift)
            probe_s += time.perf_counter() - t
            edges_done += len(src)
            points_done += len(sel)
    per_point = probe_s / points_done
    return {"atom_layers_s": atom_s, "points_timed": points_done, "edges_per_point": edges_done / points_done,
            "seconds_timed": probe_s, "full_grid_s": atom_s + per_point * len(probes),
            "extrapolated": not full}


def memory(n_atoms: int) -> dict:
    """Peak RSS of a fresh process predicting ``n_atoms`` on its QE grid."""
    code = (
        "import resource, time, sys; sys.path.insert(0, %r)\n"
        "from model_speed import silicon\n"
        "from mlcharge_workflows.model import load_model, predict_density\n"
        "m = load_model(); s = silicon(%d); base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter(); g = predict_density(s, model=m); dt = time.perf_counter() - t\n"
        "print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, dt, *g.shape)\n"
    ) % (str(Path(__file__).parent), n_atoms)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak, dt, *shape = out.stdout.split()
    return {"atoms": n_atoms, "shape": [int(x) for x in shape], "seconds": float(dt),
            "rss_before_mb": int(base) / 1024, "rss_peak_mb": int(peak) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atoms", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--probe-chunks", type=int, default=2)
    ap.add_argument("--full-probe", action="store_true")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (model default: 1).")
    ap.add_argument("--model", default=None, help="weights file (default: the shipped weights)")
    ap.add_argument("--memory", type=int, default=None, help="Only measure peak memory for this many atoms.")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory:
        print(json.dumps(memory(args.memory), indent=1))
        return
    s = silicon(args.atoms)
    ours = time_model(s, args.repeats, args.threads, args.model)
    result = {"structure": f"Si{len(s)} (rattled diamond)", "threads": args.threads or 1,
              "load_average": [round(x, 2) for x in __import__("os").getloadavg()], "model": ours}
    if not args.no_probe:
        probe = time_probe(s, tuple(ours["shape"]), args.chunk, args.probe_chunks, args.full_probe)
        result["probe_network"] = probe
        result["speedup"] = probe["full_grid_s"] / ours["best_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
