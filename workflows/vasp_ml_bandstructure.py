"""Band structure with atomate2, the static SCF started from the ML density (needs VASP).

Usage (on a machine with VASP, POTCARs and atomate2 configured)::

    python workflows/vasp_ml_bandstructure.py workflows/structures/SiC.cif [--compare]

* default: atomate2's ``BandStructureMaker`` with ``MLStaticMaker`` as its static maker:
  predict density -> static SCF from it (ICHARG=1, fallback handler) -> line + uniform
  non-SCF from the converged CHGCAR. Runs locally with jobflow.
* ``--compare``: the baseline/ML/oracle comparison with the NSCF gap check; prints the
  savings record (the same format as ``mlcharge compare``).

To run on FireWorks, with the prediction on a GPU worker::

    from jobflow.managers.fireworks import flow_to_workflow
    flow.update_config({"manager_config": {"_fworker": "gpu"}}, name_filter="predict density")
    launchpad.add_wf(flow_to_workflow(flow, store=store))
"""

from __future__ import annotations

import argparse
import json

from atomate2.vasp.flows.core import BandStructureMaker
from jobflow import JobStore, run_locally
from maggma.stores import MemoryStore
from pymatgen.core import Structure

from mlcharge_workflows.engines.vasp.flows import VaspComparisonMaker
from mlcharge_workflows.engines.vasp.jobs import MLStaticMaker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structure", help="structure file (CIF, POSCAR, ...)")
    parser.add_argument("--compare", action="store_true", help="baseline vs ML comparison")
    args = parser.parse_args()
    structure = Structure.from_file(args.structure)

    if args.compare:
        flow = VaspComparisonMaker(oracle=True, nscf=True).make(structure, label=args.structure)
    else:
        flow = BandStructureMaker(static_maker=MLStaticMaker()).make(structure)

    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    responses = run_locally(flow, create_folders=True, ensure_success=True, store=store)
    if args.compare:
        print(json.dumps(responses[flow.output.uuid][1].output.record(), indent=2))
    else:
        for uuid, by_index in responses.items():
            out = by_index[max(by_index)].output
            if hasattr(out, "additional_json") and "ml_start" in (out.additional_json or {}):
                print("ML start:", json.dumps(out.additional_json["ml_start"]["status"]))
            if hasattr(out, "output") and getattr(out.output, "bandgap", None) is not None:
                print(f"{out.task_label}: band gap {out.output.bandgap:.3f} eV")


if __name__ == "__main__":
    main()
