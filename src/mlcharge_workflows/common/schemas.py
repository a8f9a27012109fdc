"""The savings record: the public output of ``mlcharge compare`` and of the comparison flows.

One record per structure. The record format is a public interface (documented in
``docs/compare.md``); every engine (``engines/qe``, ``engines/vasp``) emits it and
``mlcharge report`` reads it. ``null`` marks an arm that was not run. The prediction
document (:class:`PredictionDocument`) is the output of both engines' prediction job.

>>> get_field({"output": {"energy": -1.5}}, "output", "energy")
-1.5
>>> rec = SavingsRecord(structure="Si.cif", engine="qe")
>>> sorted(rec.record())[:3]
['band_gap_eV', 'energy_eV', 'engine']
>>> rec.record()["scf_iterations"]
{'baseline': None, 'ml': None, 'oracle': None}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from mlcharge_workflows.density.grid import DensityGrid

#: Version of the public record format; bump only with a documented, compatible change.
RECORD_FORMAT_VERSION = 1

#: Top-level keys of the public record, in their documented order.
RECORD_KEYS: tuple[str, ...] = (
    "structure",
    "formula",
    "n_atoms",
    "engine",
    "scf_iterations",
    "energy_eV",
    "wall_s",
    "ml_density_used",
    "fallback",
    "band_gap_eV",
    "error",
    "scf_iterations_by_threshold",
)


def get_field(obj: Any, *path: str) -> Any:
    """Nested attribute-or-key access; None when anything on the way is missing.

    Arm outputs reach the savings document as models (local runs) or as dicts
    (FireWorks, stored documents): this reads both.
    """
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


class _Arms(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SCFIterations(_Arms):
    """SCF iterations per arm (the ML arm counts every attempt it paid for, fallback included)."""

    baseline: int | None = Field(None, description="SCF iterations from the atomic start.")
    ml: int | None = Field(None, description="SCF iterations of the ML arm (all attempts).")
    oracle: int | None = Field(None, description="SCF iterations from the converged density.")


class Energies(_Arms):
    """Final total energies (eV) of the baseline and ML arms."""

    baseline: float | None = None
    ml: float | None = None


class WallTimes(_Arms):
    """Wall times in seconds: the DFT arms and the density prediction."""

    baseline: float | None = None
    ml: float | None = Field(None, description="DFT wall time of the ML arm (all attempts).")
    predict: float | None = Field(None, description="Density prediction, file writing included.")


class BandGaps(_Arms):
    """Band gaps (eV) of the NSCF check; all non-SCF runs use identical settings."""

    scf: float | None = Field(None, description="NSCF on the converged SCF density (reference).")
    nscf_ml: float | None = Field(None, description="NSCF straight from the predicted density.")
    nscf_atomic: float | None = Field(None, description="NSCF on the atomic superposition.")


class SavingsRecord(BaseModel):
    """The public per-structure comparison record (see ``docs/compare.md``).

    Unknown keys are ignored on reading, so stored documents (which carry ``details``)
    and records written by later compatible versions validate.
    """

    model_config = ConfigDict(extra="ignore")

    structure: str = Field(..., description="Label of the input (file path or id).")
    formula: str | None = Field(None, description="Reduced formula.")
    n_atoms: int | None = None
    engine: Literal["qe", "vasp"]
    scf_iterations: SCFIterations = Field(default_factory=SCFIterations)
    energy_eV: Energies = Field(default_factory=Energies)
    wall_s: WallTimes = Field(default_factory=WallTimes)
    ml_density_used: bool | None = Field(
        None,
        description="True only if the accepted ML-arm run verifiably read the predicted density.",
    )
    fallback: str | None = Field(
        None, description="Why the ML arm ran (or reran) from atoms; null if it did not."
    )
    band_gap_eV: BandGaps = Field(default_factory=BandGaps)
    error: str | None = Field(None, description="What failed; other fields hold what finished.")
    scf_iterations_by_threshold: dict[str, SCFIterations] = Field(
        default_factory=dict,
        description="Per threshold of mlcharge_workflows.convergence.THRESHOLDS: the iterations "
        "each arm needed to reach it, read from its own accuracy history (ML arm: every "
        "rejected attempt in full plus the accepted run to the threshold). Empty when the "
        "engine keeps no history.",
    )

    def record(self) -> dict[str, Any]:
        """The public record: exactly :data:`RECORD_KEYS`, JSON-ready."""
        data = self.model_dump(mode="json")
        return {key: data[key] for key in RECORD_KEYS}

    @property
    def iteration_saving(self) -> float | None:
        """Fraction of SCF iterations saved by the ML arm, ``1 - ml / baseline``."""
        base, ml = self.scf_iterations.baseline, self.scf_iterations.ml
        if base is None or ml is None or base <= 0:
            return None
        return 1.0 - ml / base

    @property
    def oracle_saving(self) -> float | None:
        """Fraction saved by the converged-density start (the ceiling), ``1 - oracle / baseline``."""
        base, orc = self.scf_iterations.baseline, self.scf_iterations.oracle
        if base is None or orc is None or base <= 0:
            return None
        return 1.0 - orc / base

    @property
    def wall_saving(self) -> float | None:
        """Fraction of wall time saved, prediction included: ``1 - (ml + predict) / baseline``."""
        w = self.wall_s
        if w.baseline is None or w.ml is None or w.baseline <= 0:
            return None
        return 1.0 - (w.ml + (w.predict or 0.0)) / w.baseline

    @property
    def energy_difference_eV(self) -> float | None:
        """``E_ml - E_baseline`` in eV."""
        e = self.energy_eV
        if e.baseline is None or e.ml is None:
            return None
        return e.ml - e.baseline


class ArmAttempt(BaseModel):
    """One SCF run of the ML arm (the ML-started attempt, or the rerun from atoms)."""

    start: Literal["ml", "atomic"]
    scf_iterations: int | None = None
    energy_eV: float | None = None
    converged: bool | None = None
    total_magnetization: float | None = Field(None, description="μB per cell.")
    wall_s: float | None = None
    cpu_s: float | None = Field(None, description="pw.x's own CPU time of the run.")
    density_read_from_file: bool | None = None
    start_evidence: str | None = Field(
        None, description="What the engine's own output says about the start (VASP: the "
        "OUTCAR/stdout lines, or 'unverified: ...' when there are none).")
    dir_name: str | None = None
    rejected: str | None = Field(None, description="Why this run was not accepted.")
    scf_accuracy_Ry: list[float] = Field(
        default_factory=list, description="Estimated SCF accuracy after each iteration (Ry per cell)."
    )


class SavingsDetails(BaseModel):
    """What the store keeps beyond the public record (not part of the stable format)."""

    model_config = ConfigDict(extra="allow")

    record_format_version: int = RECORD_FORMAT_VERSION
    converged: dict[str, bool | None] = Field(
        default_factory=dict, description="Per arm: did the accepted run converge."
    )
    total_magnetization: dict[str, float | None] = Field(
        default_factory=dict, description="Per arm and 'predicted': μB per cell."
    )
    ml_attempts: list[ArmAttempt] = Field(default_factory=list)
    model_version: str | None = None
    nelmdl: int | None = Field(None, description="VASP: non-SCF steps at the start of each arm.")
    protocol: dict[str, Any] | None = Field(None, description="Engine settings shared by all arms.")
    energy_oracle_eV: float | None = Field(None, description="Final energy of the oracle arm.")
    energy_check: dict[str, Any] | None = Field(
        None, description="Whether the ML and oracle arms ended at the baseline's energy "
        "(mlcharge_workflows.convergence.energy_agreement): tolerance_eV, differences_eV per "
        "arm, verdict 'agree' | 'baseline_higher' (the run from atoms converged to a "
        "higher-energy solution) | 'baseline_lower' | 'mixed'.")
    nprocs: int | None = Field(None, description="MPI processes of every DFT run (all arms alike).")
    dir_names: dict[str, str | None] = Field(default_factory=dict)
    input_structure: dict[str, Any] | None = Field(None, description="pymatgen Structure dict.")
    prediction_reference: dict[str, Any] | None = Field(
        None, description="The prediction's atomic reference (per element source, and "
        "'differs_from_training' when the run's pseudopotentials are not the training ones).")
    partial_start: list[str] | None = Field(
        None, description="Elements the model does not know that got their reference density only.")


class SavingsDocument(SavingsRecord):
    """The savings document kept in the jobflow store: the record plus :class:`SavingsDetails`."""

    details: SavingsDetails = Field(default_factory=SavingsDetails)


def error_record(structure: str, engine: str, error: str, **fields: Any) -> SavingsDocument:
    """A document for a structure whose comparison failed; ``fields`` keeps what is known."""
    return SavingsDocument(structure=structure, engine=engine, error=error, **fields)


def missing_arms(
    arms: dict[str, Any], requested: dict[str, bool], prediction_skipped: bool = False
) -> list[str]:
    """Requested arms that produced no output (None), in the order of ``arms``.

    With ``prediction_skipped`` (no predicted density: failure or fallback) the ML
    non-SCF arm is skipped on purpose and not reported as missing.
    """
    missing = [name for name, out in arms.items() if out is None and requested.get(name, False)]
    if prediction_skipped and "nscf_ml" in missing:
        missing.remove("nscf_ml")
    return missing


def _grid_or_legacy(value: Any) -> Any:
    """Grids stored before :class:`DensityGrid` was MSONable (float lists, no ``@class``)."""
    if isinstance(value, dict) and "@class" not in value and "structure" in value:
        return DensityGrid.from_dict(value)
    return value


class PredictionDocument(BaseModel):
    """Output of an engine's prediction job (the grid itself goes to the ``data`` store).

    Both engines fill the same fields; ``path`` is None when there is no ML start, and
    ``fallback`` (or ``error``) says why. Engines add their own fields in subclasses.
    """

    model_config = ConfigDict(populate_by_name=True)

    dir_name: str
    path: str | None = Field(None, description="The written start density (None: no prediction).")
    formula: str | None = None
    n_atoms: int | None = None
    n_electrons: float | None = Field(
        None, description="Integral of the prediction before normalisation (e).",
        validation_alias=AliasChoices("n_electrons", "n_electrons_predicted"),
    )
    total_magnetization: float | None = Field(None, description="μB per cell; None if not spin-polarised.")
    grid_shape: list[int] | None = None
    predict_wall_s: float | None = Field(None, description="Inference and file writing (s).")
    predict_cpu_s: float | None = Field(None, description="CPU time of the same (all threads).")
    model_load_s: float | None = Field(
        None, description="Importing torch and loading the weights (s); 0 when cached in the process."
    )
    model_version: str | None = None
    fallback: str | None = Field(None, description="Why the prediction is not used as an ML start.")
    error: str | None = Field(None, description="Why no density was predicted (the job did not fail).")
    density: Annotated[DensityGrid | dict[str, Any] | None, BeforeValidator(_grid_or_legacy)] = Field(
        None, description="The predicted grid (kept in the data store; a DensityGrid).")
    reference: dict[str, Any] | None = Field(
        None, description="Where the atomic reference came from, per element, and "
        "'differs_from_training' (the run's pseudopotentials are not the training ones).")
    pseudopotentials: dict[str, dict] | None = Field(
        None, description="Element -> the file the start density was built on (name, md5, origin).")
    partial_start: list[str] | None = Field(
        None, description="Elements the model does not know, given their reference density only "
        "(the known atoms keep their learned deformation).")

    @property
    def n_electrons_predicted(self) -> float | None:
        """Old name of :attr:`n_electrons` (VASP documents before the common schema)."""
        return self.n_electrons
