"""VASP through atomate2: ML-started static and non-SCF makers, custodian fallback, SCF parsing.

Modules (imported on use; atomate2 and custodian are the ``vasp`` extra):

* :mod:`.jobs` - every Maker, re-exported from its module: :mod:`.predict`
  (``MLDensityMaker``), :mod:`.static` (``MLStaticMaker``), :mod:`.baseline`
  (``BaselineStaticMaker``, ``MLFallbackStaticMaker``, ``OccupancyDonorMaker``),
  :mod:`.nscf` (``MLNonSCFMaker``,
  ``AtomicNonSCFMaker``); :mod:`.base` - what the run Makers share
* :mod:`.flows` - ``VaspComparisonMaker`` (baseline / ML / oracle arms, NSCF check) and
  ``VaspArmReader`` (how the savings document reads TaskDocs)
* :mod:`.schemas` - ``MLDensityDocument`` (the common prediction document plus NELECT)
* :mod:`.handlers` - ``MLStartFallbackHandler``, ``MLStartStallHandler`` (custodian)
* :mod:`.density` - predict a density for an input set (CHGCAR on the run's POTCARs)
* :mod:`.placement` - check a CHGCAR and place it in a run folder
* :mod:`.sets` - input-set structure, fine grid, NELECT (POTCAR ZVAL table)
* :mod:`.parse` - SCF steps from vasprun.xml / OSZICAR, wall times, custodian attempts,
  whether VASP read the supplied CHGCAR (OUTCAR / stdout: ``read_start_evidence``)

See docs/vasp-guide.md.
"""

from __future__ import annotations

_EXPORTS = {
    "MLDensityMaker": "jobs",
    "MLDensityDocument": "schemas",
    "MLStaticMaker": "jobs",
    "MLNonSCFMaker": "jobs",
    "BaselineStaticMaker": "jobs",
    "OccupancyDonorMaker": "jobs",
    "AtomicNonSCFMaker": "jobs",
    "VaspComparisonMaker": "flows",
    "VaspArmReader": "flows",
    "MLStartFallbackHandler": "handlers",
    "MLStartStallHandler": "handlers",
    "parse_vasp_scf": "parse",
    "count_attempts": "parse",
    "read_start_evidence": "parse",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
