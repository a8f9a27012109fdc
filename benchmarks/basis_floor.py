"""Basis floor: per-atom orbital coefficients fitted freely (no network) to a record's density.

Usage::

    QCORE=10 .venv/bin/python benchmarks/basis_floor.py RECORD_ID [RECORD_ID ...]

For each record of /work/datasets/main: the shipped model's orbital basis (its learned
exponents, its atomic superposition) with every atom's coefficients free parameters,
fitted by Adam (4000 steps) to the record's converged density in the training loss (G-space
L2, total and magnetisation, over |G| <= QCORE Å⁻¹; QCORE=1000: every G). Prints the NMAPE
of the network's prediction and of the best coefficients: the floor of the expansion.
"""
import os
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
from mlcharge_workflows.model import load_model
from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.metrics import nmape
from mlcharge_workflows.training.train import TrainConfig, _errors, half_to_grid, prepare_sample

m = load_model()
for p in m.parameters():
    p.requires_grad_(False)
ds = DensityDataset("/work/datasets/main")
cfg = TrainConfig(datasets=["/work/datasets/main"])
ids = sys.argv[1:]
for rid in ids:
    rec = ds[rid]
    s = rec.structure.copy()
    if "magmom" in s.site_properties:
        s.remove_site_property("magmom")
    rec.structure = s
    smp = prepare_sample(m, rec, float(os.environ.get("QCORE", "10")))
    with torch.no_grad():
        c0 = m.orbital_coefficients([smp.cell])[0]
    free = [c.clone().detach().requires_grad_(True) if c is not None else None for c in c0]
    opt = torch.optim.Adam([c for c in free if c is not None], lr=3e-3)
    def grid_nmape(coeffs, smp=smp):
        with torch.no_grad():
            tot, _ = m.fourier(smp.cell, coeffs)
            rho = half_to_grid(tot, smp.cell.mill, smp.grid_shape).double().numpy()
        rho = np.maximum(rho, 0); rho *= smp.cell.n_electrons / (rho.mean() * smp.cell.volume)
        return nmape(rho, smp.true_grid.double().numpy())
    start = grid_nmape(tuple(c0))
    t0 = time.time()
    for step in range(4000):
        g2, _ = _errors(m, smp, tuple(free), cfg, smp.core, True, False)
        opt.zero_grad(); g2.backward(); opt.step()
        if step in (2000, 3000):
            for grp in opt.param_groups: grp["lr"] *= 0.3
    print(f"{rid}: network {start:.2f}% -> free coefficients {grid_nmape(tuple(free)):.2f}%  "
          f"({time.time() - t0:.0f} s, loss {float(g2.detach()):.2e})", flush=True)
