"""mlcharge_workflows: start DFT calculations from a machine-learned electron density.

Units inside the package are Å, eV and e/Å³; conversions happen only at file
boundaries (see :mod:`mlcharge_workflows.units`).
"""

from __future__ import annotations

__version__ = "0.1.0"
