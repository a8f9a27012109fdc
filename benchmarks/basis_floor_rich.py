"""Basis floor of richer expansions: free coefficients fitted to one record, per basis variant.

Usage::

    .venv/bin/python benchmarks/basis_floor_rich.py RECORD_ID [...] [--variants shipped fit even wide rich rich+h dense bond rich+bond]
        [--dataset /work/datasets/main]

Like benchmarks/basis_floor.py (no network: every coefficient is a free parameter), but
solved exactly: the training loss (G-space L2 of total and magnetisation, G = 0 being
fixed by the normalisation) is quadratic in the coefficients, so the best ones are a
linear least-squares solution, here over every G of the record's sphere (an orbital
fitted on |G| <= 10 Å⁻¹ alone is free to put anything beyond it). Several expansions side
by side, all on the shipped model's atomic superposition:

* ``shipped``: the shipped network's own prediction (for reference, not a fit).
* ``fit``: the shipped orbitals and learned exponents (8 s, 6 p, 6 d, 4 f, 2 g), best coefficients.
* ``even``: the same numbers of orbitals with even-tempered exponents 0.25..16 Å⁻² (the
  untrained default), to separate the effect of learned exponents.
* ``wide``: as ``even`` but spread over 0.1..64 Å⁻² (capped per species at the density
  cutoff, as in the model): tighter and more diffuse functions, wider spacing.
* ``rich``: 12 s, 10 p, 8 d, 6 f, 4 g even-tempered 0.25..16 Å⁻² (denser spacing);
  ``rich+h`` adds 2 h (l = 5); ``dense``: 16 s, 14 p, 12 d, 8 f, 6 g.
* ``bond``: ``even`` plus bond-centred "virtual" orbitals (SCDP's idea): 4 s, 3 p, 2 d
  Gaussians (0.4..6 Å⁻²) at the midpoint of every pair of atoms closer than 1.2 times the
  shorter of their two nearest-neighbour distances.
* ``rich+bond``: both.

Prints the grid NMAPE (clipped, renormalised, the metric of docs/benchmarks.md) of each fit,
its training loss (``∫|Δρ|² + |Δm|² dr / N``, the quantity `mlcharge train` reports as
train_loss) and the number of coefficients. Hand-written: the bond-centre placement
(pymatgen neighbours) and the explicit design matrix (``training.quadratic.design_columns``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

torch.set_num_threads(1)

from mlcharge_workflows.model import load_model
from mlcharge_workflows.model.basis import (
    OrbitalLayout,
    ReciprocalGeometry,
    even_tempered,
    q_cutoff,
)
from mlcharge_workflows.model.core import DensityModel, ModelConfig
from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.metrics import nmape
from mlcharge_workflows.training.quadratic import design_columns
from mlcharge_workflows.training.train import half_to_grid, prepare_sample

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


def _design(geom, centres, layout, alpha, q_max, rows) -> np.ndarray:
    """Columns ``phi_o(G) exp(-iG·R_c) / V`` for every centre and orbital, at ``rows`` (complex)."""
    re, im = design_columns(geom, np.asarray(centres), np.asarray(rows), layout, alpha, q_max)
    return re.double().numpy() + 1j * im.double().numpy()


def fit(model, rec, bond: bool, learned: bool):
    """Least-squares coefficients over every G of the record (exact for the quadratic loss),
    or the network's prediction with ``learned``."""
    smp = prepare_sample(model, rec, 1e9)
    cell = smp.cell
    n = len(cell.species)
    rows = np.flatnonzero(np.any(cell.mill != 0, axis=1))  # G = 0 is fixed to N / V
    w = np.sqrt(smp.weight.double().numpy()[rows])
    zero = (torch.zeros(n, model.layout.dim), torch.zeros(n, model.mag_layout.dim))
    with torch.no_grad():
        sad_tot, sad_mag = model.fourier(cell, zero)
    qmax = model.species_qmax()
    centre_sets = []  # (geometry, centre indices, layout, alpha, q_max, target key)
    for sp in np.unique(cell.species):
        sel = np.flatnonzero(cell.species == sp)
        a = model.alphas(False)[sp].detach()
        centre_sets.append((cell.geom, sel, model.layout, a, min(q_cutoff(float(a.max()), model.layout.lmax), qmax[sp]), "tot"))
        if cell.spin and model.mag_layout.n_radial:
            am = model.alphas(True)[sp].detach()
            centre_sets.append((cell.geom, sel, model.mag_layout, am,
                                min(q_cutoff(float(am.max()), model.mag_layout.lmax), qmax[sp]), "mag"))
    n_bond = 0
    if bond:
        mids = bond_centres(rec.structure)
        n_bond = len(mids)
        layout = OrbitalLayout(BOND_MULS)
        alpha = torch.as_tensor(np.concatenate([even_tempered(m, *BOND_ALPHA) for m in BOND_MULS]), dtype=torch.float32)
        geom = ReciprocalGeometry(cell.lattice, mids, cell.mill, layout.lmax)
        centre_sets.append((geom, np.arange(n_bond), layout, alpha, q_cutoff(BOND_ALPHA[1], layout.lmax), "tot"))
    scale = cell.volume / cell.n_electrons
    loss = 0.0
    if learned:
        with torch.no_grad():
            tot, mag = model.fourier(cell)
        for pred, target in ((tot, smp.target), (mag, smp.target_mag)):
            if pred is not None and target is not None:
                d = (pred - target).numpy()[rows]
                loss += scale * float(np.sum(w**2 * np.abs(d) ** 2))
    else:
        tot = sad_tot.detach().numpy().astype(complex).copy()
        n_coef = 0
        for key, target, base in (("tot", smp.target, sad_tot), ("mag", smp.target_mag, sad_mag)):
            sets = [c for c in centre_sets if c[5] == key]
            if not sets or target is None:
                continue
            a_mat = np.concatenate([_design(g, c, lay, al, qm, rows) for g, c, lay, al, qm, _ in sets], axis=1)
            r = (target - base).detach().numpy().astype(complex)[rows]
            m_mat = np.concatenate([w[:, None] * a_mat.real, w[:, None] * a_mat.imag])
            b = np.concatenate([w * r.real, w * r.imag])
            # columns scaled to unit norm; rcond 1e-6 drops only near-dependent combinations (no
            # solution of huge cancelling coefficients that a float32 model could not represent)
            norm = np.linalg.norm(m_mat, axis=0)
            norm[norm == 0] = 1.0
            x, *_ = np.linalg.lstsq(m_mat / norm, b, rcond=1e-6)
            x = x / norm
            n_coef += len(x)
            loss += scale * float(np.sum((m_mat @ x - b) ** 2))
            if key == "tot":
                tot[rows] += a_mat @ x
        tot = torch.as_tensor(tot)
    rho = half_to_grid(tot, cell.mill, smp.grid_shape).double().numpy()
    rho = np.maximum(rho, 0)
    rho *= cell.n_electrons / (rho.mean() * cell.volume)
    n_coef = 0 if learned else n_coef
    return nmape(rho, smp.true_grid.double().numpy()), n_coef, n_bond, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ids", nargs="+")
    ap.add_argument("--variants", nargs="+", default=["shipped", "fit", "even", "wide", "rich", "rich+h", "dense", "bond", "rich+bond"])
    ap.add_argument("--dataset", default="/work/datasets/main")
    args = ap.parse_args()
    shipped = load_model()
    for p in shipped.parameters():
        p.requires_grad_(False)
    models = {
        "shipped": (shipped, False, True),
        "fit": (shipped, False, False),
        "even": (variant_model(shipped, (8, 6, 6, 4, 2), 0.25, 16.0), False, False),
        "wide": (variant_model(shipped, (8, 6, 6, 4, 2), 0.1, 64.0), False, False),
        "rich": (variant_model(shipped, (12, 10, 8, 6, 4), 0.25, 16.0), False, False),
        "rich+h": (variant_model(shipped, (12, 10, 8, 6, 4, 2), 0.25, 16.0), False, False),
        "dense": (variant_model(shipped, (16, 14, 12, 8, 6), 0.25, 16.0), False, False),
        "bond": (variant_model(shipped, (8, 6, 6, 4, 2), 0.25, 16.0), True, False),
        "rich+bond": (variant_model(shipped, (12, 10, 8, 6, 4), 0.25, 16.0), True, False),
    }
    ds = DensityDataset(args.dataset)
    print("least squares over every G of the record; grid NMAPE of the best coefficients "
          "(shipped: the network's own prediction)")
    for rid in args.ids:
        rec = ds[rid]
        if "magmom" in rec.structure.site_properties:
            rec.structure = rec.structure.copy()
            rec.structure.remove_site_property("magmom")
        cells = []
        for name in args.variants:
            model, bond, learned = models[name]
            t0 = time.time()
            value, n_coef, n_bond, loss = fit(model, rec, bond, learned)
            extra = f", {n_bond} bonds" if bond else ""
            cells.append(f"{name} {value:.2f}% L2 {loss:.1e} ({n_coef} coef{extra}, {time.time() - t0:.0f} s)")
        print(f"{rid} ({len(rec.structure)} atoms): " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
