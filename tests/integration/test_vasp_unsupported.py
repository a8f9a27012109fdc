"""VASP: an element the density model does not know falls back to ICHARG=2 with the reason
recorded, by default, instead of failing the flow (atomate2's VASP mock)."""

from __future__ import annotations

import pytest

pytest.importorskip("atomate2")

from pymatgen.core import Lattice, Structure  # noqa: E402
from test_vasp_mock import (  # noqa: E402, F401 - fixtures and helpers of the VASP mock tests
    _kwargs,
    _model_weights_shipped,
    _run,
    mock_vasp,
    potcar_dir,
    sic,
    static_gen,
)

import mlcharge_workflows.engines.vasp.predict as vasp_predict  # noqa: E402
from mlcharge_workflows.engines.vasp.jobs import MLDensityMaker, MLStaticMaker  # noqa: E402

pytestmark = pytest.mark.skipif(not _model_weights_shipped(), reason="no shipped model weights")


def test_density_job_records_unknown_elements_without_a_chgcar(tmp_path) -> None:
    rho = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.3), ["Rh", "O"],
                                    [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    job = MLDensityMaker(input_set_generator=static_gen()).make(rho)
    doc = _run(job, tmp_path)[job.uuid][1].output
    assert doc.fallback == "unsupported_elements: Rh" and doc.path is None and doc.error is None
    assert not (tmp_path / "CHGCAR").exists()
    with pytest.raises(ValueError, match="'atoms' or 'error'"):
        MLDensityMaker.make.original(MLDensityMaker(unsupported="x"), rho)


def test_ml_static_with_unknown_element_runs_from_atoms_and_says_so(mock_vasp, tmp_path, monkeypatch):
    """The default ML static (its own prediction job) on a cell the model does not know:
    the flow finishes, VASP starts from atoms (ICHARG=2, no CHGCAR) and the task document
    records the fallback. SiC stands in (the mock's reference); the model is told C is unknown."""
    set_refs, seen = mock_vasp
    set_refs({"ml static": "baseline_static"}, _kwargs(["ml static"]))
    monkeypatch.setattr(vasp_predict, "model_unknown_elements", lambda s, p=None: ["C"])
    gen = static_gen()
    static = MLStaticMaker(input_set_generator=gen,
                           density_maker=MLDensityMaker(input_set_generator=gen)).make(sic())
    out = _run(static, tmp_path)
    task = next(r[1].output for r in out.values() if r[1].output is not None
                and getattr(r[1].output, "additional_json", None))
    rec = task.additional_json["ml_start"]
    assert rec["status"] == "abandoned" and rec["fallback"] == "unsupported_elements: C"
    assert seen["ml static"]["incar"]["ICHARG"] == 2 and "chgcar" not in seen["ml static"]
