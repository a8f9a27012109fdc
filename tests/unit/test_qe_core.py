"""Start-density checks of the QE engine; every case fails before pw.x is launched."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.chgcar import write_chgcar
from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.density.qe_file import grid_to_qe, write_qe_charge_density
from mlcharge_workflows.engines.qe.core import load_start_density, run_qe_scf
from mlcharge_workflows.engines.qe.schemas import QETaskDocument
from mlcharge_workflows.engines.qe.sets import QEProtocol
from conftest import fcc_cell as fcc  # noqa: E402 - tests/conftest.py






def smooth_grid(structure, n_electrons, shape=(12, 12, 12), magnetization=None):
    """A positive periodic density integrating to ``n_electrons`` (e/Å³)."""
    f = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1)
    rho = 1.0 + 0.3 * np.cos(2 * np.pi * f.sum(-1))
    rho *= n_electrons / (rho.mean() * structure.lattice.volume)
    mag = None if magnetization is None else rho * magnetization / n_electrons
    return DensityGrid(structure, rho, mag, metadata={"source": "test"})


@pytest.fixture(autouse=True)
def _no_pw(monkeypatch):
    # if a check were missing, the run would fail loudly instead of silently running pw.x
    monkeypatch.setenv("MLCHARGE_PW_CMD", "/nonexistent/pw.x")


def test_good_grid_is_normalised_and_kept_intact(si_fcc):
    grid = smooth_grid(si_fcc, 8.08)  # 1 % off: accepted, normalised
    out, source = load_start_density(grid, si_fcc)
    assert out.n_electrons == pytest.approx(8.0, abs=1e-12)
    assert out.metadata["start_n_electrons"] == pytest.approx(8.08)
    assert "start_n_electrons" not in grid.metadata and grid.n_electrons == pytest.approx(8.08)
    assert source == "test"


def test_rotated_frame_is_accepted(si_fcc):
    cif_like = Structure(Lattice.from_parameters(*si_fcc.lattice.abc, *si_fcc.lattice.angles),
                         si_fcc.species, si_fcc.frac_coords)
    grid = smooth_grid(cif_like, 8.0)
    out, _ = load_start_density(grid, si_fcc)
    assert np.allclose(out.total, grid.total)


def test_density_for_another_cell(si_fcc):
    grid = smooth_grid(fcc(["Si", "Si"], 5.60, si_fcc.frac_coords), 8.0)
    with pytest.raises(ValueError, match="different cell"):
        run_qe_scf(si_fcc, "unused", start=grid)


def test_density_with_other_species_order(sic_fcc):
    csi = fcc(["C", "Si"], 4.36, [[0.25, 0.25, 0.25], [0, 0, 0]])
    grid = smooth_grid(sic_fcc, 8.0)
    with pytest.raises(ValueError, match="(species order|positions)"):
        load_start_density(grid, csi)
    swapped = fcc(["C", "Si"], 4.36, [[0, 0, 0], [0.25, 0.25, 0.25]])
    with pytest.raises(ValueError, match="species order"):
        load_start_density(grid, swapped)


def test_electron_count_far_off(si_fcc):
    with pytest.raises(ValueError, match=r"integrates to 12\.0+ electrons, expected 8"):
        load_start_density(smooth_grid(si_fcc, 12.0), si_fcc)


def test_spin_polarised_run_needs_magnetisation(si_fcc, ni_fcc):
    with pytest.raises(ValueError, match="no magnetisation"):
        load_start_density(smooth_grid(ni_fcc, 10.0), ni_fcc)
    out, _ = load_start_density(smooth_grid(ni_fcc, 10.0, magnetization=0.6), ni_fcc)
    assert out.total_magnetization == pytest.approx(0.6)
    out, _ = load_start_density(smooth_grid(si_fcc, 8.0, magnetization=0.5), si_fcc)
    assert out.magnetization is None  # dropped for a non-spin-polarised run


def test_corrupt_and_truncated_qe_files(tmp_path, si_fcc):
    good = write_qe_charge_density(tmp_path / "ok.dat", grid_to_qe(smooth_grid(si_fcc, 8.0), 60.0))
    grid, _ = load_start_density(good, si_fcc)  # no XML beside it: the structure is the caller's
    assert grid.n_electrons == pytest.approx(8.0)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.dat"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        run_qe_scf(si_fcc, tmp_path / "run", start=trunc)
    corrupt = tmp_path / "corrupt.dat"
    corrupt.write_bytes(data[:40] + b"\xff" * 8 + data[48:])
    with pytest.raises(ValueError, match="corrupt"):
        load_start_density(corrupt, si_fcc)
    assert not (tmp_path / "run").exists()  # nothing was written for a rejected start


def test_qe_file_for_another_cell(tmp_path, si_fcc):
    other = fcc(["Si", "Si"], 5.0, si_fcc.frac_coords)
    path = write_qe_charge_density(tmp_path / "c.dat", grid_to_qe(smooth_grid(other, 8.0), 60.0))
    with pytest.raises(ValueError, match="different cell"):
        load_start_density(path, si_fcc)


def test_chgcar_start(tmp_path, si_fcc):
    path = write_chgcar(smooth_grid(si_fcc, 8.0), tmp_path / "CHGCAR")
    grid, source = load_start_density(path, si_fcc)
    assert grid.n_electrons == pytest.approx(8.0) and source == str(path)
    with pytest.raises(ValueError, match="different cell"):
        load_start_density(path, fcc(["Si", "Si"], 5.6, si_fcc.frac_coords))
    garbage = tmp_path / "CHGCAR_bad"
    garbage.write_text("not a chgcar\n1.0\n")
    with pytest.raises(ValueError, match="CHGCAR"):
        load_start_density(garbage, si_fcc)


def test_missing_start_path_and_bad_structure(tmp_path, si_fcc):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_qe_scf(si_fcc, tmp_path / "r", start=tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="supported elements"):
        run_qe_scf(Structure(Lattice.cubic(4), ["Au"], [[0, 0, 0]]), tmp_path / "r")
    with pytest.raises(ValueError, match="no atoms"):
        run_qe_scf(Structure(Lattice.cubic(4), [], []), tmp_path / "r")


def test_pw_x_missing_is_a_clear_error(tmp_path, si_fcc):
    with pytest.raises(RuntimeError, match="pw.x not found"):
        run_qe_scf(si_fcc, tmp_path / "r", protocol=QEProtocol(kspacing=1.0), nprocs=1)


def test_task_document_json_round_trip(si_fcc):
    doc = QETaskDocument(
        dir_name="/x", structure=si_fcc, formula="Si", start="file", ecutwfc_ry=20, ecutrho_ry=80,
        protocol=QEProtocol(), density_read_from_file=False, scf_iterations=3, energy_eV=-1.0,
    )
    assert not doc.density_initialised  # requested a file start, pw.x did not read it
    back = QETaskDocument.model_validate_json(doc.model_dump_json())
    assert back.structure == si_fcc and back.protocol == doc.protocol
    assert back.summary()["density_initialised"] is False
