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
    pred, outs, seen = _ml_static(mock_vasp, tmp_path, ref, paw_occupancies="none")
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


def _relax_dir(tmp_path, potcar_dir, lmaxmix=None, potcar=True):
    """A finished run of the same cell before the static (the mock baseline's outputs:
    a CHGCAR with made-up occupancies 0.1, 0.11, ...), holding this library's POTCAR."""
    import shutil

    from pymatgen.io.vasp import Incar
    from test_vasp_mock import REF

    prev = shutil.copytree(REF / "baseline_static" / "outputs", tmp_path / "relax")
    if potcar:  # what VASP ran with: the user's POTCARs, C then Si as in the POSCAR
        lib = potcar_dir / "POT_GGA_PAW_PBE_54"
        (prev / "POTCAR").write_text((lib / "POTCAR.C").read_text()
                                     + (lib / "POTCAR.Si").read_text())
    if lmaxmix is not None:
        incar = Incar.from_file(prev / "INCAR")
        incar["LMAXMIX"] = lmaxmix
        incar.write_file(prev / "INCAR")
    return prev


@pytest.mark.parametrize(
    ("lmaxmix", "potcar", "source", "note"),
    [(None, True, "prev_dir", "copied from prev_dir"),
     (4, True, "donor", "LMAXMIX=4"),  # another occupancy count per ion: not usable
     (None, False, "donor", "other POTCARs")],  # its vasprun names PAW_PBE Si 05Jan2001
)
def test_chained_static_takes_occupancies_from_prev_dir(mock_vasp, tmp_path, potcar_dir,
                                                        lmaxmix, potcar, source, note):
    """relax -> ML static (atomate2's chain): the prediction copies the relaxation CHGCAR's
    occupancies when POTCARs and LMAXMIX agree, and no donor runs; otherwise a donor does."""
    from test_vasp_mock import _final

    set_refs, seen = mock_vasp
    set_refs({"ml static": "ml_static"}, {"ml static": {"incar_settings": ["ICHARG", "ISTART"]}})
    prev = _relax_dir(tmp_path, potcar_dir, lmaxmix, potcar)
    static = MLStaticMaker(
        input_set_generator=static_gen(), density_maker=MLDensityMaker(predictor="sad"),
    ).make(sic(), prev_dir=f"fileserver.example:{prev}")
    out = _run(static, tmp_path / "run")
    pred = next(r[1].output for r in out.values()
                if type(r[1].output).__name__ == "MLDensityDocument")
    assert note in pred.paw_occupancies_note and pred.paw is True
    aug = seen["ml static"]["chgcar"].metadata["data_aug"]
    if source == "prev_dir":
        assert pred.paw_occupancies["how"] == "prev_dir"
        assert pred.paw_occupancies["source"].startswith(str(prev))
        assert "occupancy donor" not in seen
        assert aug["total"][1][0] == pytest.approx(0.1)  # the relaxation's
    else:
        assert pred.paw_occupancies is None and "occupancy donor" in seen
        assert aug["total"][1][0] == pytest.approx(0.2)  # the donor's
    rec = _final(out, static.uuid).additional_json["ml_start"]
    assert rec["status"] == "active"
    assert ("occupancy_donor" in rec) is (source == "donor")


def test_prev_dir_only_refuses_without_occupancies(mock_vasp, tmp_path, monkeypatch):
    """paw_occupancies='prev_dir' and none to copy: no donor, the ML start is refused and
    the run starts from atoms, saying why."""
    set_refs, seen = mock_vasp
    set_refs({"ml static": "baseline_static"}, _kwargs(["ml static"]))
    gen = static_gen()
    predict = MLDensityMaker(input_set_generator=gen, predictor="sad").make(sic())
    static = MLStaticMaker(input_set_generator=gen, density_maker=None,
                           paw_occupancies="prev_dir").make(sic(), ml_density=predict.output)
    from jobflow import Flow

    out = _run(Flow([predict, static]), tmp_path)
    rec = out[static.uuid][1].output.additional_json["ml_start"]
    assert rec["status"] == "abandoned" and rec["start"] == "atomic"
    assert rec["fallback"].startswith("no_paw_occupancies: the CHGCAR has no PAW occupancies")
    assert "no prev_dir" in rec["fallback"]
    assert seen["ml static"]["incar"]["ICHARG"] == 2 and "chgcar" not in seen["ml static"]
    assert "occupancy donor" not in seen
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="paw_occupancies must be one of"):
        MLStaticMaker.make.original(MLStaticMaker(paw_occupancies="guess"), sic(),
                                    ml_density=out[predict.uuid][1].output)
    assert not (tmp_path / "CHGCAR").exists()  # refused before anything was placed


def test_ml_nscf_stopped_by_vasp_fails_naming_the_cause(mock_vasp, tmp_path, caplog):
    """ICHARG=11 on a CHGCAR VASP cannot read: VASP stops; the job fails with its message
    instead of atomate2's parsing error (paw_occupancies='none': no donor)."""
    from jobflow import run_locally
    from test_vasp_mock import ENCUT, NSCF_KEYS, _store

    from mlcharge_workflows.engines.vasp.jobs import MLNonSCFMaker
    from atomate2.vasp.sets.core import NonSCFSetGenerator

    set_refs, seen = mock_vasp
    set_refs({"ml non-scf": "ml_nscf_uniform_stopped"},
             {"ml non-scf": {"incar_settings": NSCF_KEYS}})
    maker = MLNonSCFMaker(
        input_set_generator=NonSCFSetGenerator(user_incar_settings={"ENCUT": ENCUT}),
        density_maker=MLDensityMaker(predictor="sad"), paw_occupancies="none")
    flow = maker.make(sic(), mode="uniform")
    run_locally(flow, create_folders=True, root_dir=tmp_path, ensure_success=False,
                store=_store())
    assert seen["ml non-scf"]["incar"]["ICHARG"] == 11 and "occupancy donor" not in seen
    assert "VASP did not read the CHGCAR and stopped" in caplog.text
    assert "could not be read from file CHGCAR (ICHARG>10: VASP stopped)" in caplog.text


def test_a_donor_without_occupancies_is_a_recorded_fallback(mock_vasp, tmp_path):
    """A donor folder without a usable CHGCAR (the ml_static_read reference outputs stand
    in: they hold none): the ML static runs from atoms, records why, and still pays for
    the donor (its 11 steps here)."""
    from jobflow import Flow
    from test_vasp_mock import _final

    set_refs, seen = mock_vasp
    refs = {"occupancy donor": "ml_static_read", "ml static": "baseline_static"}
    set_refs(refs, {"occupancy donor": {"incar_settings": [], "check_inputs": ["poscar"]},
                    "ml static": {"incar_settings": ["ISTART"]}})
    gen = static_gen()
    predict = MLDensityMaker(input_set_generator=gen, predictor="sad").make(sic())
    static = MLStaticMaker(input_set_generator=gen, density_maker=None).make(
        sic(), ml_density=predict.output)
    out = _run(Flow([predict, static]), tmp_path)
    task = _final(out, static.uuid)
    rec = task.additional_json["ml_start"]
    assert rec["status"] == "abandoned"
    assert rec["fallback"].startswith("no_paw_occupancies: the occupancy donor's CHGCAR lends none")
    assert [a["scf_iterations"] for a in rec["occupancy_donor"]["scf_attempts"]] == [11]
    assert seen["ml static"]["incar"]["ICHARG"] == 2 and "chgcar" not in seen["ml static"]
    baseline = {"dir_name": "b", "state": "successful", "output": {"energy": -27.1},
                "additional_json": {"scf_attempts": [{"scf_iterations": 17, "wall_s": 1.0}]}}
    doc = savings_document.original("SiC", sic(), VaspArmReader(), baseline,
                                    out[predict.uuid][1].output, task)
    assert doc.ml_density_used is False and doc.scf_iterations.ml == 17 + 11
