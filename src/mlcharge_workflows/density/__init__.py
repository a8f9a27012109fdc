"""Density grids and their file formats (VASP CHGCAR, QE charge-density.dat)."""

from __future__ import annotations

from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.density.qe_file import (
    QEChargeDensity,
    grid_to_qe,
    qe_fft_grid,
    qe_gvector_order,
    qe_to_grid,
    read_paw_txt,
    read_qe_charge_density,
    read_qe_density,
    write_paw_txt,
    write_qe_charge_density,
    write_qe_start_density,
)

__all__ = [
    "DensityGrid",
    "QEChargeDensity",
    "grid_to_qe",
    "qe_fft_grid",
    "qe_gvector_order",
    "qe_to_grid",
    "read_paw_txt",
    "read_qe_charge_density",
    "read_qe_density",
    "write_paw_txt",
    "write_qe_charge_density",
    "write_qe_start_density",
]
