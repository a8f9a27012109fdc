"""VASP CHGCAR I/O through pymatgen, VASP's fine FFT grid, and CHGCAR <-> QE conversion.

A CHGCAR stores ``rho(r) * V`` (e, V in Å³) on VASP's fine grid, x fastest; for spin-polarised
runs a second block holds ``(rho_up - rho_down) * V``. PAW one-centre ("augmentation")
occupancies follow each block; they are kept in ``grid.metadata["data_aug"]`` and written back
unchanged, because VASP restarts poorly without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.density.qe_file import (
    QEChargeDensity,
    grid_to_qe,
    qe_to_grid,
    read_qe_charge_density,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure

VASP_PRECS = ("Accurate", "Normal", "Single")


def read_chgcar(path: str | Path, structure: Structure | None = None) -> DensityGrid:
    """Read a CHGCAR (or CHG/AECCAR/PARCHG) as a :class:`DensityGrid` in e/Å³.

    ``structure``, when given, must be the file's cell and species order (``ValueError``
    otherwise) and the grid is returned on it (exact cell; the file holds 1e-6 Å).
    A truncated or malformed file raises ``ValueError`` naming it.
    """
    from pymatgen.io.vasp.outputs import Chgcar

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CHGCAR not found: {path}")
    try:
        chg = Chgcar.from_file(str(path))
    except Exception as err:  # pymatgen raises many types on malformed input
        raise ValueError(f"{path}: unreadable CHGCAR ({type(err).__name__}: {err})") from None
    if any(k.startswith("diff_") for k in chg.data):
        raise ValueError(f"{path}: non-collinear CHGCAR (4 blocks) is not supported")
    total = np.asarray(chg.data["total"], dtype=float)
    diff = chg.data.get("diff")
    if diff is not None and np.shape(diff) != total.shape:
        raise ValueError(
            f"{path}: magnetisation grid {np.shape(diff)} differs from total grid {total.shape}"
        )
    n_sites = len(chg.poscar.structure)
    if n_sites == 0 or sum(chg.poscar.natoms) != n_sites:
        raise ValueError(f"{path}: POSCAR header lists {chg.poscar.natoms} atoms, has {n_sites}")
    volume = chg.poscar.structure.lattice.volume
    try:
        grid = DensityGrid(
            chg.poscar.structure,
            total / volume,
            None if diff is None else np.asarray(diff, dtype=float) / volume,
            metadata={"source": str(path), "source_format": "chgcar"},
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    aug = {k: v for k, v in (chg.data_aug or {}).items() if v}
    if aug:
        grid.metadata["data_aug"] = aug
    return grid if structure is None else _adopt_structure(grid, structure)


def _adopt_structure(grid: DensityGrid, structure: Structure) -> DensityGrid:
    """Put ``grid`` on ``structure`` (checked to match), keeping the electron count.

    A CHGCAR holds its cell to 1e-6 Å; the caller's exact cell matters for QE's G order.
    """
    grid.check_matches(structure)
    scale = grid.volume / structure.volume  # CHGCAR holds rho * V
    mag = None if grid.magnetization is None else grid.magnetization * scale
    return DensityGrid(structure, grid.total * scale, mag, dict(grid.metadata))


def write_chgcar(grid: DensityGrid, path: str | Path, data_aug: dict | None = None) -> Path:
    """Write ``grid`` as a CHGCAR; ``data_aug`` (default: ``grid.metadata["data_aug"]``) keeps
    PAW occupancies in pymatgen's layout."""
    from pymatgen.io.vasp import Poscar
    from pymatgen.io.vasp.outputs import Chgcar

    path = Path(path)
    volume = grid.volume
    data = {"total": grid.total * volume}
    if grid.magnetization is not None:
        data["diff"] = grid.magnetization * volume
    aug = grid.metadata.get("data_aug") if data_aug is None else data_aug
    path.parent.mkdir(parents=True, exist_ok=True)
    Chgcar(Poscar(grid.structure), data, data_aug=aug).write_file(str(path))
    return path


def vasp_fine_grid(
    structure: Structure, encut: float, prec: str = "Accurate"
) -> tuple[int, int, int]:
    """VASP 6's fine grid ``(NGXF, NGYF, NGZF)`` for ``ENCUT`` (eV) and ``PREC``.

    Uses pymatgen's ``VaspInputSet.calculate_ng``; pin the result in the INCAR, since what
    VASP does with a CHGCAR on another grid is undocumented.
    """
    from pymatgen.io.vasp.sets import VaspInputSet

    if not encut > 0:
        raise ValueError(f"ENCUT must be positive, got {encut} eV")
    key = prec.strip().capitalize() if prec else ""
    if key not in VASP_PRECS:
        raise ValueError(f"PREC must be one of {VASP_PRECS}, got {prec!r}")
    _, fine = VaspInputSet(structure=structure).calculate_ng(
        custom_encut=float(encut), custom_prec=key
    )
    return tuple(int(n) for n in fine)  # type: ignore[return-value]


def chgcar_to_qe(
    chgcar: str | Path | DensityGrid,
    ecutrho_ry: float,
    mill: np.ndarray | None = None,
    gamma_only: bool = False,
    structure: Structure | None = None,
) -> QEChargeDensity:
    """CHGCAR (path or grid) -> QE file contents in pw.x's G order for ``ecutrho_ry``.

    The coefficients are the CHGCAR grid's own Fourier components (exact resampling in G
    space); ``G = 0`` and hence the electron count are kept exactly. Pass the ``structure``
    pw.x will run (checked against the CHGCAR): a CHGCAR holds its cell to only 1e-6 Å, which
    can reorder nearly degenerate G shells, and pw.x reads the order without checking it.
    """
    grid = chgcar if isinstance(chgcar, DensityGrid) else read_chgcar(chgcar)
    if structure is not None:
        grid = _adopt_structure(grid, structure)
    return grid_to_qe(grid, ecutrho_ry, mill=mill, gamma_only=gamma_only)


def qe_to_chgcar(
    qe: str | Path | QEChargeDensity,
    structure: Structure,
    path: str | Path,
    encut: float | None = None,
    prec: str = "Accurate",
    shape: tuple[int, int, int] | None = None,
    data_aug: dict | None = None,
) -> DensityGrid:
    """QE density (file or contents) -> CHGCAR at ``path`` on VASP's fine grid.

    The grid is ``shape`` if given, else :func:`vasp_fine_grid` for ``encut``/``prec``.
    The QE G sphere is evaluated on that grid (components beyond it are dropped), so the
    electron count is kept exactly. Returns the written grid.
    """
    qcd = qe if isinstance(qe, QEChargeDensity) else read_qe_charge_density(qe)
    if shape is None:
        if encut is None:
            raise ValueError("give either encut (eV) or an explicit grid shape")
        shape = vasp_fine_grid(structure, encut, prec)
    grid = qe_to_grid(qcd, structure, shape)
    write_chgcar(grid, path, data_aug=data_aug)
    grid.metadata.update(chgcar=str(path))
    return grid


__all__ = [
    "chgcar_to_qe",
    "qe_to_chgcar",
    "read_chgcar",
    "vasp_fine_grid",
    "write_chgcar",
]
