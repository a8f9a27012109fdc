"""Basis floor of richer expansions: free coefficients fitted to one record, per basis variant.

Usage::

    .venv/bin/python benchmarks/basis_floor_rich.py RECORD_ID [...] [--variants shipped even rich bond rich+bond]
        [--steps 3000] [--q-core 10] [--dataset /work/datasets/main]

Like benchmarks/basis_floor.py (no network: every coefficient is a free parameter, fitted by
Adam to the record's converged density in the training loss, G-space L2 of total and
magnetisation over |G| <= q_core), but for several expansions side by side, all on the
shipped model's atomic superposition:

* ``shipped``: the shipped weights' orbitals and learned exponents (8 s, 6 p, 6 d, 4 f, 2 g).
* ``even``: the same numbers of orbitals with even-tempered exponents 0.25..16 Å⁻² (the
  untrained default), to separate the effect of learned exponents.
* ``rich``: 12 s, 10 p, 8 d, 6 f, 4 g, 2 h (l = 5) even-tempered 0.1..64 Å⁻² (capped per
  species at the density cutoff, as in the model).
* ``bond``: ``even`` plus bond-centred "virtual" orbitals (SCDP's idea): 4 s, 3 p, 2 d
  Gaussians (0.4..6 Å⁻²) at the midpoint of every pair of atoms closer than 1.2 times the
  shorter of their two nearest-neighbour distances.
* ``rich+bond``: both.

Prints the grid NMAPE (clipped, renormalised, the metric of docs/benchmarks.md) of each fit
and the number of coefficients. Hand-written: the bond-centre placement (pymatgen neighbours).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

torch.set_num_threads(1)

from mlcharge_workflows.model import load_model  # noqa: E402
from mlcharge_workflows.model.basis import (  # noqa: E402
    OrbitalLayout,
    ReciprocalGeometry,
    SpeciesTerm,
    even_tempered,
    q_cutoff,
    species_fourier,
)
from mlcharge_workflows.model.core import DensityModel, ModelConfig  # noqa: E402
from mlcharge_workflows.training.dataset import DensityDataset  # noqa: E402
from mlcharge_workflows.training.metrics import nmape  # noqa: E402
from mlcharge_workflows.training.train import half_to_grid, prepare_sample  # noqa: E402

BOND_MULS = (4, 3, 2)
BOND_ALPHA = (0.4, 6.0)


def bond_centres(structure, factor: float = 1.2, r_max: float = 3.6) -> np.ndarray:
    """Fractional coordinates of the midpoints of near-neighbour pairs (unique, in [0, 1))."""
    neigh = structure.get_all_neighbors(r_max)
    nn = np.array([min((n.nn_distance for n in ns), default=np.inf) for ns in neigh])
    mids = []
    for i, ns in enumerate(neigh):
        for n in ns:
            j = n.index
            if n.nn_distance <= factor * min(nn[i], nn[j]) + 1e-8:
                mids.append(np.mod((structure[i].frac_coords + n.frac_coords) / 2.0, 1.0))
    if not mids:
        return np.zeros((0, 3))
    mids = np.array(mids)
    key = np.round(mids * 1e4).astype(int) % 10000
    _, first = np.unique(key, axis=0, return_index=True)
    return mids[np.sort(first)]


def variant_model(shipped: DensityModel, muls, alpha_min, alpha_max) -> DensityModel:
    cfg = shipped.config.to_dict()
    cfg.update(orbital_muls=tuple(muls), alpha_min=alpha_min, alpha_max=alpha_max)
    return DensityModel(ModelConfig(**cfg), shipped.table).eval()


def fit(model, rec, q_core, steps, bond: bool, learned: bool):
    smp = prepare_sample(model, rec, q_core)
    cell = smp.cell
    n = len(cell.species)
    if learned:
        with torch.no_grad():
            c0 = model.orbital_coefficients([cell])[0]
        free = [c.clone().requires_grad_(True) for c in c0]
    else:
        free = [torch.zeros(n, model.layout.dim, requires_grad=True),
                torch.zeros(n, model.mag_layout.dim, requires_grad=True)]
    params = list(free)
    vterm = None
    if bond:
        mids = bond_centres(rec.structure)
        layout = OrbitalLayout(BOND_MULS)
        alpha = torch.as_tensor(np.concatenate([even_tempered(m, *BOND_ALPHA) for m in BOND_MULS]),
                                dtype=torch.float32)
        geom = ReciprocalGeometry(cell.lattice, mids, cell.mill, layout.lmax)
        cv = torch.zeros(len(mids), layout.dim, requires_grad=True)
        params.append(cv)
        vterm = (layout, alpha, geom, cv, q_cutoff(BOND_ALPHA[1], layout.lmax))

    def total(rows, cache):
        tot, mag = model.fourier(cell, (free[0], free[1]), cache=cache, rows=rows)
        if vterm is not None:
            layout, alpha, geom, cv, qmax = vterm
            (v,) = species_fourier(geom, np.arange(len(geom.frac)), [SpeciesTerm(layout, cv, alpha, qmax)],
                                   rows, cache_key="bond" if cache else None)
            tot = tot + v * (1.0 - torch.as_tensor((cell.mill[rows if rows is not None else slice(None)] == 0)
                                                   .all(axis=1), dtype=v.real.dtype))
        return tot, mag

    opt = torch.optim.Adam(params, lr=3e-3)
    rows_t = torch.as_tensor(smp.core)
    w = smp.weight[rows_t]
    scale = cell.volume / cell.n_electrons
    t0 = time.time()
    for step in range(steps):
        tot, mag = total(smp.core, True)
        err = (w * (tot - smp.target[rows_t]).abs() ** 2).sum()
        if mag is not None and smp.target_mag is not None:
            err = err + (w * (mag - smp.target_mag[rows_t]).abs() ** 2).sum()
        loss = scale * err
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (steps // 2, 3 * steps // 4):
            for g in opt.param_groups:
                g["lr"] *= 0.3
    with torch.no_grad():
        tot, _ = total(None, False)
        rho = half_to_grid(tot, cell.mill, smp.grid_shape).double().numpy()
    rho = np.maximum(rho, 0)
    rho *= cell.n_electrons / (rho.mean() * cell.volume)
    n_coef = sum(p.numel() for p in params)
    return nmape(rho, smp.true_grid.double().numpy()), n_coef, time.time() - t0, float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ids", nargs="+")
    ap.add_argument("--variants", nargs="+", default=["shipped", "even", "rich", "bond", "rich+bond"])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--q-core", type=float, default=10.0)
    ap.add_argument("--dataset", default="/work/datasets/main")
    args = ap.parse_args()
    shipped = load_model()
    for p in shipped.parameters():
        p.requires_grad_(False)
    models = {
        "shipped": (shipped, False, True),
        "even": (variant_model(shipped, (8, 6, 6, 4, 2), 0.25, 16.0), False, False),
        "rich": (variant_model(shipped, (12, 10, 8, 6, 4, 2), 0.1, 64.0), False, False),
        "bond": (variant_model(shipped, (8, 6, 6, 4, 2), 0.25, 16.0), True, False),
        "rich+bond": (variant_model(shipped, (12, 10, 8, 6, 4, 2), 0.1, 64.0), True, False),
    }
    ds = DensityDataset(args.dataset)
    print(f"q_core {args.q_core} Å⁻¹, {args.steps} Adam steps; grid NMAPE of the best coefficients")
    for rid in args.ids:
        rec = ds[rid]
        if "magmom" in rec.structure.site_properties:
            rec.structure = rec.structure.copy()
            rec.structure.remove_site_property("magmom")
        cells = []
        for name in args.variants:
            model, bond, learned = models[name]
            value, n_coef, secs, loss = fit(model, rec, args.q_core, args.steps, bond, learned)
            cells.append(f"{name} {value:.2f}% ({n_coef} coef, {secs:.0f} s)")
        print(f"{rid} ({len(rec.structure)} atoms): " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
