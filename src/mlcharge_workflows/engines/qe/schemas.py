"""Documents of the QE jobs (eV, s, μB per cell). Densities stay on disk in ``dir_name``.

* :class:`QETaskDocument` - one pw.x run;
* :class:`MLStaticDocument` - the ML-started SCF arm: the accepted run and every attempt;
* the prediction job's output is the engine-neutral
  :class:`~mlcharge_workflows.common.schemas.PredictionDocument`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_serializer
from pymatgen.core import Structure

from mlcharge_workflows.common.schemas import ArmAttempt, PredictionDocument
from mlcharge_workflows.engines.qe.sets import QEProtocol

__all__ = ["MLStaticDocument", "PredictionDocument", "QETaskDocument"]


class QETaskDocument(BaseModel):
    """One pw.x run: what was asked, what pw.x did, and where the files are.

    ``start`` is what was requested; ``density_read_from_file`` is what pw.x printed.
    A run counts as density-initialised only if both say so (:attr:`density_initialised`).
    """

    task_label: str = Field("qe scf", description="Name of the job or task.")
    dir_name: str = Field(..., description="Run folder (holds pw.in, pw.out, out/<prefix>.save).")
    structure: Structure
    formula: str
    calculation: Literal["scf", "nscf", "bands"] = "scf"
    start: Literal["atomic", "file"] = Field(..., description="Requested starting density.")
    start_source: str | None = Field(
        None, description="Where the starting density came from (path or grid provenance)."
    )
    start_density_file: str | None = Field(
        None, description="Copy of the charge-density.dat given to pw.x (pw.x overwrites its own)."
    )
    start_n_electrons: float | None = Field(
        None, description="Electron count of the start density before normalisation."
    )
    density_read_from_file: bool = Field(
        False, description="pw.x printed 'The initial density is read from file'."
    )
    density_file_missing: bool = Field(False, description="pw.x printed 'Cannot read rho'.")
    converged: bool = False
    scf_iterations: int | None = Field(None, description="SCF iterations to convergence.")
    stalled_at: int | None = Field(
        None, description="Iteration at which the SCF was stopped as stalled (a StallRule); "
        "None if it was not stopped early.",
    )
    stall_reason: str | None = Field(None, description="Why the SCF was stopped as stalled.")
    energy_eV: float | None = Field(None, description="Total (free) energy, eV.")
    fermi_energy_eV: float | None = None
    band_gap_eV: float | None = Field(None, description="From the eigenvalues and electron count.")
    vbm_eV: float | None = None
    cbm_eV: float | None = None
    total_magnetization: float | None = Field(None, description="μB per cell.")
    absolute_magnetization: float | None = Field(None, description="μB per cell.")
    wall_time_s: float | None = Field(None, description="pw.x wall time of the run itself.")
    cpu_time_s: float | None = None
    elapsed_s: float | None = Field(
        None, description="Wall time of the whole pw.x command, MPI start-up included."
    )
    prep_wall_time_s: float | None = Field(
        None, description="Wall time of the zero-step dry run that fixed the G order, if any."
    )
    g_order_source: str | None = Field(
        None,
        description="G order of a start density: 'computed' from the cell, 'dry run' (pw.x's "
        "own, for cells whose |G|² shells nearly tie at QE's 1e-8) or 'dry run after mismatch'.",
    )
    start_file_as_is: bool | None = Field(
        None, description="The start density file went to pw.x as given (already in its G order "
        "and electron count, e.g. the prediction job's), not rewritten.")
    scf_accuracy_Ry: list[float] = Field(default_factory=list)
    n_electrons: float | None = None
    nspin: int = 1
    n_kpoints: int | None = None
    n_symmetry_ops: int | None = None
    nprocs: int | None = None
    ecutwfc_ry: float
    ecutrho_ry: float
    kpoints: list = Field(default_factory=list, description="MP divisions or crystal_b entries.")
    protocol: QEProtocol
    pseudopotentials: dict[str, dict] = Field(
        default_factory=dict,
        description="Element -> the UPF file the run used: filename, source path, md5, kind, "
        "z_valence, origin ('registry' or 'user').",
    )
    pw_version: str | None = None
    eigenvalues_eV: list[list[list[float]]] | None = Field(
        None, description="(nspin, nk, nbnd) for nscf/bands runs."
    )
    kpoints_cart: list[list[float]] | None = Field(None, description="nscf/bands k, 2π/alat.")
    warnings: list[str] = Field(default_factory=list)

    @field_serializer("structure", when_used="json")
    def _structure_json(self, structure: Structure) -> dict:
        return structure.as_dict()

    @property
    def density_initialised(self) -> bool:
        """Whether pw.x really started from the given density."""
        return self.start == "file" and self.density_read_from_file

    def summary(self) -> dict:
        """The numbers a user looks at first (what ``mlcharge scf`` prints)."""
        return {
            "dir_name": self.dir_name,
            "formula": self.formula,
            "start": self.start,
            "start_source": self.start_source,
            "density_read_from_file": self.density_read_from_file,
            "density_initialised": self.density_initialised,
            "converged": self.converged,
            "scf_iterations": self.scf_iterations,
            "energy_eV": self.energy_eV,
            "wall_time_s": self.wall_time_s,
            "total_magnetization": self.total_magnetization,
            "absolute_magnetization": self.absolute_magnetization,
            "band_gap_eV": self.band_gap_eV,
        }


class MLStaticDocument(BaseModel):
    """Output of :class:`~mlcharge_workflows.engines.qe.jobs.MLQEStaticMaker`."""

    dir_name: str | None = Field(None, description="Folder of the accepted run.")
    task: QETaskDocument | None = Field(None, description="The accepted run.")
    attempts: list[ArmAttempt] = Field(default_factory=list)
    ml_density_used: bool = Field(False, description="The accepted run read the predicted density.")
    fallback: str | None = None
    scf_iterations: int | None = Field(None, description="Accepted run's iterations.")
    scf_iterations_total: int | None = Field(None, description="All attempts (the arm's cost).")
    wall_s_total: float | None = Field(None, description="All attempts, density placement included.")
    cpu_s_total: float | None = Field(None, description="pw.x CPU time of all attempts.")
    energy_eV: float | None = None
    converged: bool | None = None
    total_magnetization: float | None = None
    predicted_magnetization: float | None = None
