"""charge-density.dat / paw.txt I/O, QE G order and grid <-> QE conversion (no pw.x needed)."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density import (
    DensityGrid,
    QEChargeDensity,
    grid_to_qe,
    qe_fft_grid,
    qe_gvector_order,
    qe_to_grid,
    read_paw_txt,
    read_qe_charge_density,
    read_qe_density,
    write_paw_txt,
    write_qe_charge_density,
    write_qe_start_density,
)
from mlcharge_workflows.density.qe_gvectors import qe_fft_fact


def structure() -> Structure:
    lattice = Lattice.from_parameters(3.9, 4.3, 4.7, 78.0, 95.0, 104.0)
    return Structure(lattice, ["Si", "C"], [[0.0, 0.0, 0.0], [0.27, 0.31, 0.22]])


def smooth_grid(s: Structure, shape=(24, 27, 30), spin: bool = False) -> DensityGrid:
    """Periodic Gaussians at the atoms, normalised to 8 electrons."""
    f = np.stack(np.meshgrid(*(np.arange(n) / n for n in shape), indexing="ij"), -1)
    rho = np.zeros(shape)
    for site in s:
        d = f - site.frac_coords
        d -= np.round(d)
        r2 = ((d @ s.lattice.matrix) ** 2).sum(-1)
        rho += np.exp(-r2 / 0.5)
    g = DensityGrid(s, rho, 0.2 * rho if spin else None).normalized(8.0)
    if spin:
        g.magnetization = g.total * 0.25
    return g


def test_gvector_order_is_sorted_with_ties_in_generation_order():
    lat = Lattice.hexagonal(2.46, 6.7).matrix
    mill = qe_gvector_order(lat, 100.0)
    recip = 2 * np.pi * np.linalg.inv(lat).T
    g2 = ((mill @ recip) ** 2).sum(1)
    assert (mill[0] == 0).all()
    assert np.all(np.diff(g2) > -1e-6)
    # within a shell of equal |G|, (i, j, k) increase lexicographically (ggen's loop order)
    first_in_plane = np.flatnonzero((mill == [1, 0, 0]).all(1))[0]
    shell = np.flatnonzero(np.isclose(g2, g2[first_in_plane]))
    assert len(shell) == 6  # six in-plane vectors of equal length
    keys = [tuple(m) for m in mill[shell]]
    assert keys == sorted(keys)
    # gamma-only: exactly one of each +-G pair
    half = qe_gvector_order(lat, 100.0, gamma_only=True)
    assert 2 * len(half) - 1 == len(mill)


def test_fft_grid_of_pwx_silicon():
    lat = [[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]
    assert qe_fft_grid(lat, 80.0) == (24, 24, 24)  # pw.x 6.7 prints (24, 24, 24)
    graphite = Structure(
        Lattice.hexagonal(2.46, 6.70), ["C"] * 4,
        [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    )
    assert qe_fft_fact(graphite) == (1, 1, 2)  # 6_3 screw axis: c/2 translation
    with pytest.raises(ValueError, match="ecutrho"):
        qe_gvector_order(lat, -1.0)


@pytest.mark.parametrize("spin", [False, True])
def test_binary_round_trip(tmp_path, spin):
    s = structure()
    qcd = grid_to_qe(smooth_grid(s, spin=spin), 60.0)
    path = write_qe_charge_density(tmp_path / "charge-density.dat", qcd)
    back = read_qe_charge_density(path)
    assert back.nspin == (2 if spin else 1)
    np.testing.assert_array_equal(back.mill, qcd.mill)
    np.testing.assert_array_equal(back.rho_g, qcd.rho_g)
    np.testing.assert_array_equal(back.b, qcd.b)
    assert back.n_electrons == pytest.approx(8.0, abs=1e-10)
    np.testing.assert_allclose(back.lattice_angstrom, s.lattice.matrix, atol=1e-12)


def test_grid_qe_grid_is_exact_when_grid_holds_the_sphere():
    s = structure()
    grid = smooth_grid(s, spin=True)
    mill = qe_gvector_order(s.lattice.matrix, 60.0)
    # a density band-limited to the sphere survives grid -> QE -> grid exactly
    band = DensityGrid.from_fourier(s, grid.shape, mill, *grid.fourier(mill))
    back = qe_to_grid(grid_to_qe(band, 60.0), s, band.shape)
    np.testing.assert_allclose(back.total, band.total, atol=1e-12)
    np.testing.assert_allclose(back.magnetization, band.magnetization, atol=1e-12)
    # gamma-only half sphere rebuilds the same real density
    half = qe_to_grid(grid_to_qe(band, 60.0, gamma_only=True), s, band.shape)
    np.testing.assert_allclose(half.total, band.total, atol=1e-12)


def test_coarse_grid_is_zero_padded_and_keeps_electrons():
    s = structure()
    coarse = smooth_grid(s, shape=(8, 9, 10))
    qcd = grid_to_qe(coarse, 80.0)
    assert qcd.ngm == len(qe_gvector_order(s.lattice.matrix, 80.0))
    assert qcd.n_electrons == pytest.approx(8.0, abs=1e-10)
    outside = np.any(np.abs(qcd.mill) > (np.array([8, 9, 10]) - 1) // 2, axis=1)
    assert outside.any() and np.all(qcd.rho_g[:, outside] == 0)


def test_cell_mismatch_is_refused():
    s = structure()
    qcd = grid_to_qe(smooth_grid(s), 60.0)
    other = s.copy()
    other.scale_lattice(s.volume * 1.01)
    with pytest.raises(ValueError, match="different cell"):
        qe_to_grid(qcd, other)


def _good_file(tmp_path):
    return write_qe_charge_density(tmp_path / "c.dat", grid_to_qe(smooth_grid(structure()), 40.0))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\x00" * 7, "truncated"),
        (lambda b: b[:4] + b"\x07" + b[5:], "corrupt"),
        (lambda b: b"", "not a QE charge-density"),
        (lambda b: b[:8] + np.array([5], "<i4").tobytes() + b[12:], "record sizes"),  # ngm
        (lambda b: b[:12] + np.array([3], "<i4").tobytes() + b[16:], "bad header"),  # nspin
    ],
)
def test_corrupt_files_raise_value_error_naming_the_file(tmp_path, damage, message):
    path = _good_file(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        read_qe_charge_density(path)
    assert str(path) in str(err.value)


def test_missing_density_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_qe_charge_density(tmp_path / "nope.dat")
    with pytest.raises(FileNotFoundError, match="charge-density.dat"):
        read_qe_density(tmp_path)
    with pytest.raises(ValueError, match="structure="):
        read_qe_density(_good_file(tmp_path))  # no XML beside it


def test_paw_txt_round_trip_and_corruption(tmp_path):
    bec = np.linspace(-1, 2, 37)
    path = write_paw_txt(tmp_path / "paw.txt", bec)
    np.testing.assert_allclose(read_paw_txt(path), bec, rtol=1e-15)
    (tmp_path / "fortran.txt").write_text(" 0.5D+00  -1.25D-01\n 3.0D0\n")
    np.testing.assert_allclose(read_paw_txt(tmp_path / "fortran.txt"), [0.5, -0.125, 3.0])
    (tmp_path / "bad.txt").write_text(" 0.5 abc\n")
    with pytest.raises(ValueError, match="corrupt PAW"):
        read_paw_txt(tmp_path / "bad.txt")


def test_write_start_density_checks(tmp_path):
    s = structure()
    grid = smooth_grid(s)
    out = write_qe_start_density(tmp_path / "p.save", grid, 60.0, paw_becsum=np.ones(4))
    assert out == tmp_path / "p.save" / "charge-density.dat"
    assert (tmp_path / "p.save" / "paw.txt").is_file()
    back = read_qe_density(out, s, expected_electrons=8.0)
    assert back.n_electrons == pytest.approx(8.0, abs=1e-10)
    with pytest.raises(ValueError, match="electrons"):
        write_qe_start_density(tmp_path / "q.save", grid, 60.0, expected_electrons=16.0)
    with pytest.raises(ValueError, match="electrons"):
        read_qe_density(out, s, expected_electrons=9.0)
    # a spin-polarised reference needs a magnetisation
    spin_ref = grid_to_qe(smooth_grid(s, spin=True), 60.0)
    with pytest.raises(ValueError, match="magnetization"):
        write_qe_start_density(tmp_path / "r.save", grid, 60.0, reference=spin_ref)
    # the reference fixes order and gamma_only
    ref = QEChargeDensity(True, spin_ref.b, qe_gvector_order(s.lattice.matrix, 30.0, True),
                          np.zeros(len(qe_gvector_order(s.lattice.matrix, 30.0, True))))
    out = write_qe_start_density(tmp_path / "g.save", grid, 60.0, reference=ref)
    written = read_qe_charge_density(out)
    assert written.gamma_only and written.ngm == ref.ngm


def test_outdir_with_several_save_folders_is_ambiguous(tmp_path):
    grid = smooth_grid(structure())
    for prefix in ("a", "b"):
        write_qe_start_density(tmp_path / f"{prefix}.save", grid, 40.0)
    with pytest.raises(ValueError, match="several QE densities"):
        read_qe_density(tmp_path, grid.structure)
    one = read_qe_density(tmp_path / "a.save", grid.structure, expected_electrons=8.0)
    assert one.metadata["source"].endswith("a.save/charge-density.dat")


def test_corrupt_xml_beside_density_raises(tmp_path):
    grid = smooth_grid(structure())
    out = write_qe_start_density(tmp_path / "a.save", grid, 40.0)
    (out.parent / "data-file-schema.xml").write_text("<qes:espresso><output><atomic_str")
    with pytest.raises(ValueError, match="unreadable QE XML"):
        read_qe_density(out)


def test_gvector_order_ambiguity_flags_nearly_tied_shells():
    from mlcharge_workflows.density.qe_gvectors import qe_gvector_order_is_ambiguous

    # the cell on which the computed order differed from pw.x's at 6,212 of 23,393 G vectors
    feh = np.array([[0, 3.5406274155, 0], [0, 0, 3.5406274155], [2.5036016551, 0, 0]])
    assert qe_gvector_order_is_ambiguous(feh, 350.0)
    si = np.array([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]])
    assert not qe_gvector_order_is_ambiguous(si, 350.0)
