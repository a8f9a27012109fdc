"""Shared test fixtures: the small cells every engine test uses, and the real VASP outputs.

Cells (Å):

* ``si`` - two Si atoms in a 5.43 Å *cubic* box (not diamond: cheap, for wiring tests);
* ``si_fcc``, ``sic_fcc`` - diamond Si (a = 5.43) and zincblende SiC (a = 4.36), primitive;
* ``ni_fcc`` - fcc Ni (a = 3.52), primitive: the magnetic cell;
* ``al`` - one Al atom in a 4.05 Å cube: an element the model was never trained on.

``VASP_OUTPUTS`` holds real VASP output files (custodian's test files, MIT; see its
README.md), kept in the repository so the parser tests run from a fresh clone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

#: Real VASP outputs (vasprun.xml, OSZICAR) for the parser and handler tests.
VASP_OUTPUTS = Path(__file__).parent / "test_data" / "vasp" / "outputs"
DIAMOND = [[0, 0, 0], [0.25, 0.25, 0.25]]


def fcc_cell(species: list[str], a: float, frac_coords=((0, 0, 0),)) -> Structure:
    """Primitive fcc cell of lattice constant ``a`` (Å) with the given sites.

    Test modules that need a cell at import time (parametrize, module constants) use
    ``from conftest import fcc_cell``; tests take the fixtures below.
    """
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), species, frac_coords)


@pytest.fixture
def si() -> Structure:
    return Structure(Lattice.cubic(5.43), ["Si", "Si"], DIAMOND)


@pytest.fixture
def si_fcc() -> Structure:
    return fcc_cell(["Si", "Si"], 5.43, DIAMOND)


@pytest.fixture
def sic_fcc() -> Structure:
    return fcc_cell(["Si", "C"], 4.36, DIAMOND)


@pytest.fixture
def ni_fcc() -> Structure:
    return fcc_cell(["Ni"], 3.52, [[0, 0, 0]])


@pytest.fixture(scope="session")
def vasp_outputs() -> Path:
    return VASP_OUTPUTS


@pytest.fixture
def al() -> Structure:
    return Structure(Lattice.cubic(4.05), ["Al"], [[0, 0, 0]])
