"""Named unit constants. Convert only at file boundaries (QE files, CHGCAR, pw.x output).

The values are the CODATA 2018 ones that Quantum ESPRESSO 6.7 (Debian's pw.x) uses in
``Modules/constants.f90``: pw.x writes a 2.46 Å cell into its XML as
4.648726266579395 bohr, which only 0.529177210903 Å/bohr reproduces, and its G-vector
order depends on that last digit.
"""

from __future__ import annotations

#: Bohr radius in Å (CODATA 2018, as QE 6.7).
BOHR_TO_ANGSTROM = 0.529177210903
ANGSTROM_TO_BOHR = 1.0 / BOHR_TO_ANGSTROM
#: Hartree and Rydberg in eV (CODATA 2018, as QE 6.7: AUTOEV, RYTOEV).
HARTREE_TO_EV = 27.211386245988
RY_TO_EV = HARTREE_TO_EV / 2.0
EV_TO_RY = 1.0 / RY_TO_EV
#: e/bohr³ -> e/Å³
PER_BOHR3_TO_PER_ANGSTROM3 = ANGSTROM_TO_BOHR**3
