"""Density grids and their file formats (VASP CHGCAR, QE charge-density.dat)."""

from __future__ import annotations

from mlcharge_workflows.density.grid import DensityGrid

__all__ = ["DensityGrid"]
