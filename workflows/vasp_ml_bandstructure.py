"""Band structure with atomate2, the static SCF started from the ML density (needs VASP).

Usage (on a machine with VASP, POTCARs and atomate2 configured)::

    python workflows/vasp_ml_bandstructure.py workflows/structures/SiC.cif [--compare]

* default: atomate2's ``BandStructureMaker`` with ``MLStaticMaker`` as its static maker:
  predict density -> static SCF from it (ICHARG=1, fallback handler) -> line + uniform
  non-SCF from the converged CHGCAR. Runs locally with jobflow.
* ``--compare``: the baseline/ML/oracle comparison with the NSCF gap check; prints the
  savings record (the same format as ``mlcharge compare``).

To run on FireWorks, with the prediction on a GPU worker (``--fireworks``; or
``mlcharge submit --engine vasp --flow ml-bands --ml-fworker gpu``)::

    wf = gpu_routed_workflow(structure)   # the predict job's firework asks for _fworker gpu
    launchpad.add_wf(wf)

The prediction is its own job here (predict -> ML static -> line-mode bands), so its
``manager_config`` is set on the built flow. With atomate2's ``BandStructureMaker`` and the
default ``MLStaticMaker()`` the prediction job only appears at run time (the static replaces
itself by predict + static), so a ``name_filter="predict density"`` on the built flow would
find nothing to route.
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


def gpu_routed_workflow(structure: Structure, fworker: str = "gpu"):
    """FireWorks workflow predict -> ML static -> bands, the prediction routed to ``fworker``
    (its firework's ``spec['_fworker']``; the VASP jobs go to any worker)."""
    from jobflow.managers.fireworks import flow_to_workflow

    from mlcharge_workflows.catalogue import build_flow

    flow = build_flow(structure, "vasp", "ml-bands", structure.composition.reduced_formula,
                      ml_fworker=fworker)
    return flow_to_workflow(flow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structure", help="structure file (CIF, POSCAR, ...)")
    parser.add_argument("--compare", action="store_true", help="baseline vs ML comparison")
    parser.add_argument("--fireworks", action="store_true", help="add the GPU-routed workflow to "
                        "the LaunchPad of LAUNCHPAD_LOC / my_launchpad.yaml instead of running")
    args = parser.parse_args()
    structure = Structure.from_file(args.structure)
    if args.fireworks:
        from fireworks import LaunchPad

        print(LaunchPad.auto_load().add_wf(gpu_routed_workflow(structure)))
        return

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
