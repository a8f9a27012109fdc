"""The predicted CHGCAR for a VASP run: VASP's spin layout with the run's MAGMOM, and PAW
occupancies only where they are known (a CHGCAR of the same cell), never invented.

POTCARs: the synthetic library of ``engines.vasp.testing`` (as in test_vasp_density.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp import Poscar
from pymatgen.io.vasp.outputs import Chgcar

pytest.importorskip("atomate2")

from atomate2.vasp.sets.core import StaticSetGenerator  # noqa: E402

from mlcharge_workflows.density import DensityGrid  # noqa: E402
from mlcharge_workflows.density.chgcar import read_chgcar, write_chgcar  # noqa: E402
from mlcharge_workflows.engines.vasp.density import (  # noqa: E402
    REFERENCE_FILE,
    write_predicted_chgcar,
)
from mlcharge_workflows.engines.vasp.sets import input_set  # noqa: E402
from mlcharge_workflows.engines.vasp.testing import write_synthetic_potcar_library  # noqa: E402


@pytest.fixture
def potcar_dir(tmp_path, monkeypatch):
    import pymatgen.io.vasp.inputs as inputs

    symbols = ["Fe", "Fe_pv", "O", "Si", "C"]
    root = write_synthetic_potcar_library(tmp_path / "psp", symbols)
    write_synthetic_potcar_library(root, symbols, functional_dir="POT_GGA_PAW_PBE")
    monkeypatch.setenv("PMG_VASP_PSP_DIR", str(root))
    monkeypatch.setitem(inputs.SETTINGS, "PMG_VASP_PSP_DIR", str(root))
    return root


def afm_feo() -> Structure:
    """Rock-salt FeO, antiferromagnetic along [111], species interleaved (O Fe O Fe): the
    POSCAR keeps this order, so the moment line must too."""
    a = 4.33
    lat = Lattice([[a, a / 2, a / 2], [a / 2, a, a / 2], [a / 2, a / 2, a]])
    return Structure(lat, ["O", "Fe", "O", "Fe"],
                     [[0.25, 0.25, 0.25], [0, 0, 0], [0.75, 0.75, 0.75], [0.5, 0.5, 0.5]],
                     site_properties={"magmom": [0.0, 4.0, 0.0, -4.0]})


MOMENT_LINE = ("  0.000000000000E+00  0.400000000000E+01  0.000000000000E+00"
               " -0.400000000000E+01")


def gen(**incar) -> StaticSetGenerator:
    return StaticSetGenerator(user_incar_settings={"ENCUT": 300, **incar})


def moment_lines(text: str, n_points: int) -> list[str]:
    lines = text.splitlines()
    start = lines.index(" ") + 2 + -(-n_points // 5)  # header, grid line, total density
    end = next(i for i in range(start, len(lines)) if "." not in lines[i])
    return lines[start:end]


def test_spin_prediction_is_written_in_vasps_layout_with_the_incar_magmom(
        potcar_dir, tmp_path):
    g = gen(ISPIN=2)
    grid, info = write_predicted_chgcar(afm_feo(), g, tmp_path / "CHGCAR", predictor="sad")
    vis = input_set(g, afm_feo())
    poscar_species = [s.species_string for s in vis["POSCAR"].structure]
    incar_magmom = [float(m) for m in vis["INCAR"]["MAGMOM"]]
    assert poscar_species == ["O", "Fe", "O", "Fe"]
    assert incar_magmom == [0.0, 4.0, 0.0, -4.0]
    assert info["chgcar_magmom"] == incar_magmom
    text = (tmp_path / "CHGCAR").read_text()
    assert text.splitlines()[5].split() == poscar_species  # the CHGCAR's own POSCAR
    lines = moment_lines(text, grid.total.size)
    assert lines == [MOMENT_LINE]
    # parses back to the same grids (11 significant digits on file)
    chg = Chgcar.from_file(str(tmp_path / "CHGCAR"))
    v = grid.volume
    np.testing.assert_allclose(chg.data["total"], grid.total * v, rtol=1e-10)
    np.testing.assert_allclose(chg.data["diff"], grid.magnetization * v, rtol=1e-10)
    assert chg.data["total"].mean() == pytest.approx(info["nelect"], rel=1e-9)
    back = read_chgcar(tmp_path / "CHGCAR")
    assert back.metadata["chgcar_magmom"] == incar_magmom
    # no occupancies are invented; the documents say so
    assert "augmentation" not in text
    assert info["paw_occupancies"] is None
    assert json.loads((tmp_path / REFERENCE_FILE).read_text())["paw_occupancies"] is None


def test_non_spin_prediction_file_is_unchanged(potcar_dir, tmp_path):
    """ISPIN=1: exactly pymatgen's CHGCAR of the grid (no moment line, no occupancies)."""
    grid, info = write_predicted_chgcar(afm_feo(), gen(ISPIN=1), tmp_path / "CHGCAR",
                                        predictor="sad")
    assert grid.magnetization is None and info["chgcar_magmom"] is None
    Chgcar(Poscar(grid.structure), {"total": grid.total * grid.volume}).write_file(
        tmp_path / "pmg")
    assert (tmp_path / "CHGCAR").read_text() == (tmp_path / "pmg").read_text()


def test_occupancies_are_copied_from_a_chgcar_of_the_same_cell(potcar_dir, tmp_path):
    g = gen(ISPIN=2)
    donor, _ = write_predicted_chgcar(afm_feo(), g, tmp_path / "first", predictor="sad")
    occ = {"total": {i: np.linspace(0.1 * i, 1.0, 15) for i in range(1, 5)},
           "diff": {i: np.linspace(-0.2, 0.05 * i, 15) for i in range(1, 5)}}
    write_chgcar(donor, tmp_path / "run" / "CHGCAR", data_aug=occ)
    grid, info = write_predicted_chgcar(afm_feo(), g, tmp_path / "CHGCAR", predictor="sad",
                                        paw_occupancies=tmp_path / "run")
    assert info["paw_occupancies"]["blocks"] == ["total", "diff"]
    assert info["paw_occupancies"]["source"].endswith("run/CHGCAR")
    chg = Chgcar.from_file(str(tmp_path / "CHGCAR"))
    for block in ("total", "diff"):
        for ion in range(1, 5):
            np.testing.assert_allclose(chg.data_aug[block][ion], occ[block][ion], rtol=1e-10)
    text = (tmp_path / "CHGCAR").read_text()
    # the moment line sits after the occupancies of the total, before the second grid line
    lines = text.splitlines()
    i = lines.index(next(x for x in lines if x.startswith("augmentation occupancies   4")))
    assert lines[i + 4] == MOMENT_LINE  # after the header and 15 values (3 lines)
    i += 4
    assert lines[i + 1].split() == [str(n) for n in grid.shape]
    # a non-spin source for a spin run: total only, and the summary says what VASP does
    write_chgcar(DensityGrid(donor.structure, donor.total), tmp_path / "nospin",
                 data_aug={"total": occ["total"]})
    _, info = write_predicted_chgcar(afm_feo(), g, tmp_path / "CHGCAR2", predictor="sad",
                                     paw_occupancies=tmp_path / "nospin")
    assert info["paw_occupancies"]["blocks"] == ["total"]
    assert "overlapping atoms" in info["paw_occupancies"]["note"]


def test_occupancies_of_another_cell_or_none_are_refused(potcar_dir, tmp_path):
    g = gen(ISPIN=2)
    first, _ = write_predicted_chgcar(afm_feo(), g, tmp_path / "first", predictor="sad")
    with pytest.raises(ValueError, match="holds no PAW occupancies"):
        write_predicted_chgcar(afm_feo(), g, tmp_path / "a", predictor="sad",
                               paw_occupancies=tmp_path / "first")
    other = first.structure.copy()
    other.translate_sites([0], [0.05, 0, 0])
    occ = {"total": {i: np.ones(15) for i in range(1, 5)}}
    write_chgcar(DensityGrid(other, first.total), tmp_path / "moved", data_aug=occ)
    with pytest.raises(ValueError, match="another cell"):
        write_predicted_chgcar(afm_feo(), g, tmp_path / "b", predictor="sad",
                               paw_occupancies=tmp_path / "moved")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
