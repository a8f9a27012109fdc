"""POTCAR atomic pseudo charge density: layout, VASP's interpolation, pymatgen's PotcarSingle.

No real POTCAR exists here (licensed): datasets are written in VASP's layout from known
radial data (a Gaussian density, whose transform is analytic) with ``format_potcar_dataset``.
"""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest

from mlcharge_workflows.density.potcar import (
    format_potcar_dataset,
    parse_potcar_atomic_density,
    potcar_atomic_density,
    read_potcar_atomic_densities,
)

NPSPTS, PSGMAX = 1000, 60.0
Q = np.arange(NPSPTS) * PSGMAX / NPSPTS


def gaussian_rho_q(z: float, alpha: float, q: np.ndarray = Q) -> np.ndarray:
    """Transform of ``z (alpha/pi)^1.5 exp(-alpha r^2)``: ``z exp(-q^2 / (4 alpha))``."""
    return z * np.exp(-(q**2) / (4 * alpha))


def test_parse_reads_layout_and_interpolates_like_vasp():
    text = format_potcar_dataset("Fe_pv", 14.0, gaussian_rho_q(14.0, 2.0), PSGMAX)
    atom = parse_potcar_atomic_density(text)
    assert (atom.symbol, atom.element, atom.z_valence) == ("Fe_pv", "Fe", 14.0)
    assert atom.psgmax == PSGMAX and len(atom.values) == NPSPTS
    assert atom.title == "PAW_PBE Fe_pv 01Jan2000" and len(atom.sha256) == 64
    q = np.linspace(0.0, 55.0, 1001)
    # four-point cubic interpolation of a smooth table: far below the table's own precision
    np.testing.assert_allclose(atom.radial_transform(q), gaussian_rho_q(14.0, 2.0, q), atol=1e-5)
    assert atom.radial_transform(np.array([0.0]))[0] == pytest.approx(14.0)
    # zero beyond PSGMAX - 3 PSGMAX / NPSPTS, as VASP's RHOATO
    assert np.all(atom.radial_transform(np.array([atom.q_max + 1e-6, 70.0])) == 0.0)


def test_concatenated_gzipped_potcar(tmp_path):
    texts = [
        format_potcar_dataset("Si", 4.0, gaussian_rho_q(4.0, 1.0), PSGMAX),
        format_potcar_dataset("O_s", 6.0, gaussian_rho_q(6.0, 3.0), 45.0),
    ]
    path = tmp_path / "POTCAR.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("".join(texts))
    atoms = read_potcar_atomic_densities(path)
    assert [a.symbol for a in atoms] == ["Si", "O_s"]
    assert atoms[1].psgmax == 45.0 and atoms[1].values[0] == pytest.approx(6.0)


def test_pymatgen_potcar_single_round_trip():
    from pymatgen.io.vasp.inputs import PotcarSingle

    text = format_potcar_dataset("Ni_pv", 16.0, gaussian_rho_q(16.0, 4.0), PSGMAX)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown checksum: a synthetic file
        single = PotcarSingle(text, symbol="Ni_pv")
    assert single.zval == 16.0
    atom = potcar_atomic_density(single)
    assert atom.symbol == "Ni_pv" and atom.identity()["kind"] == "POTCAR"


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t: t.replace(" local part", " nothing"), "local part"),
        (lambda t: t.replace(" atomic pseudo charge-density", " something else"), "atomic pseudo"),
        (lambda t: t[: t.index(" atomic pseudo charge-density") + 40], "values, expected"),
        (lambda t: "\n".join(["x", "y", *t.splitlines()[2:]]), "element|valence"),
    ],
)
def test_bad_potcar_is_refused(mutate, match):
    text = format_potcar_dataset("C", 4.0, gaussian_rho_q(4.0, 1.5), PSGMAX)
    with pytest.raises(ValueError, match=match):
        parse_potcar_atomic_density(mutate(text), "bad POTCAR")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_potcar_atomic_densities(tmp_path / "POTCAR")
