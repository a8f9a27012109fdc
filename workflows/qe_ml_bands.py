"""A QE band structure whose SCF starts from the ML-predicted density.

Usage::

    python workflows/qe_ml_bands.py [STRUCTURE] [--fast]      # default: workflows/structures/Si.cif

Flow: predict the density -> SCF from it (rerun from atoms if the ML-started run is not
trusted) -> line-mode band structure (pw.x ``calculation='bands'``) on the converged
density. It is what ``mlcharge submit --flow ml-bands`` submits to FireWorks; here it
runs locally with jobflow, one folder per job under ``qe_ml_bands_out/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobflow import Flow, JobStore, run_locally
from maggma.stores import MemoryStore
from pymatgen.core import Structure

from mlcharge_workflows.engines.qe.jobs import QENonSCFMaker
from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.engines.qe.jobs import MLQEStaticMaker, QEPredictDensityMaker
from mlcharge_workflows.engines.qe.sets import default_nbnd

FAST = QEProtocol(ecutwfc_ry=20, ecutrho_ry=160, kspacing=0.5, conv_thr_per_atom=1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structure", nargs="?", type=Path,
                        default=Path(__file__).parent / "structures" / "Si.cif")
    parser.add_argument("--fast", action="store_true", help="low cutoffs (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("qe_ml_bands_out"))
    args = parser.parse_args()
    structure = Structure.from_file(args.structure)
    protocol = FAST if args.fast else QEProtocol()

    predict = QEPredictDensityMaker(protocol=protocol).make(structure)
    scf = MLQEStaticMaker(protocol=protocol).make(structure, prediction=predict.output)
    bands = QENonSCFMaker(mode="line", protocol=protocol, nbnd=default_nbnd(structure)).make(
        structure, scf.output.dir_name)
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    args.out.mkdir(parents=True, exist_ok=True)
    responses = run_locally(Flow([predict, scf, bands]), store=store, create_folders=True,
                            root_dir=args.out, ensure_success=True)

    ml = responses[scf.uuid][1].output
    bs = responses[bands.uuid][1].output
    print(f"SCF: {ml.scf_iterations_total} iterations, ML density used: {ml.ml_density_used}"
          + (f" (fallback: {ml.fallback})" if ml.fallback else ""))
    print(f"bands: {bs.dir_name}")
    if bs.band_gap_eV is not None:
        print(f"band gap on the path: {bs.band_gap_eV:.3f} eV "
              f"(VBM {bs.vbm_eV:.3f} eV, CBM {bs.cbm_eV:.3f} eV)")


if __name__ == "__main__":
    main()
