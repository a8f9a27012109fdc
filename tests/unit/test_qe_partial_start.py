"""A cell with an element the model does not know: partial ML start (default) or atoms."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.engines.qe.density import predict_grid
from mlcharge_workflows.engines.qe.jobs import UNSUPPORTED_DEFAULT, QEPredictDensityMaker
from mlcharge_workflows.engines.qe.sets import QEProtocol


@pytest.fixture
def rho() -> Structure:  # Rh: not in the shipped model (a user's pseudopotential); O: in it
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.3), ["Rh", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def test_partial_grid_is_learned_plus_reference(rho, user_rh) -> None:
    from mlcharge_workflows.density.sad import superposition_density
    from mlcharge_workflows.model import load_model, predict_density

    proto = QEProtocol(pseudopotentials={"Rh": str(user_rh)})
    shape = (18, 18, 18)
    assert "Rh" not in load_model().supported_elements
    with pytest.raises(ValueError):
        predict_grid(rho, shape, None, proto)  # without partial the model refuses Rh
    grid = predict_grid(rho, shape, None, proto, partial=True)
    assert grid.metadata["partial_start"] == ["Rh"]
    assert grid.n_electrons == pytest.approx(proto.n_electrons(rho), rel=1e-6)  # no rescaling
    o_only = rho.copy().remove_species(["Rh"])
    rh_only = rho.copy().remove_species(["O"])
    learned = predict_density(o_only, shape, load_model(),
                              reference={"O": str(proto.pseudos(rho)["O"].source)})
    atoms = superposition_density(rh_only, shape, {"Rh": proto.pseudos(rho)["Rh"].source})
    assert np.allclose(grid.total, learned.total + atoms.total)


def test_predict_job_partial_by_default_and_atoms_on_request(tmp_path, monkeypatch, rho, user_rh) -> None:
    from jobflow import run_locally

    monkeypatch.chdir(tmp_path)
    assert UNSUPPORTED_DEFAULT == "partial"
    proto = QEProtocol(ecutrho_ry=120, ecutwfc_ry=30, pseudopotentials={"Rh": str(user_rh)})
    job = QEPredictDensityMaker(protocol=proto).make(rho)
    out = run_locally(job, log=False, ensure_success=True)[job.uuid][1].output
    assert out.fallback is None and out.partial_start == ["Rh"] and out.path
    assert out.n_electrons == pytest.approx(proto.n_electrons(rho), rel=1e-6)
    assert proto.n_electrons(rho) == pytest.approx(6 + proto.pseudos(rho)["Rh"].z_valence)
    job = QEPredictDensityMaker(unsupported="atoms", protocol=proto).make(rho)
    out = run_locally(job, log=False, ensure_success=True)[job.uuid][1].output
    assert out.fallback == "unsupported_elements: Rh" and out.path is None
    assert out.partial_start is None
