"""Symmetry of the density model, float64, to float tolerance (e3nn's assert_equivariant style).

A small random model (untrained weights: symmetry must hold for any weights) with a
synthetic atomic-density table, so these tests need no UPF file and run in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from mlcharge_workflows.model import DensityModel, ModelConfig
from mlcharge_workflows.model.atomic import AtomicDensityTable

TOL = 1e-9  # float64


def tiny_model(dtype=torch.float64, use_sad: bool = True, learn_moments: bool = False) -> DensityModel:
    """A random small model over Si, C, Ni with Gaussian 'atomic densities'."""
    torch.manual_seed(0)
    elements = ["C", "Ni", "Si"]
    z = [4.0, 10.0, 4.0]
    width = {"C": 3.0, "Ni": 6.0, "Si": 2.0}
    table = AtomicDensityTable.from_transforms(
        elements, z, lambda el, q: np.exp(-(q**2) / (4 * width[el])), q_max=30.0
    )
    cfg = ModelConfig(
        elements=elements,
        cutoff=3.5,
        n_layers=2,
        irreps_hidden="8x0e + 4x1o + 2x2e + 2x3o + 2x4e",
        orbital_muls=(2, 1, 1, 1, 1),
        magnetization_muls=(1, 1),
        ecutrho_ry={"C": 120.0, "Ni": 160.0, "Si": 100.0},
        use_sad=use_sad,
        learn_moments=learn_moments,
    )
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn builds its constants in the default dtype
    try:
        model = DensityModel(cfg, table).to(dtype)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():  # make the correction large enough to matter in the checks
        model.output_scale.fill_(1.0)
    return model.eval()


def sic_structure() -> Structure:
    lat = Lattice([[0.1, 2.2, 2.1], [2.15, 0.05, 2.2], [2.2, 2.1, -0.1]])
    return Structure(lat, ["Si", "C", "Ni"], [[0.01, 0.02, 0.0], [0.26, 0.24, 0.27], [0.6, 0.55, 0.5]])


def coefficients(model: DensityModel, structure: Structure, mill: np.ndarray):
    cell = model.prepare(structure)
    model.attach_mill(cell, mill)
    with torch.no_grad():
        tot, mag = model.fourier(cell)
    return tot.numpy(), None if mag is None else mag.numpy()


MILL = np.array([[i, j, k] for i in range(-3, 4) for j in range(-3, 4) for k in range(-3, 4)])


def rotated(structure: Structure, rot: np.ndarray) -> Structure:
    """Rotate (or rotate-invert) the lattice and positions; fractional coordinates are kept."""
    return Structure(Lattice(structure.lattice.matrix @ rot.T), structure.species, structure.frac_coords)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_network_output_is_equivariant(model):
    """Per-atom orbital coefficients transform as their irreps (e3nn's assert_equivariant)."""
    s = sic_structure()
    cell = model.prepare(s)
    src, dst, shift = cell.edges
    images = np.linalg.solve(s.lattice.matrix.T, shift.T).T.round()  # integer image offsets
    species = torch.as_tensor(cell.species)
    moments = torch.as_tensor(cell.moments, dtype=torch.float64)

    def func(pos, lattice):
        lattice = lattice.reshape(3, 3)
        sh = torch.as_tensor(images, dtype=pos.dtype) @ lattice
        return model.network(species, moments, pos, torch.as_tensor(src), torch.as_tensor(dst), sh)

    pos = torch.as_tensor(s.cart_coords, dtype=torch.float64)
    lat = torch.tensor(s.lattice.matrix.reshape(1, 9), dtype=torch.float64).expand(len(s), 9)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # random rotations and D matrices in float64
    try:
        errors = assert_equivariant(
            lambda p, l: func(p, l[0]),
            args_in=[pos, lat],
            irreps_in=["cartesian_points", o3.Irreps("3x1o")],
            irreps_out=[model.network.irreps_out],
            tolerance=TOL,
        )
    finally:
        torch.set_default_dtype(old)
    assert max(float(e.max()) for e in errors.values()) < TOL


@pytest.mark.parametrize("improper", [False, True])
def test_density_invariant_under_rotation(model, improper):
    s = sic_structure()
    rot = Rotation.random(random_state=3).as_matrix()
    if improper:
        rot = -rot
    tot, mag = coefficients(model, s, MILL)
    tot_r, mag_r = coefficients(model, rotated(s, rot), MILL)
    assert np.abs(tot).max() > 1e-3 and mag is not None
    np.testing.assert_allclose(tot_r, tot, atol=TOL)
    np.testing.assert_allclose(mag_r, mag, atol=TOL)


def test_density_translation_gives_phase(model):
    s = sic_structure()
    t = np.array([0.137, -0.42, 0.31])
    moved = Structure(s.lattice, s.species, s.frac_coords + t)
    tot, mag = coefficients(model, s, MILL)
    tot_t, mag_t = coefficients(model, moved, MILL)
    phase = np.exp(-2j * np.pi * MILL @ t)
    np.testing.assert_allclose(tot_t, tot * phase, atol=TOL)
    np.testing.assert_allclose(mag_t, mag * phase, atol=TOL)


def test_density_invariant_under_permutation_and_wrapping(model):
    s = sic_structure()
    order = [2, 0, 1]
    perm = Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order] + [[1, 0, -1], [0, 2, 0], [-1, 0, 0]])
    tot, mag = coefficients(model, s, MILL)
    tot_p, mag_p = coefficients(model, perm, MILL)
    np.testing.assert_allclose(tot_p, tot, atol=TOL)
    np.testing.assert_allclose(mag_p, mag, atol=TOL)


def test_supercell_gives_same_density(model):
    """A 2x1x1 supercell has the primitive coefficients at even m1 and zero at odd m1."""
    s = sic_structure()
    sup = s * (2, 1, 1)
    mill_sup = np.array([[i, j, k] for i in range(-4, 5) for j in range(-2, 3) for k in range(-2, 3)])
    tot_s, mag_s = coefficients(model, sup, mill_sup)
    even = mill_sup[:, 0] % 2 == 0
    prim = mill_sup[even] * np.array([1, 1, 1])
    prim[:, 0] //= 2
    tot_p, mag_p = coefficients(model, s, prim)
    np.testing.assert_allclose(tot_s[even], tot_p, atol=TOL)
    np.testing.assert_allclose(tot_s[~even], 0.0, atol=TOL)
    np.testing.assert_allclose(mag_s[even], mag_p, atol=TOL)


def test_prediction_is_continuous_across_cutoff(model):
    """Moving an atom across the graph cutoff changes the density smoothly."""
    lat = Lattice.cubic(12.0)
    cut = model.config.cutoff
    vals = []
    for d in (cut - 1e-4, cut + 1e-4):
        s = Structure(lat, ["Si", "C"], [[0, 0, 0], [d / 12.0, 0, 0]], coords_are_cartesian=False)
        vals.append(coefficients(model, s, MILL)[0])
    assert np.abs(vals[0] - vals[1]).max() < 1e-5


@pytest.mark.parametrize("improper", [False, True])
def test_learned_moments_model_is_invariant_and_time_reversal_odd(improper):
    """learn_moments: the per-atom moment scalar keeps rotation invariance and time reversal."""
    model = tiny_model(learn_moments=True)
    s = sic_structure()
    rot = Rotation.random(random_state=5).as_matrix() * (-1 if improper else 1)
    tot, mag = coefficients(model, s, MILL)
    tot_r, mag_r = coefficients(model, rotated(s, rot), MILL)
    np.testing.assert_allclose(tot_r, tot, atol=TOL)
    np.testing.assert_allclose(mag_r, mag, atol=TOL)
    up = s.copy(site_properties={"magmom": [0, 0, 2.0]})
    down = s.copy(site_properties={"magmom": [0, 0, -2.0]})
    tot_u, mag_u = coefficients(model, up, MILL)
    tot_d, mag_d = coefficients(model, down, MILL)
    np.testing.assert_allclose(tot_d, tot_u, atol=TOL)
    np.testing.assert_allclose(mag_d, -mag_u, atol=TOL)
    assert np.abs(mag_u).max() > 1e-3


def test_learned_moment_scales_the_atomic_magnetisation():
    """The last magnetisation output moves the atom's SAD moment: start + delta; -start switches it off."""
    model = tiny_model(learn_moments=True)
    cell = model.prepare(sic_structure())
    model.attach_mill(cell, MILL)
    with torch.no_grad():
        c_tot, c_mag = model.orbital_coefficients([cell])[0]
        assert c_mag.shape[1] == model.mag_layout.dim + 1
        start = torch.as_tensor(cell.moments)
        off = torch.zeros_like(c_mag)
        off[:, -1] = -start
        _, mag_off = model.fourier(cell, (c_tot, off))
        assert float(mag_off.abs().max()) < 1e-12  # no orbital, no atomic moment left
        double = torch.zeros_like(c_mag)
        double[:, -1] = start
        _, mag_2 = model.fourier(cell, (c_tot, double))
        _, mag_1 = model.fourier(cell, (c_tot, torch.zeros_like(c_mag)))
        np.testing.assert_allclose(mag_2.numpy(), 2 * mag_1.numpy(), atol=1e-12)
        sad: list = []
        model.fourier(cell, (c_tot, double), sad_out=sad)  # the SAD reference keeps the start moments
        np.testing.assert_allclose(sad[1].numpy(), mag_1.numpy(), atol=1e-12)
