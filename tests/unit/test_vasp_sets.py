"""Input-set helpers (structure, grid, NELECT) and CHGCAR placement for VASP runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp import Poscar

pytest.importorskip("atomate2")

from atomate2.vasp.sets.core import StaticSetGenerator  # noqa: E402

from mlcharge_workflows.density.chgcar import read_chgcar, write_chgcar  # noqa: E402
from mlcharge_workflows.density.grid import DensityGrid  # noqa: E402
from mlcharge_workflows.engines.vasp.density import (  # noqa: E402
    place_density,
    resolve_predictor,
)
from mlcharge_workflows.engines.vasp.sets import (  # noqa: E402
    expected_nelect,
    input_fine_grid,
    input_set,
    input_structure,
    potcar_zval,
    with_incar,
)


def sic(order=("C", "Si")) -> Structure:
    a = 4.36
    lat = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    pos = {"C": [0, 0, 0], "Si": [0.25, 0.25, 0.25]}
    return Structure(lat, list(order), [pos[e] for e in order])


def gen(**incar) -> StaticSetGenerator:
    return StaticSetGenerator(user_incar_settings={"ENCUT": 300, **incar})


class ZSorted(StaticSetGenerator):
    @property
    def poscar(self) -> Poscar:
        return Poscar(self.structure.get_sorted_structure(key=lambda site: site.specie.Z))


def uniform_grid(structure: Structure, shape, n_electrons: float) -> DensityGrid:
    rng = np.random.default_rng(0)
    rho = 1.0 + 0.1 * rng.random(shape)
    return DensityGrid(structure, rho).normalized(n_electrons)


def test_potcar_zval_table() -> None:
    # ZVALs as pymatgen's POTCAR summary stats list them (PBE_54)
    assert potcar_zval("Na_pv") == 7.0 and potcar_zval("Fe") == 8.0
    assert potcar_zval("W_sv") == 14.0 and potcar_zval("Si", "PBE") == 4.0
    with pytest.raises(ValueError, match="no ZVAL known for POTCAR 'Xx'"):
        potcar_zval("Xx")
    with pytest.raises(ValueError, match="unknown POTCAR functional"):
        potcar_zval("Si", "PBE_99")


def test_expected_nelect_sources() -> None:
    vis = input_set(gen(), sic())
    assert expected_nelect(vis) == (8.0, "table", {"C": 4.0, "Si": 4.0})
    assert expected_nelect(vis, zval={"Si": 3.0})[:2] == (7.0, "table")
    assert expected_nelect(vis, zval={"Si": 3.0, "C": 4.0})[:2] == (7.0, "zval")
    assert expected_nelect(input_set(gen(NELECT=7.5), sic()))[:2] == (7.5, "INCAR")
    fe_o = Structure(Lattice.cubic(4.2), ["O", "Fe", "O", "Fe"],
                     [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0.5, 0.5, 0.5]])
    assert expected_nelect(input_set(gen(), fe_o))[0] == 2 * 6 + 2 * 8


def test_fine_grid_and_structure() -> None:
    vis = input_set(gen(), sic())
    assert input_fine_grid(vis) == (36, 36, 36)  # see tests/test_data/vasp/build_reference.py
    assert input_fine_grid(input_set(gen(NGXF=40, NGYF=40, NGZF=48), sic())) == (40, 40, 48)
    with pytest.raises(ValueError, match="must be set together"):
        input_fine_grid(input_set(gen(NGXF=40), sic()))
    with pytest.raises(ValueError, match="no ENCUT"):
        input_fine_grid(input_set(StaticSetGenerator(user_incar_settings={"ENCUT": None}), sic()))
    # the structure the input set writes, not the one given
    assert [s.species_string for s in input_structure(ZSorted(), sic(("Si", "C")))] == ["C", "Si"]
    g = gen()
    with_incar(g, {"ICHARG": 1})
    assert "ICHARG" not in g.user_incar_settings  # generators are never modified


def test_place_density_copy_resample_refuse(tmp_path: Path) -> None:
    vis = input_set(gen(), sic())
    s = vis["POSCAR"].structure
    exact = uniform_grid(s, (36, 36, 36), 8.0)
    aug = {"total": ["augmentation occupancies   1   2", "  0.1  0.2",
                     "augmentation occupancies   2   2", "  0.3  0.4"]}
    write_chgcar(exact, tmp_path / "exact", data_aug=aug)
    (tmp_path / "run").mkdir()
    info = place_density(tmp_path / "exact", vis, tmp_path / "run", names=("CHGCAR", "CHGCAR.ml"))
    assert info["written"] == "copied" and info["has_paw_occupancies"]
    assert (tmp_path / "run" / "CHGCAR").read_bytes() == (tmp_path / "exact").read_bytes()
    assert (tmp_path / "run" / "CHGCAR.ml").read_bytes() == (tmp_path / "exact").read_bytes()

    write_chgcar(uniform_grid(s, (24, 24, 30), 8.0), tmp_path / "coarse")
    info = place_density(tmp_path / "coarse", vis, tmp_path / "run")
    grid = read_chgcar(tmp_path / "run" / "CHGCAR")
    assert info["written"] == "resampled" and grid.shape == (36, 36, 36)
    assert grid.n_electrons == pytest.approx(8.0, rel=1e-9)

    # another electron count is refused, never rescaled
    write_chgcar(uniform_grid(s, (36, 36, 36), 9.0), tmp_path / "nine")
    with pytest.raises(ValueError, match="holds 9.000000 electrons, the run has NELECT=8.0"):
        place_density(tmp_path / "nine", vis, tmp_path / "run")


def test_place_density_refuses_other_atom_order(tmp_path: Path) -> None:
    vis = input_set(gen(), sic(("C", "Si")))
    write_chgcar(uniform_grid(sic(("Si", "C")), (36, 36, 36), 8.0), tmp_path / "CHGCAR")
    with pytest.raises(ValueError, match="does not match the POSCAR VASP will read: species order"):
        place_density(tmp_path / "CHGCAR", vis, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CHGCAR in"):
        place_density(tmp_path / "empty", vis, tmp_path)


def test_resolve_predictor_specs() -> None:
    assert resolve_predictor("numpy:zeros") is np.zeros
    with pytest.raises(ValueError, match="unknown predictor 'magic'"):
        resolve_predictor("magic")
    with pytest.raises(ValueError, match="cannot import predictor"):
        resolve_predictor("no_such_module_xyz:f")


def test_vasp_workflow_modules_do_not_import_torch() -> None:
    code = (
        "import sys, mlcharge_workflows.engines.vasp.jobs, mlcharge_workflows.engines.vasp.flows;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
