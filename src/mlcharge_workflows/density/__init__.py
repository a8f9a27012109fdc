"""Density grids and their file formats (VASP CHGCAR, QE charge-density.dat), and SAD."""

from __future__ import annotations

from mlcharge_workflows.density.chgcar import (
    chgcar_to_qe,
    qe_to_chgcar,
    read_chgcar,
    vasp_fine_grid,
    write_chgcar,
)
from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.density.qe_file import (
    QEChargeDensity,
    grid_to_qe,
    qe_fft_fact,
    qe_fft_grid,
    qe_gvector_order,
    qe_to_grid,
    read_paw_txt,
    read_qe_charge_density,
    read_qe_density,
    read_qe_xml,
    write_paw_txt,
    write_qe_charge_density,
    write_qe_start_density,
)
from mlcharge_workflows.density.sad import (
    read_upf_atomic_density,
    sad_coefficients,
    superposition_density,
)

__all__ = [
    "DensityGrid",
    "QEChargeDensity",
    "chgcar_to_qe",
    "grid_to_qe",
    "qe_fft_fact",
    "qe_fft_grid",
    "qe_gvector_order",
    "qe_to_chgcar",
    "qe_to_grid",
    "read_chgcar",
    "read_paw_txt",
    "read_qe_charge_density",
    "read_qe_density",
    "read_qe_xml",
    "read_upf_atomic_density",
    "sad_coefficients",
    "superposition_density",
    "vasp_fine_grid",
    "write_chgcar",
    "write_paw_txt",
    "write_qe_charge_density",
    "write_qe_start_density",
]
