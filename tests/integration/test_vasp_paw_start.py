"""Whether VASP read the ML CHGCAR, decided from the run's OUTCAR and stdout, through
atomate2's mock (reference folders ml_static_read / ml_static_discarded, built by
tests/test_data/vasp/build_reference.py from the messages of VASP's source)."""

from __future__ import annotations

import pytest

pytest.importorskip("atomate2")

from test_vasp_mock import (  # noqa: E402, F401 - fixtures and helpers of the VASP mock tests
    _kwargs,
    _run,
    mock_vasp,
    potcar_dir,
    sic,
    static_gen,
)

from mlcharge_workflows.common.documents import savings_document  # noqa: E402
from mlcharge_workflows.engines.vasp.flows import VaspArmReader  # noqa: E402
from mlcharge_workflows.engines.vasp.jobs import MLDensityMaker, MLStaticMaker  # noqa: E402


def _ml_static(mock_vasp, tmp_path, ref: str, **maker_kwargs):
    set_refs, seen = mock_vasp
    refs = {"ml static": ref, "baseline static": "baseline_static"}
    set_refs(refs, _kwargs(refs))
    gen = static_gen()
    predict = MLDensityMaker(input_set_generator=gen, predictor="sad").make(sic())
    static = MLStaticMaker(input_set_generator=gen, density_maker=None, **maker_kwargs).make(
        sic(), ml_density=predict.output,
        reference={"energy_eV": -27.11090125, "total_magnetization": 0.0})
    from jobflow import Flow

    out = _run(Flow([predict, static]), tmp_path)
    return out[predict.uuid][1].output, out[static.uuid], seen


@pytest.mark.parametrize(
    ("ref", "status", "used"),
    [("ml_static_discarded", "discarded", False), ("ml_static_read", "read", True),
     ("ml_static", "unverified", True)],
)
def test_ml_static_records_what_vasp_did_with_the_chgcar(mock_vasp, tmp_path, ref, status,
                                                         used):
    """vasprun.xml echoes ICHARG=1 in all three runs; OUTCAR and vasp.out decide."""
    pred, outs, seen = _ml_static(mock_vasp, tmp_path, ref)
    assert seen["ml static"]["incar"]["ICHARG"] == 1
    assert set(outs) == {1}  # no rerun: a discarded start already ran from atoms
    task = outs[1].output
    assert task.calcs_reversed[0].input.parameters["ICHARG"] == 1
    rec = task.additional_json["ml_start"]
    assert rec["start_evidence"]["status"] == status
    if status == "discarded":
        assert rec["status"] == "abandoned" and rec["start"] == "atomic"
        assert rec["fallback"].startswith("ml_density_not_read: VASP discarded the CHGCAR")
        assert "PAW occupancies are missing on CHGCAR" in rec["fallback"]
        assert rec["start_evidence"]["files"] == ["OUTCAR", "vasp.out"]
    else:
        assert rec["status"] == "active" and rec["fallback"] is None

    baseline = {"dir_name": "b", "state": "successful", "output": {"energy": -27.1},
                "additional_json": {"scf_attempts": [{"scf_iterations": 17, "wall_s": 1.0}]}}
    doc = savings_document.original("SiC", sic(), VaspArmReader(), baseline, pred, task)
    assert doc.ml_density_used is used
    assert doc.details.ml_start_evidence["status"] == status
    (attempt,) = doc.details.ml_attempts
    assert attempt.start == ("ml" if used else "atomic")
    assert attempt.density_read_from_file is {"read": True, "discarded": False,
                                              "unverified": None}[status]
    if not used:
        assert doc.fallback == rec["fallback"] and doc.scf_iterations.ml == 17
