"""QEProtocol and pw.x input writing (no pw.x needed)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.engines.qe.sets import (
    QEProtocol,
    band_path,
    pw_input,
    qe_oriented,
    write_pw_input,
)
from conftest import fcc_cell as fcc  # noqa: E402 - tests/conftest.py




def test_kpoint_grid_from_spacing(si_fcc):
    si = si_fcc
    b = si.lattice.reciprocal_lattice.abc[0]  # 2*pi*sqrt(3)/a = 2.004 1/Å
    assert QEProtocol(kspacing=0.3).kpoint_grid(si) == (7, 7, 7)
    assert QEProtocol(kspacing=b / 4).kpoint_grid(si) == (4, 4, 4)  # exact ratio: no extra point
    assert QEProtocol(kspacing=10).kpoint_grid(si) == (1, 1, 1)


def test_cutoffs_are_max_over_species_and_nscf_settings():
    sic = fcc(["Si", "C"], 4.36, [[0, 0, 0], [0.25, 0.25, 0.25]])
    assert QEProtocol().cutoffs(sic) == (30.0, 240.0)  # Si NC 30/120, C US 30/240
    assert QEProtocol(ecutwfc_ry=40).cutoffs(sic) == (40.0, 240.0)
    with pytest.raises(ValueError, match="below 4 x ecutwfc"):
        QEProtocol(ecutwfc_ry=40, ecutrho_ry=100).cutoffs(sic)


def test_protocol_validation():
    with pytest.raises(ValidationError):
        QEProtocol(ecutwfc_ry=-3)
    with pytest.raises(ValidationError, match="outside"):
        QEProtocol(starting_magnetization={"Ni": 1.5})


def test_scf_input_has_protocol_and_layout(tmp_path, si_fcc):
    si = si_fcc
    text = write_pw_input(pw_input(si, QEProtocol(), startingpot="file"), tmp_path / "pw.in").read_text()
    for line in (
        "calculation = 'scf'", "startingpot = 'file'", "diago_thr_init = 1d-05",
        "conv_thr = 1d-09", "mixing_beta = 0.4", "occupations = 'smearing'", "smearing = 'mv'",
        "degauss = 0.01", "ecutwfc = 30.0", "ecutrho = 120.0", "pseudo_dir = 'pseudo'",
        "outdir = 'out'", "prefix = 'pwscf'", "CELL_PARAMETERS angstrom",
        "ATOMIC_POSITIONS crystal", "K_POINTS automatic", "7 7 7 0 0 0",
    ):
        assert line in text, line
    assert "nspin" not in text


def test_atomic_and_file_inputs_differ_only_in_startingpot(si_fcc):
    si = si_fcc
    a = str(pw_input(si, startingpot="atomic")).splitlines()
    f = str(pw_input(si, startingpot="file")).splitlines()
    assert [x for x in a if x not in f] == ["  startingpot = 'atomic',"]


def test_spin_polarised_input_orders_moments_like_species():
    nio = Structure(Lattice.cubic(4.17), ["O", "Ni"], [[0.5, 0.5, 0.5], [0, 0, 0]])
    text = str(pw_input(nio, QEProtocol()))
    assert "nspin = 2" in text
    species = text.split("ATOMIC_SPECIES\n")[1].splitlines()[:2]
    assert [s.split()[0] for s in species] == ["Ni", "O"]
    assert "starting_magnetization(1) = 0.3" in text and "starting_magnetization(2) = 0.0" in text


def test_bands_input_uses_integer_crystal_b_counts(tmp_path, si_fcc):
    si = si_fcc
    path = write_pw_input(pw_input(si, QEProtocol(line_density=5), calculation="bands"), tmp_path / "b.in")
    text = path.read_text()
    assert "calculation = 'bands'" in text and "startingpot" not in text
    rows = text.split("K_POINTS crystal_b\n")[1].split("CELL_PARAMETERS")[0].split("\n")
    n = int(rows[0])
    assert n == len([r for r in rows[1:] if r.strip()])
    assert all(r.split()[3].isdigit() for r in rows[1 : n + 1])


def test_band_path_points_are_in_the_cells_own_basis(si_fcc):
    si = si_fcc
    entries = band_path(si, 10)
    frac = np.array([e[:3] for e in entries])
    cart = frac @ si.lattice.reciprocal_lattice.matrix
    # Gamma and X (|k| = 2*pi/a) of fcc are on the path
    norms = np.linalg.norm(cart, axis=1)
    assert np.isclose(norms, 0).any() and np.isclose(norms, 2 * np.pi / 5.43, atol=1e-6).any()


def test_qe_oriented_keeps_basis_and_fractional_coordinates():
    s = Structure(
        Lattice.from_parameters(3.8396, 3.8396, 3.8396, 60, 60, 60),  # as read from a CIF
        ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]],
    )
    r = qe_oriented(s)
    assert np.allclose(r.lattice.abc, s.lattice.abc) and np.allclose(r.lattice.angles, s.lattice.angles)
    assert np.allclose(r.frac_coords, s.frac_coords)
    # cubic axes now along x, y, z: every primitive vector has two equal |components| and a zero
    m = np.sort(np.abs(r.lattice.matrix), axis=1)
    assert np.allclose(m[:, 0], 0, atol=1e-9) and np.allclose(m[:, 1], m[:, 2])


def test_band_path_is_frame_independent():
    a = 5.43
    std = fcc(["Si", "Si"], a, [[0, 0, 0], [0.25, 0.25, 0.25]])
    cif = Structure(
        Lattice.from_parameters(*std.lattice.abc, *std.lattice.angles), std.species, std.frac_coords
    )
    norms = []
    for s in (std, cif):
        frac = np.array([e[:3] for e in band_path(s, 10)])
        norms.append(np.linalg.norm(frac @ s.lattice.reciprocal_lattice.matrix, axis=1))
    assert np.allclose(norms[0], norms[1], atol=1e-6)


def test_package_exports_resolve():
    import mlcharge_workflows.engines.qe as qe

    assert all(getattr(qe, name) is not None for name in qe.__all__)
    assert qe.QEProtocol is QEProtocol
    with pytest.raises(AttributeError):
        qe.no_such_name  # noqa: B018


def test_band_path_for_a_cell_without_a_setyawan_curtarolo_path():
    """A rattled CdI2-type CuN2 cell (test split of the main dataset) for which pymatgen's
    Setyawan-Curtarolo path is None: the path is built on the cell itself, not a TypeError."""
    lattice = [[2.7065823706050343, 0.0, 0.0], [-1.3532911853025162, 2.343969090379068, 0.0],
               [0.0, 0.0, 4.336407193925805]]
    frac = [[0.98815170137658, 0.009126329049738665, 0.013327944484001427],
            [0.33097566823796243, 0.6499303816904858, 0.2568424136148621],
            [0.660935753072878, 0.3037125042233277, 0.7258786061259392]]
    s = Structure(lattice, ["Cu", "N", "N"], frac)
    entries = band_path(s, 8)
    assert len(entries) >= 4 and entries[-1][3] == 1
    assert all(np.isfinite(e[:3]).all() and e[3] >= 1 for e in entries)
    assert any(np.allclose(e[:3], 0.0, atol=1e-9) for e in entries)  # Gamma is on the path
