"""pw.x SCF Makers: one SCF under the protocol, and the SCF started from a prediction.

* :class:`QEStaticMaker` - one pw.x SCF, from atoms or from a density on disk (the
  baseline arm of the comparison, and any restart); QE has no separate ``baseline``
  module: the run from atoms is this Maker with no ``start_density``;
* :class:`MLQEStaticMaker` - the SCF from the prediction (:mod:`.predict`), rerun from
  atoms when it is not trusted (:mod:`mlcharge_workflows.common.fallback`), keeping
  every attempt (the rerun is part of this job, not a Maker of its own as in VASP).

Each job runs in the current working directory, as atomate2's jobs do: give every job its
own folder (``run_locally(..., create_folders=True)`` or a FireWorks launch directory).

>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> atomic = QEStaticMaker().make(si)
>>> restart = QEStaticMaker(name="qe static from density").make(
...     si, start_density=atomic.output.dir_name)
>>> [j.name for j in (atomic, restart)]
['qe static', 'qe static from density']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Maker, job

from mlcharge_workflows.common.documents import get_field
from mlcharge_workflows.common.fallback import PREDICTION_FAILED, FallbackPolicy, run_with_fallback
from mlcharge_workflows.common.schemas import ArmAttempt
from mlcharge_workflows.engines.qe.core import run_qe_scf
from mlcharge_workflows.engines.qe.density import prediction_density
from mlcharge_workflows.engines.qe.schemas import MLStaticDocument, QETaskDocument
from mlcharge_workflows.engines.qe.sets import QEProtocol

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["MLQEStaticMaker", "QEStaticMaker"]


@dataclass
class QEStaticMaker(Maker):
    """One pw.x SCF under the fixed protocol, from atoms or from a density on disk.

    Parameters
    ----------
    name
        Job name.
    protocol
        The comparison protocol (identical in every arm).
    nprocs
        MPI processes; ``None`` uses ``MLCHARGE_QE_NPROCS``.
    expect_density_read
        Fail if a density start was given but pw.x did not read it.
    """

    name: str = "qe static"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    expect_density_read: bool = True

    @job(output_schema=QETaskDocument)
    def make(self, structure: Structure, start_density: str | Path | None = None) -> QETaskDocument:
        """Run the SCF in the job's folder.

        ``start_density`` is ``None`` (atomic superposition) or a path: an earlier QE job's
        ``output.dir_name`` (a reference works), a QE outdir / ``.save`` folder, a
        ``charge-density.dat`` or a CHGCAR for the same cell and species order.
        """
        return run_qe_scf(
            structure,
            Path.cwd(),
            start="atomic" if start_density is None else start_density,
            protocol=self.protocol,
            nprocs=self.nprocs,
            expect_density_read=self.expect_density_read,
            task_label=self.name,
        )


def _attempt(start: str, task: QETaskDocument | None, rejected: str | None) -> ArmAttempt:
    """One SCF attempt of :class:`MLQEStaticMaker` as the record's :class:`ArmAttempt`."""
    if task is None:
        return ArmAttempt(start=start, rejected=rejected)
    iters = task.scf_iterations if task.scf_iterations is not None else len(task.scf_accuracy_Ry)
    wall = (task.elapsed_s or task.wall_time_s or 0.0) + (task.prep_wall_time_s or 0.0)
    return ArmAttempt(
        start=start, scf_iterations=iters, energy_eV=task.energy_eV, converged=task.converged,
        total_magnetization=task.total_magnetization, wall_s=wall, cpu_s=task.cpu_time_s,
        density_read_from_file=task.density_initialised, dir_name=task.dir_name, rejected=rejected,
        scf_accuracy_Ry=list(task.scf_accuracy_Ry),
    )


@dataclass
class MLQEStaticMaker(Maker):
    """SCF started from a predicted density, rerun from atoms when it is not trusted.

    The ML attempt runs in ``ml_start/`` and a rerun in ``atomic_rerun/`` of the job's
    folder. ``reference`` (the baseline's task document, when known) supplies the
    expected energy and magnetisation (:class:`~mlcharge_workflows.common.fallback.FallbackPolicy`).
    """

    name: str = "ml static"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    policy: FallbackPolicy = field(default_factory=FallbackPolicy)

    @job(output_schema=MLStaticDocument)
    def make(
        self, structure: Structure, prediction: Any = None, reference: Any = None
    ) -> MLStaticDocument:
        """Run in the job's folder. ``prediction``: a :class:`PredictionDocument` (or None)."""
        cwd = Path.cwd()
        start = None if prediction is None else prediction_density(prediction)
        skip = get_field(prediction, "fallback") if prediction is not None else f"{PREDICTION_FAILED}: no prediction"
        if start is None and skip is None:
            skip = f"{PREDICTION_FAILED}: the prediction's density is neither on disk nor in the store"

        def run_ml() -> QETaskDocument:
            return run_qe_scf(structure, cwd / "ml_start", start=start, protocol=self.protocol,
                              nprocs=self.nprocs, expect_density_read=False,
                              allow_unconverged=True, task_label=f"{self.name} (ml start)",
                              stall=self.policy.stall_rule())

        def run_atomic() -> QETaskDocument:
            folder = "atomic_rerun" if start is not None else "atomic"
            return run_qe_scf(structure, cwd / folder, protocol=self.protocol, nprocs=self.nprocs,
                              task_label=f"{self.name} (atomic start)")

        pred_m = get_field(prediction, "total_magnetization")
        outcome = run_with_fallback(
            None if start is None else run_ml, run_atomic, len(structure), self.policy,
            reference_energy_eV=get_field(reference, "energy_eV"),
            reference_magnetization=get_field(reference, "total_magnetization"),
            reference_absolute_magnetization=get_field(reference, "absolute_magnetization"),
            predicted_magnetization=pred_m, skip_reason=skip,
        )
        attempts = [_attempt(s, t, r) for s, t, r in outcome.attempts]
        task = outcome.accepted  # None if the rerun from atoms failed too
        iters = [a.scf_iterations for a in attempts if a.scf_iterations is not None]
        return MLStaticDocument(
            dir_name=get_field(task, "dir_name"), task=task, attempts=attempts,
            ml_density_used=outcome.ml_density_used, fallback=outcome.fallback,
            scf_iterations=get_field(task, "scf_iterations"),
            scf_iterations_total=sum(iters) if iters else None,
            wall_s_total=sum(a.wall_s or 0.0 for a in attempts),
            cpu_s_total=sum(a.cpu_s or 0.0 for a in attempts), energy_eV=get_field(task, "energy_eV"),
            converged=False if task is None else task.converged,
            total_magnetization=get_field(task, "total_magnetization"), predicted_magnetization=pred_m,
        )
