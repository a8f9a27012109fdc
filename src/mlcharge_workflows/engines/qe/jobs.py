"""jobflow Makers for pw.x, in atomate2's conventions (a small dataclass with ``name`` and ``make``).

Each job runs in the current working directory, as atomate2's jobs do: give every job its
own folder (``run_locally(..., create_folders=True)`` or a FireWorks launch directory).
Outputs are :class:`QETaskDocument`; densities stay on disk in ``output.dir_name``.

Examples
--------
>>> from jobflow import Flow, run_locally                               # doctest: +SKIP
>>> atomic = QEStaticMaker().make(structure)                            # doctest: +SKIP
>>> restart = QEStaticMaker(name="qe static from density").make(
...     structure, start_density=atomic.output.dir_name)                # doctest: +SKIP
>>> bands = QENonSCFMaker(mode="line").make(structure, atomic.output.dir_name)  # doctest: +SKIP
>>> run_locally(Flow([atomic, restart, bands]), create_folders=True)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from jobflow import Maker, job

from mlcharge_workflows.engines.qe.core import run_qe_nscf, run_qe_scf
from mlcharge_workflows.engines.qe.schemas import QETaskDocument
from mlcharge_workflows.engines.qe.sets import QEProtocol

if TYPE_CHECKING:
    from pymatgen.core import Structure


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
