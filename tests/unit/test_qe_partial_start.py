"""A cell with an element the model does not know: partial ML start (default) or atoms."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.engines.qe.density import predict_grid
from mlcharge_workflows.engines.qe.jobs import UNSUPPORTED_DEFAULT, QEPredictDensityMaker
from mlcharge_workflows.engines.qe.sets import QEProtocol


@pytest.fixture
def mgo() -> Structure:  # Mg: not in the shipped model; O: in it
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def test_partial_grid_is_learned_plus_reference(mgo) -> None:
    from mlcharge_workflows.density.sad import superposition_density
    from mlcharge_workflows.model import load_model, predict_density

    proto = QEProtocol()
    shape = (18, 18, 18)
    with pytest.raises(ValueError):
        predict_grid(mgo, shape, None, proto)  # without partial the model refuses Mg
    grid = predict_grid(mgo, shape, None, proto, partial=True)
    assert grid.metadata["partial_start"] == ["Mg"]
    assert grid.n_electrons == pytest.approx(proto.n_electrons(mgo), rel=1e-6)  # no rescaling
    o_only = mgo.copy().remove_species(["Mg"])
    mg_only = mgo.copy().remove_species(["O"])
    learned = predict_density(o_only, shape, load_model(),
                              reference={"O": str(proto.pseudos(mgo)["O"].source)})
    atoms = superposition_density(mg_only, shape, {"Mg": proto.pseudos(mgo)["Mg"].source})
    assert np.allclose(grid.total, learned.total + atoms.total)


def test_predict_job_partial_by_default_and_atoms_on_request(tmp_path, monkeypatch, mgo) -> None:
    from jobflow import run_locally

    monkeypatch.chdir(tmp_path)
    assert UNSUPPORTED_DEFAULT == "partial"
    job = QEPredictDensityMaker(protocol=QEProtocol(ecutrho_ry=120, ecutwfc_ry=30)).make(mgo)
    out = run_locally(job, log=False, ensure_success=True)[job.uuid][1].output
    assert out.fallback is None and out.partial_start == ["Mg"] and out.path
    assert out.n_electrons == pytest.approx(8.0, rel=1e-6)
    job = QEPredictDensityMaker(unsupported="atoms").make(mgo)
    out = run_locally(job, log=False, ensure_success=True)[job.uuid][1].output
    assert out.fallback == "unsupported_elements: Mg" and out.path is None
    assert out.partial_start is None
