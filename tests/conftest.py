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
def si_primitive() -> Structure:
    """Diamond Si as pymatgen's primitive cell of Fd-3m (the pw.x comparison tests' cell)."""
    return Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]
    ).get_primitive_structure()


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


#: A user's pseudopotential (Debian's US file) for an element outside the registry and every model
USER_RH = Path("/usr/share/espresso/pseudo/Rh.pbe-rrkjus_lb.UPF")


@pytest.fixture
def user_rh() -> Path:
    """Rh's UPF as a user brings it (``QEProtocol(pseudopotentials={"Rh": ...})``); skip without it."""
    if not USER_RH.is_file():
        pytest.skip(f"needs Debian's {USER_RH.name}")
    return USER_RH


@pytest.fixture
def mongo_launchpad(monkeypatch, tmp_path):
    """A FireWorks LaunchPad on mongomock (no server): ``(my_launchpad.yaml, handle)``, reset."""
    import fireworks.core.launchpad as fw_launchpad
    import mongomock.gridfs

    from mlcharge_workflows.submit import open_launchpad

    mongomock.gridfs.enable_gridfs_integration()
    client = mongomock.MongoClient()
    monkeypatch.setattr(fw_launchpad, "MongoClient", lambda *a, **k: client)
    lp_file = tmp_path / "my_launchpad.yaml"
    lp_file.write_text("host: mongodb.example.org\nport: 27017\nname: fw_test\n")
    handle = open_launchpad(lp_file)
    handle.lp.reset("", require_password=False)
    return lp_file, handle
