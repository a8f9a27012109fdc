"""Named unit constants. Convert only at file boundaries (QE files, CHGCAR, pw.x output)."""

from __future__ import annotations

#: Bohr radius in Å, as Quantum ESPRESSO 6.7 defines it (Modules/constants.f90).
BOHR_TO_ANGSTROM = 0.52917720859
ANGSTROM_TO_BOHR = 1.0 / BOHR_TO_ANGSTROM
#: Rydberg in eV (QE 6.7: RYTOEV).
RY_TO_EV = 13.605691930242388
HARTREE_TO_EV = 2.0 * RY_TO_EV
EV_TO_RY = 1.0 / RY_TO_EV
#: e/bohr³ -> e/Å³
PER_BOHR3_TO_PER_ANGSTROM3 = ANGSTROM_TO_BOHR**3
