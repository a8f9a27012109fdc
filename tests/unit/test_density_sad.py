"""Superposition of atomic densities from UPF files (pw.x agreement is in tests/integration)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.grid import fft_miller
from mlcharge_workflows.density.sad import (
    read_upf_atomic_density,
    sad_coefficients,
    superposition_density,
)
from mlcharge_workflows.settings import get_settings

PSEUDO = get_settings().pseudo_dir
PSEUDOS = {"Si": PSEUDO / "Si.pbe-rrkj.UPF", "C": PSEUDO / "C.pbe-rrkjus.UPF"}


def sic() -> Structure:
    return Structure(Lattice.cubic(4.36), ["Si", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])


@pytest.mark.parametrize(
    "name, element, z",
    [
        ("Si.pbe-rrkj.UPF", "Si", 4.0),  # UPF v2, NC
        ("C.pbe-rrkjus.UPF", "C", 4.0),  # UPF v2, US
        ("CorelUSPBE.RRKJ3.UPF", "Co", 9.0),  # UPF v1
    ],
)
def test_read_upf(name, element, z):
    atom = read_upf_atomic_density(PSEUDO / name)
    assert atom.element == element and atom.z_valence == z
    assert atom.msh % 2 == 1 and atom.r[atom.msh - 2] <= 10.0 < atom.r[atom.msh]
    # PP_RHOATOM integrates to about the valence charge
    assert atom.radial_transform(np.array([0.0]))[0] == pytest.approx(z, rel=2e-3)


def test_bad_upf(tmp_path):
    (tmp_path / "x.UPF").write_text("<UPF version='2.0.1'>\n<PP_INFO>nothing</PP_INFO>\n")
    with pytest.raises(ValueError, match="PP_HEADER"):
        read_upf_atomic_density(tmp_path / "x.UPF")
    with pytest.raises(FileNotFoundError):
        read_upf_atomic_density(tmp_path / "missing.UPF")


def test_superposition_is_normalised_and_positive():
    s = sic()
    grid = superposition_density(s, (30, 30, 30), PSEUDOS, magnetization={"Si": 0.5})
    assert grid.n_electrons == pytest.approx(8.0, abs=1e-12)
    assert grid.total.min() > -1e-3 * grid.total.max()
    # m = fraction * rho_atom per species (C carries none), scaled like the total (as pw.x)
    raw = {el: float(read_upf_atomic_density(p).radial_transform(np.zeros(1))[0])
           for el, p in PSEUDOS.items()}
    expected = 0.5 * raw["Si"] * 8.0 / (raw["Si"] + raw["C"])
    assert grid.total_magnetization == pytest.approx(expected, rel=1e-10)
    _, mag = sad_coefficients(s, np.zeros((1, 3), int), PSEUDOS, {"Si": 0.5})
    assert mag[0].real * s.volume == pytest.approx(0.5 * raw["Si"], rel=1e-9)


def test_interpolated_transform_matches_direct_integral():
    s = sic()
    mill = fft_miller((16, 16, 16)).reshape(-1, 3)
    total, _ = sad_coefficients(s, mill, PSEUDOS)
    q = np.linalg.norm(mill @ s.lattice.reciprocal_lattice.matrix, axis=1) * 0.529177210903
    frac = s.frac_coords
    direct = np.zeros(len(mill), complex)
    for site, f in zip(s, frac):
        atom = read_upf_atomic_density(PSEUDOS[site.species_string])
        direct += atom.radial_transform(q) * np.exp(-2j * np.pi * mill @ f) / s.volume
    assert np.abs(total - direct).max() < 1e-8 * np.abs(direct).max()


def test_missing_pseudo_and_bad_magnetization():
    with pytest.raises(ValueError, match="no pseudopotential given for"):
        superposition_density(sic(), (8, 8, 8), {"Si": PSEUDOS["Si"]})
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        superposition_density(sic(), (8, 8, 8), PSEUDOS, magnetization={"Si": 2.0})


def test_fast_on_a_large_grid():
    s = sic().make_supercell([2, 2, 2], in_place=False)
    superposition_density(s, (16, 16, 16), PSEUDOS)  # warm the radial tables
    start = time.perf_counter()
    grid = superposition_density(s, (72, 72, 72), PSEUDOS)
    elapsed = time.perf_counter() - start
    assert grid.n_electrons == pytest.approx(64.0, abs=1e-9)
    assert elapsed < 10.0  # about 0.5 s on one core; generous for a loaded CI machine
