"""CHGCAR I/O through pymatgen, VASP's fine grid, and CHGCAR <-> QE conversion."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density import DensityGrid, qe_gvector_order, write_qe_charge_density
from mlcharge_workflows.density.chgcar import (
    chgcar_to_qe,
    qe_to_chgcar,
    read_chgcar,
    vasp_fine_grid,
    write_chgcar,
)


def structure() -> Structure:
    lattice = Lattice.from_parameters(4.1, 4.3, 4.7, 80.0, 95.0, 100.0)
    return Structure(lattice, ["Si", "C"], [[0.0, 0.0, 0.0], [0.27, 0.31, 0.22]])


def spin_grid(shape=(20, 21, 24)) -> DensityGrid:
    s = structure()
    f = np.stack(np.meshgrid(*(np.arange(n) / n for n in shape), indexing="ij"), -1)
    rho = np.zeros(shape)
    for site in s:
        d = f - site.frac_coords
        d -= np.round(d)
        rho += np.exp(-((d @ s.lattice.matrix) ** 2).sum(-1) / 0.6)
    grid = DensityGrid(s, rho).normalized(8.0)
    grid.magnetization = 0.1 * grid.total
    return grid


def test_round_trip_keeps_density_magnetization_and_augmentation(tmp_path):
    grid = spin_grid()
    aug = {
        "total": {1: np.linspace(0, 1, 7), 2: np.linspace(1, 2, 7)},
        "diff": {1: np.ones(7), 2: -np.ones(7)},  # VASP needs every ion's block
    }
    path = write_chgcar(grid, tmp_path / "CHGCAR", data_aug=aug)
    back = read_chgcar(path, grid.structure)
    assert back.shape == grid.shape
    # the header holds the cell to 1e-6 Å (as VASP writes it): rho = data / V moves by ~1e-7
    np.testing.assert_allclose(back.total, grid.total, rtol=1e-6)
    np.testing.assert_allclose(back.magnetization, grid.magnetization, rtol=1e-6)
    assert back.n_electrons == pytest.approx(8.0, abs=1e-8)
    np.testing.assert_allclose(back.metadata["data_aug"]["total"][2], aug["total"][2])
    # written again from metadata: identical file
    write_chgcar(back, tmp_path / "CHGCAR2")
    assert (tmp_path / "CHGCAR2").read_text() == path.read_text()


def test_vasp_stores_rho_times_volume(tmp_path):
    grid = spin_grid()
    write_chgcar(grid, tmp_path / "CHGCAR")
    from pymatgen.io.vasp.outputs import Chgcar

    raw = Chgcar.from_file(str(tmp_path / "CHGCAR"))
    assert raw.data["total"].mean() == pytest.approx(8.0, rel=1e-9)  # NELECT


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_chgcar_raises(tmp_path, cut):
    path = write_chgcar(spin_grid(), tmp_path / "CHGCAR")
    text = path.read_text()
    path.write_text(text[: int(len(text) * cut)])
    with pytest.raises(ValueError, match="CHGCAR"):
        read_chgcar(path)


def test_poscar_grid_disagreement_raises(tmp_path):
    path = write_chgcar(spin_grid(), tmp_path / "CHGCAR")
    lines = path.read_text().splitlines()
    lines[6] = "     2     1"  # atom counts no longer match the two positions
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="CHGCAR"):
        read_chgcar(path)


def test_structure_mismatch_raises(tmp_path):
    grid = spin_grid()
    path = write_chgcar(grid, tmp_path / "CHGCAR")
    swapped = Structure(grid.structure.lattice, ["C", "Si"], grid.structure.frac_coords)
    with pytest.raises(ValueError, match="species order"):
        read_chgcar(path, swapped)


def test_vasp_fine_grid():
    si8 = Structure(
        Lattice.cubic(5.43), ["Si"] * 8,
        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.25, 0.25, 0.25],
         [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]],
    )
    assert vasp_fine_grid(si8, 520, "Accurate") == (80, 80, 80)
    normal = vasp_fine_grid(si8, 520, "Normal")
    assert normal[0] < 80 and normal[0] % 2 == 0
    with pytest.raises(ValueError, match="PREC"):
        vasp_fine_grid(si8, 520, "High")
    with pytest.raises(ValueError, match="ENCUT"):
        vasp_fine_grid(si8, -5, "Accurate")


def test_chgcar_qe_conversions_conserve_electrons(tmp_path):
    grid = spin_grid()
    path = write_chgcar(grid, tmp_path / "CHGCAR")
    qcd = chgcar_to_qe(path, 60.0, structure=grid.structure)
    assert qcd.nspin == 2
    np.testing.assert_array_equal(qcd.mill, qe_gvector_order(grid.structure.lattice.matrix, 60.0))
    # the CHGCAR's own 6-decimal cell reorders some nearly degenerate shells: why structure=
    rounded = chgcar_to_qe(path, 60.0)
    assert rounded.ngm == qcd.ngm and not np.array_equal(rounded.mill, qcd.mill)
    assert qcd.n_electrons == pytest.approx(8.0, abs=1e-6)
    dat = write_qe_charge_density(tmp_path / "charge-density.dat", qcd)
    back = qe_to_chgcar(dat, grid.structure, tmp_path / "CHGCAR.qe", encut=400, prec="Accurate")
    assert back.shape == vasp_fine_grid(grid.structure, 400, "Accurate")
    again = read_chgcar(tmp_path / "CHGCAR.qe")
    assert again.n_electrons == pytest.approx(8.0, abs=1e-6)
    assert again.total_magnetization == pytest.approx(grid.total_magnetization, abs=1e-6)
    with pytest.raises(ValueError, match="encut"):
        qe_to_chgcar(qcd, grid.structure, tmp_path / "X")
