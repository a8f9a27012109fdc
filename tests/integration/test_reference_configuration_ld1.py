"""The semicore Fe reference in the training configuration, with the real ld1.x (seconds).

pslibrary 0.2.1's Fe (``3s2 4s2 3p6 3d6``, 16 electrons, ultrasoft) against the registry's
training Fe (``4s1 3d7``): ld1.x solves the file's pseudo-atom in ``3s2 4s1 3p6 3d7``.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.sad import read_upf_atomic_density
from mlcharge_workflows.engines.qe.density import predict_grid
from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.model import load_model
from mlcharge_workflows.model.atomic import AtomicReference
from mlcharge_workflows.model.configuration import matched_density, read_configuration, run_references
from mlcharge_workflows.pseudo import get_pseudo
from mlcharge_workflows.settings import get_settings

FE_SEMICORE = get_settings().pseudo_dir / "Fe.pbe-spn-rrkjus_psl.0.2.1.UPF"


@pytest.fixture(scope="module")
def shipped():
    return load_model()


def test_matched_reference_keeps_the_file_valence_and_moves_an_electron_into_3d(shipped):
    refs = run_references(shipped.table, {"Fe": FE_SEMICORE}, mode="training")
    rec = refs["Fe"].identity["configuration"]
    assert rec["matched"] is True and "fallback" not in rec
    assert (rec["file"], rec["training"], rec["used"]) == ("3s2 4s2 3p6 3d6", "4s1 3d7", "3s2 4s1 3p6 3d7")
    assert rec["ld1_consistency"] < 1e-5  # ld1.x reproduces the file's own PP_RHOATOM
    assert rec["change"] > 5e-3  # and the training configuration is another density

    own = read_upf_atomic_density(FE_SEMICORE)
    new, _ = matched_density(FE_SEMICORE, read_configuration(get_pseudo("Fe").source))
    # the same electrons on the whole mesh: nothing added, nothing rescaled
    assert np.sum(new.rho_atom * new.rab) == pytest.approx(np.sum(own.rho_atom * own.rab), abs=1e-6)
    assert np.sum(new.rho_atom * new.rab) == pytest.approx(16.0, abs=1e-4)
    # 4s -> 3d: charge moves inwards (3d peaks at 0.7 bohr, 4s at 2.4 bohr)
    inner = new.r < 1.5
    gained = np.sum(((new.rho_atom - own.rho_atom) * new.rab)[inner])
    assert 0.2 < gained < 1.0
    # the reference the model uses is that density (F(q) of both differ at low q)
    q = np.array([0.5, 1.0])  # Å⁻¹
    assert np.all(np.abs(refs["Fe"].transform(q) - AtomicReference.from_upf(FE_SEMICORE).transform(q)) > 0.02)  # 0.03, 0.11 e


def test_own_configuration_gives_back_the_file_density_exactly():
    own = read_upf_atomic_density(FE_SEMICORE)
    same, rec = matched_density(FE_SEMICORE, read_configuration(FE_SEMICORE))
    np.testing.assert_array_equal(same.rho_atom, own.rho_atom)
    assert rec["change"] == 0.0


def test_prediction_records_the_matched_configuration(shipped, monkeypatch):
    monkeypatch.setenv("MLCHARGE_REFERENCE_CONFIGURATION", "training")  # off by default
    s = Structure(Lattice.cubic(2.83), ["Fe"] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])
    prot = QEProtocol(ecutwfc_ry=30.0, ecutrho_ry=240.0, pseudopotentials={"Fe": str(FE_SEMICORE)})
    grid = predict_grid(s, (24, 24, 24), None, prot)
    fe = grid.metadata["reference"]["elements"]["Fe"]
    assert fe["source"]["configuration"]["matched"] is True
    assert fe["source"]["configuration"]["used"] == "3s2 4s1 3p6 3d7"
    assert fe["differs_from_training"] is True
    assert grid.n_electrons == pytest.approx(32.0, abs=1e-9)


def test_matching_is_off_by_default_and_the_record_says_so(shipped, monkeypatch):
    monkeypatch.delenv("MLCHARGE_REFERENCE_CONFIGURATION", raising=False)
    s = Structure(Lattice.cubic(2.83), ["Fe"] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])
    prot = QEProtocol(ecutwfc_ry=30.0, ecutrho_ry=240.0, pseudopotentials={"Fe": str(FE_SEMICORE)})
    grid = predict_grid(s, (24, 24, 24), None, prot)
    rec = grid.metadata["reference"]["elements"]["Fe"]["source"]["configuration"]
    assert rec["matched"] is False and rec["mode"] == "file"
    assert rec["used"] == "3s2 4s2 3p6 3d6" and "matching off" in rec["fallback"]


def test_a_file_ld1_cannot_solve_falls_back_with_the_reason(shipped):
    """Debian's semilocal FHI Fe (4s2 3d6, 8 electrons): ld1.x runs but writes no density
    for it (its test of the file's own configuration gives nonsense eigenvalues), so the
    consistency check refuses the difference and the file's own density is used, recorded."""
    fhi = get_settings().pseudo_dir / "Fe.pbe-mt_fhi.UPF"
    refs = run_references(shipped.table, {"Fe": fhi}, mode="training")
    rec = refs["Fe"].identity["configuration"]
    assert rec["matched"] is False and rec["file"] == "4s2 3d6"
    assert "does not reproduce" in rec["fallback"]
    q = np.linspace(0.0, 20.0, 200)
    np.testing.assert_array_equal(refs["Fe"].transform(q), AtomicReference.from_upf(fhi).transform(q))
