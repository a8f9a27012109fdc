"""How much a coarser k-point spacing changes the converged density (docs/dataset.md).

Runs pw.x (1 MPI process) on rattled one-atom cells at k-spacings 0.3, 0.45 and 0.6 Å⁻¹
with otherwise the fixed QEProtocol, and prints k-points, CPU time, and the NMAPE of the
total density and the magnetisation against the 0.3 Å⁻¹ run. Takes minutes (Ni at 0.3).

    python benchmarks/data_kspacing.py [Cu Ni ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from mlcharge_workflows.engines.qe.core import read_converged_density, run_qe_scf
from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.training.prototypes import PROTOTYPES, build
from mlcharge_workflows.training.storage import nmape

SPACINGS = (0.3, 0.45, 0.6)


def main(elements: list[str]) -> None:
    warnings.simplefilter("ignore")
    fcc = next(p for p in PROTOTYPES if p.name == "fcc")
    work = Path(tempfile.mkdtemp(prefix="kspacing-"))
    for el in elements:
        s = build(fcc, {"MS": [el]}, np.random.default_rng(0))
        np.random.seed(0)
        s.perturb(0.03)  # off the origin: pw.x keeps few symmetry operations, like the dataset
        grids = {}
        for k in SPACINGS:
            doc = run_qe_scf(s, work / f"{el}-{k}", protocol=QEProtocol(kspacing=k), nprocs=1)
            grids[k] = read_converged_density(work / f"{el}-{k}")
            print(json.dumps({"cell": f"fcc {el}", "kspacing": k, "n_kpoints": doc.n_kpoints,
                              "cpu_s": doc.cpu_time_s, "moment": doc.total_magnetization}))
        ref = grids[SPACINGS[0]]
        for k in SPACINGS[1:]:
            mag = (nmape(grids[k].magnetization, ref.magnetization)
                   if ref.magnetization is not None else None)
            print(json.dumps({"cell": f"fcc {el}", "kspacing": k,
                              "nmape_total_percent": nmape(grids[k].total, ref.total),
                              "nmape_magnetization_percent": mag}))


if __name__ == "__main__":
    main(sys.argv[1:] or ["Cu", "Ni"])
