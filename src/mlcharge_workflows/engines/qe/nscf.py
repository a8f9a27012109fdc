"""pw.x non-SCF Makers: bands (line) or a uniform nscf (DOS) from a density, no SCF.

* :class:`QENonSCFMaker` - from a density on disk (an earlier SCF's folder, a file);
* :class:`MLQENonSCFMaker` - straight from the prediction (:mod:`.predict`), skipping
  the SCF;
* :class:`QEAtomicNonSCFMaker` - the same from the superposition of atomic densities,
  the control of the NSCF check.

Each job runs in the current working directory, as atomate2's jobs do.

>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> bands = QENonSCFMaker(mode="line").make(si, "scf_folder")
>>> control = QEAtomicNonSCFMaker(mode="uniform").make(si)
>>> [j.name for j in (bands, control)]
['qe non-scf', 'atomic non-scf']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobflow import Maker, job

from mlcharge_workflows.common.documents import get_field
from mlcharge_workflows.density.qe_gvectors import qe_fft_grid
from mlcharge_workflows.density.sad import superposition_density
from mlcharge_workflows.engines.qe.core import run_qe_nscf
from mlcharge_workflows.engines.qe.density import prediction_density
from mlcharge_workflows.engines.qe.schemas import QETaskDocument
from mlcharge_workflows.engines.qe.sets import QEProtocol, default_nbnd
from mlcharge_workflows.pseudo import structure_elements

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["MLQENonSCFMaker", "QEAtomicNonSCFMaker", "QENonSCFMaker"]


@dataclass
class QENonSCFMaker(Maker):
    """Non-SCF pw.x run from a density: line-mode bands or a uniform mesh (for DOS).

    Parameters
    ----------
    mode
        ``"line"`` (high-symmetry path, ``calculation='bands'``) or ``"uniform"``
        (``calculation='nscf'`` on the protocol's ``nscf_kspacing`` mesh).
    nbnd
        Number of bands; ``None`` keeps pw.x's default.
    """

    name: str = "qe non-scf"
    mode: Literal["line", "uniform"] = "line"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    nbnd: int | None = None

    @job(output_schema=QETaskDocument)
    def make(self, structure: Structure, density_dir: str | Path) -> QETaskDocument:
        """Run in the job's folder from ``density_dir`` (any path ``run_qe_scf`` accepts)."""
        return run_qe_nscf(
            structure,
            Path.cwd(),
            density_dir,
            mode=self.mode,
            protocol=self.protocol,
            nprocs=self.nprocs,
            nbnd=self.nbnd,
            task_label=f"{self.name} {self.mode}",
        )


@dataclass
class MLQENonSCFMaker(Maker):
    """Bands (``mode='line'``) or uniform nscf (``'uniform'``, for DOS) from a predicted density.

    ``nbnd`` None: ``ceil(0.6 nelec) + 4`` bands, enough to see the gap in every protocol.
    ``skip_without_prediction``: return None (instead of raising ``ValueError``) when the
    prediction fell back (e.g. unsupported elements), as the comparison flow wants.
    """

    name: str = "ml non-scf"
    mode: Literal["line", "uniform"] = "line"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    nbnd: int | None = None
    skip_without_prediction: bool = False

    # No output_schema: jobflow would reject the documented None of a skipped run
    # ("Expected output of type QETaskDocument but got no output").
    @job
    def make(self, structure: Structure, prediction: Any) -> QETaskDocument | None:
        """Run in the job's folder from a :class:`PredictionDocument`."""
        density = prediction_density(prediction)
        if density is None:
            why = get_field(prediction, "fallback")
            if why and self.skip_without_prediction:
                return None
            raise ValueError(f"no predicted density to run non-SCF from ({why or 'no density'})")
        return run_qe_nscf(structure, Path.cwd(), density, mode=self.mode, protocol=self.protocol,
                           nprocs=self.nprocs, nbnd=self.nbnd or default_nbnd(structure, self.protocol),
                           task_label=f"{self.name} {self.mode}")


@dataclass
class QEAtomicNonSCFMaker(Maker):
    """Control run of the NSCF check: non-SCF from the superposition of atomic densities.

    The density is the pseudopotentials' ``PP_RHOATOM`` superposition (what pw.x's
    ``startingpot='atomic'`` uses), with the protocol's starting moments when spin-polarised.
    """

    name: str = "atomic non-scf"
    mode: Literal["line", "uniform"] = "line"
    protocol: QEProtocol = field(default_factory=QEProtocol)
    nprocs: int | None = None
    nbnd: int | None = None

    @job(output_schema=QETaskDocument)
    def make(self, structure: Structure) -> QETaskDocument:
        """Run in the job's folder."""
        els = structure_elements(structure)
        mag = None
        if self.protocol.is_spin_polarized(structure):
            mag = {el: self.protocol.starting_magnetization.get(el, 0.0) for el in els}
        _, ecutrho = self.protocol.cutoffs(structure)
        grid = superposition_density(
            structure, qe_fft_grid(structure.lattice.matrix, ecutrho),
            {el: info.source for el, info in self.protocol.pseudos(structure).items()}, mag,
        )
        return run_qe_nscf(structure, Path.cwd(), grid, mode=self.mode, protocol=self.protocol,
                           nprocs=self.nprocs, nbnd=self.nbnd or default_nbnd(structure, self.protocol),
                           task_label=f"{self.name} {self.mode}")
