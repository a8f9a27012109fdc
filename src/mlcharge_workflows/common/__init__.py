"""Engine-neutral layer: what every engine's comparison shares.

* :mod:`.schemas` - the public savings record, the savings document, the prediction
  document (light to import: pydantic only);
* :mod:`.fallback` - when an ML-started SCF is rerun from atoms;
* :mod:`.documents` - the savings document job and the :class:`ArmReader` interface;
* :mod:`.flows` - :class:`BaseComparisonMaker`, subclassed by each engine;
* :mod:`.store` - running a flow locally, copying and reading its documents.

This layer imports no engine: ``engines/qe`` and ``engines/vasp`` build on it.
"""
