"""VASP makers and flows through atomate2's ``monkeypatch_vasp`` (VASP cannot run here).

Reference folders: tests/test_data/vasp/SiC (see build_reference.py there). The mock
checks the INCAR keys named below against hand-written reference values and the
POSCAR against the reference POSCAR; it deletes CHGCAR before "running", so a spy
records what each job left in its folder just before VASP would have started.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from jobflow import CURRENT_JOB, Flow, JobStore, run_locally
from maggma.stores import MemoryStore
from pymatgen.io.vasp import Incar, Poscar

pytest.importorskip("atomate2")

from atomate2.utils.testing.vasp import monkeypatch_vasp  # noqa: E402
from atomate2.vasp.sets.core import NonSCFSetGenerator, StaticSetGenerator  # noqa: E402

from mlcharge_workflows.density.chgcar import read_chgcar  # noqa: E402
from mlcharge_workflows.density.grid import DensityGrid  # noqa: E402
from mlcharge_workflows.common.fallback import FallbackPolicy  # noqa: E402
from mlcharge_workflows.engines.vasp.handlers import (  # noqa: E402
    MLStartFallbackHandler,
    MLStartStallHandler,
)
from mlcharge_workflows.engines.vasp.jobs import (  # noqa: E402
    MLDensityMaker,
    MLNonSCFMaker,
    MLStaticMaker,
)

REF = Path(__file__).resolve().parents[1] / "test_data" / "vasp" / "SiC"
ENCUT = 300
NGF = (36, 36, 36)  # hand-derived in build_reference.py
START_KEYS = ["ICHARG", "ISTART", "NGXF", "NGYF", "NGZF", "NSW", "ENCUT", "LCHARG"]
NSCF_KEYS = ["ICHARG", "ISTART", "NGXF", "NGYF", "NGZF", "NSW", "ENCUT", "ISMEAR"]


def sic(order: str = "CSi"):
    import importlib.util

    path = REF.parent / "build_reference.py"
    spec = importlib.util.spec_from_file_location("build_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    s = mod.sic()
    return s if order == "CSi" else s.get_sorted_structure(key=lambda site: -site.specie.Z)


class ZSortedStaticSetGenerator(StaticSetGenerator):
    """Writes atoms sorted by atomic number, like input sets that reorder atoms."""

    @property
    def poscar(self) -> Poscar:
        return Poscar(self.structure.get_sorted_structure(key=lambda site: site.specie.Z))


def static_gen(cls=StaticSetGenerator):
    return cls(user_incar_settings={"ENCUT": ENCUT})


def full_comparison(mock_vasp, **kwargs):
    """The VASP comparison with every arm (oracle, line-mode NSCF), mock references set."""
    from mlcharge_workflows.engines.vasp.flows import VaspComparisonMaker

    set_refs, _ = mock_vasp
    set_refs(ALL_REFS, _kwargs(ALL_REFS))
    return VaspComparisonMaker(
        input_set_generator=static_gen(),
        nscf_input_set_generator=NonSCFSetGenerator(user_incar_settings={"ENCUT": ENCUT}),
        oracle=True, nscf=True, nscf_mode="line", predictor=SHIPPED, **kwargs,
    )


#: The one-step donor of PAW occupancies every ML start without them runs first
#: (MLStaticMaker/MLNonSCFMaker paw_occupancies="auto"); its reference CHGCAR is a
#: stand-in holding made-up occupancies (build_reference.py).
DONOR_REF = {"occupancy donor": "occupancy_donor"}
DONOR_KEYS = ["ICHARG", "ISTART", "NELM", "NSW", "LCHARG", "LWAVE", "NGXF", "NGYF", "NGZF"]


@pytest.fixture
def mock_vasp(monkeypatch):
    """``monkeypatch_vasp`` plus a spy on what each job wrote before VASP would start.

    Every test's references include the occupancy donor's (its INCAR start keys and
    POSCAR are checked; the k-mesh is the SCF's or, for a non-SCF job, a uniform one)."""
    import atomate2.vasp.jobs.base as base

    gen = monkeypatch_vasp(monkeypatch, REF)
    plain_set_refs = next(gen)

    def set_refs(refs, kwargs=None):
        kwargs = {"occupancy donor": {"incar_settings": DONOR_KEYS,
                                      "check_inputs": ["incar", "poscar"]}, **(kwargs or {})}
        plain_set_refs({**DONOR_REF, **refs}, kwargs)

    fake = base.run_vasp
    seen: dict[str, dict] = {}

    def spy(*args, **kwargs):
        entry = {"incar": Incar.from_file("INCAR"), "poscar": Poscar.from_file("POSCAR"),
                 "files": sorted(os.listdir(".")), "handlers": kwargs.get("handlers")}
        if Path("CHGCAR").exists():
            entry["chgcar"] = read_chgcar("CHGCAR")
        seen[CURRENT_JOB.job.name] = entry
        return fake(*args, **kwargs)

    monkeypatch.setattr(base, "run_vasp", spy)
    yield set_refs, seen
    for _ in gen:  # monkeypatch_vasp's own teardown
        pass


@pytest.fixture(autouse=True)
def potcar_dir(tmp_path_factory, monkeypatch):
    """The user's PMG_VASP_PSP_DIR: synthetic POTCARs in VASP's layout (engines.vasp.testing)
    whose atomic densities are the registry UPFs' (no real POTCAR exists here)."""
    import pymatgen.io.vasp.inputs as inputs

    from mlcharge_workflows.engines.vasp.testing import write_synthetic_potcar_library

    root = write_synthetic_potcar_library(
        tmp_path_factory.mktemp("psp"), ["Si", "C", "Ni", "Ni_pv", "Fe", "Fe_pv", "O"]
    )
    monkeypatch.setenv("PMG_VASP_PSP_DIR", str(root))
    monkeypatch.setitem(inputs.SETTINGS, "PMG_VASP_PSP_DIR", str(root))
    return root


def _final(out: dict, uuid: str):
    """The last output of job ``uuid``, following replacements (a replacement Flow's
    output is a reference to the job that produced it)."""
    from jobflow import OutputReference

    result = out[uuid][max(out[uuid])].output
    while isinstance(result, OutputReference):
        result = out[result.uuid][max(out[result.uuid])].output
    return result


def _replacing_run(out: dict, uuid: str) -> str:
    """uuid of the ml static run that replaced job ``uuid`` (after its occupancy donor)."""
    return out[uuid][max(out[uuid])].output.uuid


def _store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


def _run(flow, root, store=None):
    return run_locally(flow, create_folders=True, root_dir=root, ensure_success=True,
                       store=store or _store())


def _model_weights_shipped() -> bool:
    try:
        from mlcharge_workflows.model.io import DEFAULT_WEIGHTS
    except ImportError:
        return False
    return Path(DEFAULT_WEIGHTS).exists()


#: the shipped model when its weights exist, else the superposition of atomic densities
SHIPPED = "model" if _model_weights_shipped() else "sad"


@pytest.mark.parametrize(
    "predictor",
    [
        pytest.param("model", marks=pytest.mark.skipif(
            not _model_weights_shipped(), reason="no shipped model weights yet")),
        "sad",
    ],
)
def test_ml_static_places_predicted_chgcar(mock_vasp, tmp_path, predictor):
    set_refs, seen = mock_vasp
    set_refs(
        {"ml static": "ml_static"},
        {"ml static": {"incar_settings": START_KEYS}},
    )
    gen = static_gen(ZSortedStaticSetGenerator)
    structure = sic("SiC")  # Si listed first; the generator writes C first
    predict = MLDensityMaker(
        input_set_generator=gen, predictor=predictor, store_density=True
    ).make(structure)
    static = MLStaticMaker(input_set_generator=gen).make(structure, ml_density=predict.output)
    store = _store()
    out = _run(Flow([predict, static]), tmp_path, store)
    doc = out[predict.uuid][1].output
    # the grid went to the data store only; the main document holds a blob reference
    blob = store.additional_stores["data"].query_one({"job_uuid": predict.uuid})
    stored = DensityGrid.from_dict(blob["data"])  # an MSONable grid, e/Å³ on the CHGCAR's mesh
    assert stored.shape == NGF and stored.n_electrons == pytest.approx(8.0, rel=1e-8)
    main = store.docs_store.query_one({"uuid": predict.uuid})
    assert set(main["output"]["density"]) == {"@class", "@module", "blob_uuid", "store"}
    assert doc.grid_shape == list(NGF) and doc.nelect == 8.0 and doc.nelect_source == "POTCAR"
    assert doc.n_electrons_predicted == pytest.approx(8.0, abs=1e-6)  # no rescaling
    assert doc.model_version is not None and doc.valence_mismatch == {} and doc.scale is None
    assert [s.species_string for s in doc.structure] == ["C", "Si"]
    assert doc.reference["source"] == "POTCAR"
    assert {d["symbol"] for d in doc.reference["potcars"].values()} == {"C", "Si"}

    entry = seen["ml static"]
    poscar = entry["poscar"].structure
    assert [s.species_string for s in poscar] == ["C", "Si"]
    chg = entry["chgcar"]
    assert chg.shape == NGF
    chg.check_matches(poscar)  # atom order and cell of the POSCAR VASP reads
    assert chg.n_electrons == pytest.approx(8.0, rel=1e-8)
    assert entry["incar"]["ICHARG"] == 1 and entry["incar"]["ISTART"] == 0
    assert "CHGCAR.ml" in entry["files"] and "ml_start.json" in entry["files"]
    assert isinstance(entry["handlers"][-1], MLStartFallbackHandler)
    stall = [h for h in entry["handlers"] if isinstance(h, MLStartStallHandler)]  # the default policy's
    assert len(stall) == 1 and stall[0].is_monitor and stall[0].rule == FallbackPolicy().stall_rule()

    # no prev_dir: the static replaced itself by [occupancy donor, ml static]; the donor's
    # PAW occupancies (both spin blocks) went into the CHGCAR, the density is the prediction's
    assert sorted(out[static.uuid]) == [1, 2]
    donor = seen["occupancy donor"]["incar"]
    assert (donor["ICHARG"], donor["NELM"], donor["LCHARG"], donor["LWAVE"]) == (2, 1, True, False)
    assert "chgcar" not in seen["occupancy donor"]
    aug = chg.metadata["data_aug"]
    assert set(aug) == {"total", "diff"}
    np.testing.assert_allclose(aug["total"][2], 0.4 + 0.01 * np.arange(8))  # the donor's
    np.testing.assert_allclose(chg.total, stored.total, rtol=1e-9, atol=1e-12)
    task = _final(out, static.uuid)
    rec = task.additional_json["ml_start"]
    assert rec["status"] == "active" and rec["density"]["written"] == "copied"
    assert rec["density"]["paw_occupancies"]["how"] == "donor"
    assert rec["density"]["paw_occupancies"]["blocks"] == ["total", "diff"]
    assert rec["density"]["predictor"] == predictor
    assert rec["density"]["reference"]["source"] == "POTCAR"
    assert [a["scf_iterations"] for a in task.additional_json["scf_attempts"]] == [11]
    assert [a["scf_iterations"] for a in rec["occupancy_donor"]["scf_attempts"]] == [1]


ALL_REFS = {
    "baseline static": "baseline_static",
    "ml static": "ml_static",
    "oracle static": "oracle_static",
    "nscf converged": "converged_nscf_line",
    "nscf ml": "ml_nscf_line",
    "nscf atomic": "atomic_nscf_line",
}


def _kwargs(names):
    return {n: {"incar_settings": NSCF_KEYS if "non-scf" in n else START_KEYS} for n in names}


def test_comparison_flow_savings_record(mock_vasp, tmp_path):
    from mlcharge_workflows.common.schemas import RECORD_KEYS

    _, seen = mock_vasp
    maker = full_comparison(mock_vasp, predict_manager_config={"_fworker": "gpu"})
    flow = maker.make(sic(), label="SiC-test")
    predict = next(j for j in flow.jobs if j.name == "predict density")
    assert predict.config.manager_config == {"_fworker": "gpu"}
    out = _run(flow, tmp_path)
    doc = out[flow.output.uuid][1].output
    rec = doc.record()
    assert list(rec) == list(RECORD_KEYS)
    assert rec["engine"] == "vasp" and rec["formula"] == "SiC" and rec["n_atoms"] == 2
    # SCF steps of the reference outputs: 17 (atoms), 11 (ML) + 1 (its occupancy donor),
    # 6 (oracle, the baseline CHGCAR's own occupancies: no donor)
    assert rec["scf_iterations"] == {"baseline": 17, "ml": 12, "oracle": 6}
    assert rec["ml_density_used"] is True and rec["fallback"] is None and rec["error"] is None
    assert rec["energy_eV"]["baseline"] == pytest.approx(-27.11090125)
    assert rec["wall_s"]["baseline"] > rec["wall_s"]["ml"] > 0 and rec["wall_s"]["predict"] > 0
    ml_dir = Path(doc.details.dir_names["ml"].split(":", 1)[-1])
    from mlcharge_workflows.engines.vasp.parse import count_attempts

    walls = [a["wall_s"] for a in count_attempts(ml_dir)]
    assert rec["wall_s"]["ml"] == pytest.approx(sum(walls) + 3.51)  # donor's OUTCAR: 3.51 s
    assert set(rec["band_gap_eV"]) == {"scf", "nscf_ml", "nscf_atomic"}
    assert all(v is not None for v in rec["band_gap_eV"].values())
    assert doc.details.nelmdl == -5
    assert [a.start for a in doc.details.ml_attempts] == ["atomic", "ml"]
    assert doc.details.ml_attempts[0].rejected.startswith("occupancy donor")
    assert doc.details.ml_attempts[0].scf_iterations == 1
    assert doc.details.paw_occupancies["how"] == "donor"
    # the mock's OUTCAR has no start block and there is no vasp.out: kept, marked unverified
    assert doc.details.ml_start_evidence["status"] == "unverified"
    assert doc.details.ml_attempts[1].density_read_from_file is None

    # starts: only ICHARG differs between the SCF arms; same pinned grid everywhere
    icharg = {name: seen[name]["incar"]["ICHARG"] for name in ALL_REFS}
    assert icharg == {"baseline static": 2, "ml static": 1, "oracle static": 1,
                      "nscf converged": 11, "nscf ml": 11,
                      "nscf atomic": 12}
    for name in ALL_REFS:
        assert tuple(seen[name]["incar"][k] for k in ("NGXF", "NGYF", "NGZF")) == NGF
        assert seen[name]["incar"]["ISTART"] == 0
    assert "chgcar" not in seen["baseline static"] and "chgcar" not in seen["nscf atomic"]
    # the oracle starts from the baseline CHGCAR byte for byte: PAW occupancies kept
    oracle_dir = Path(doc.details.dir_names["oracle"].split(":", 1)[-1])
    assert seen["oracle static"]["chgcar"].metadata.get("data_aug")
    # the ML CHGCARs got the donor's occupancies (made-up 0.2, ...), not the baseline's (0.1, ...)
    for arm in ("ml static", "nscf ml"):
        assert seen[arm]["chgcar"].metadata["data_aug"]["total"][1][0] == pytest.approx(0.2)
    assert (oracle_dir / "CHGCAR.ml.gz").exists()


def test_prediction_failure_runs_ml_arm_from_atoms(mock_vasp, tmp_path):
    from mlcharge_workflows.engines.vasp.flows import VaspComparisonMaker

    def unknown_element(structure, shape):
        raise ValueError("element 'C' is not supported by this model")

    set_refs, seen = mock_vasp
    refs = {"baseline static": "baseline_static", "ml static": "baseline_static"}
    set_refs(refs, _kwargs(refs))
    maker = VaspComparisonMaker(input_set_generator=static_gen(), predictor=unknown_element)
    flow = maker.make(sic())
    out = _run(flow, tmp_path)
    rec = out[flow.output.uuid][1].output.record()
    assert rec["ml_density_used"] is False
    assert rec["fallback"].startswith("prediction failed: ValueError: element 'C'")
    assert rec["scf_iterations"]["ml"] == 17 and rec["error"] is None
    assert seen["ml static"]["incar"]["ICHARG"] == 2 and "chgcar" not in seen["ml static"]


def test_ml_static_in_atomate2_band_structure_maker(mock_vasp, tmp_path):
    """MLStaticMaker as ``static_maker``: it replaces itself by predict + static."""
    from atomate2.vasp.flows.core import BandStructureMaker
    from atomate2.vasp.jobs.core import NonSCFMaker

    set_refs, seen = mock_vasp
    refs = {"ml static": "ml_static", "non-scf line": "bs_nscf_line"}
    set_refs(refs, {"ml static": {"incar_settings": START_KEYS},
                    "non-scf line": {"incar_settings": ["ICHARG", "NSW"]}})
    gen = static_gen()
    flow = BandStructureMaker(
        static_maker=MLStaticMaker(
            input_set_generator=gen, density_maker=MLDensityMaker(predictor=SHIPPED)
        ),
        bs_maker=NonSCFMaker(
            input_set_generator=NonSCFSetGenerator(user_incar_settings={"ENCUT": ENCUT})
        ),
        bandstructure_type="line",
    ).make(sic())
    out = _run(flow, tmp_path)
    names = {r[1].output.__class__.__name__ for r in out.values()}
    assert "MLDensityDocument" in names
    assert seen["ml static"]["incar"]["ICHARG"] == 1
    assert seen["ml static"]["chgcar"].n_electrons == pytest.approx(8.0)
    assert seen["non-scf line"]["incar"]["ICHARG"] == 11
    line = out[flow.jobs[-1].uuid][1].output
    assert line.output.bandgap is not None


def test_ml_nscf_uniform_skips_scf(mock_vasp, tmp_path):
    set_refs, seen = mock_vasp
    refs = {"ml non-scf": "ml_nscf_uniform"}
    set_refs(refs, {"ml non-scf": {"incar_settings": NSCF_KEYS}})
    gen = NonSCFSetGenerator(user_incar_settings={"ENCUT": ENCUT})
    maker = MLNonSCFMaker(input_set_generator=gen, density_maker=MLDensityMaker(predictor="sad"))
    job = maker.make(sic(), mode="uniform")
    out = _run(job, tmp_path)
    entry = seen["ml non-scf"]
    assert entry["incar"]["ICHARG"] == 11 and entry["incar"]["ISMEAR"] == -5
    assert entry["chgcar"].shape == NGF
    assert entry["chgcar"].n_electrons == pytest.approx(8.0)
    rec = _final(out, job.uuid).additional_json["ml_start"]
    assert rec["status"] == "nscf" and rec["density"]["paw_occupancies"]["how"] == "donor"
    assert rec["start_evidence"]["status"] == "unverified"  # the mock OUTCAR has no start block
    # the donor ran on this job's generator, on a uniform mesh, from atoms for one step
    assert seen["occupancy donor"]["incar"]["ICHARG"] == 2
    assert seen["occupancy donor"]["incar"]["NELM"] == 1
    assert entry["chgcar"].metadata["data_aug"]["total"][1][0] == pytest.approx(0.2)


def test_ml_static_distrusted_result_is_kept_and_rerun_from_atoms(mock_vasp, tmp_path):
    """A converged ML start at another energy than the reference: kept, rerun from atoms."""
    from mlcharge_workflows.common.documents import savings_document
    from mlcharge_workflows.engines.vasp.flows import VaspArmReader

    set_refs, seen = mock_vasp
    refs = {"ml static": "ml_static", "ml static rerun from atoms": "baseline_static"}
    set_refs(refs, _kwargs(refs))
    gen = static_gen()
    structure = sic()
    predict = MLDensityMaker(input_set_generator=gen, predictor="sad").make(structure)
    # the reference says -28.11 eV; the ML-started run lands at -27.11 eV
    static = MLStaticMaker(input_set_generator=gen, density_maker=None).make(
        structure, ml_density=predict.output,
        reference={"energy_eV": -28.11090125, "total_magnetization": 0.0},
    )
    store = _store()
    out = _run(Flow([predict, static]), tmp_path, store)
    # the ML run (after its occupancy donor) is distrusted: it stays in the store (index 1),
    # the rerun replaces it (index 2)
    run = _replacing_run(out, static.uuid)
    rejected, rerun = out[run][1].output, out[run][2].output
    rec1 = rejected.additional_json["ml_start"]
    assert rec1["status"] == "rejected" and rec1["fallback"].startswith("energy_mismatch")
    assert Path(str(rejected.dir_name).split(":", 1)[-1]).is_dir()
    assert seen["ml static"]["incar"]["ICHARG"] == 1
    assert seen["ml static rerun from atoms"]["incar"]["ICHARG"] == 2
    assert "chgcar" not in seen["ml static rerun from atoms"]
    rec2 = rerun.additional_json["ml_start"]
    assert rec2["status"] == "abandoned" and rec2["fallback"] == rec1["fallback"]
    assert [a["scf_iterations"] for a in rerun.additional_json["scf_attempts"]] == [11, 17]
    assert rerun.additional_json["rejected_ml_run"]["energy_eV"] == pytest.approx(-27.11090125)
    assert store.docs_store.count({"uuid": run}) == 2
    # the donor the rejected run paid for stays on the record
    assert [a["scf_iterations"] for a in rec2["occupancy_donor"]["scf_attempts"]] == [1]

    pred_doc = out[predict.uuid][1].output
    doc = savings_document.original(
        "SiC", structure, VaspArmReader(), baseline=rerun, prediction=pred_doc, ml=rerun
    )
    assert doc.ml_density_used is False and doc.fallback.startswith("energy_mismatch")
    assert doc.scf_iterations.ml == 29  # every iteration the arm paid for, donor's included
    assert [a.start for a in doc.details.ml_attempts] == ["atomic", "ml", "atomic"]
    assert doc.details.ml_attempts[0].rejected.startswith("occupancy donor")
    assert doc.details.ml_attempts[1].rejected.startswith("energy_mismatch")


def test_ml_static_accepts_a_result_matching_the_reference(mock_vasp, tmp_path):
    set_refs, _ = mock_vasp
    set_refs({"ml static": "ml_static"}, _kwargs(["ml static"]))
    gen = static_gen()
    predict = MLDensityMaker(input_set_generator=gen, predictor="sad").make(sic())
    static = MLStaticMaker(input_set_generator=gen, density_maker=None).make(
        sic(), ml_density=predict.output,
        reference={"energy_eV": -27.11090125 + 1e-4, "total_magnetization": 0.0},
    )
    out = _run(Flow([predict, static]), tmp_path)
    assert set(out[static.uuid]) == {1, 2}  # 1: replaced by [occupancy donor, ml static]
    assert _final(out, static.uuid).additional_json["ml_start"]["status"] == "active"


def test_atomic_spin_start_is_a_fallback_not_an_ml_start(mock_vasp, tmp_path):
    """The model hands back the atomic superposition for magnetic cells (spin='atomic'):
    no CHGCAR is placed, and the ML static runs from atoms and records why."""
    from pymatgen.core import Lattice, Structure

    from mlcharge_workflows.engines.vasp.schemas import MLDensityDocument

    if not _model_weights_shipped():
        pytest.skip("no shipped model weights")
    ni = Structure(Lattice.cubic(3.52), ["Ni"] * 4,
                   [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    gen = StaticSetGenerator(user_incar_settings={"ENCUT": ENCUT, "ISPIN": 2})
    job = MLDensityMaker(input_set_generator=gen, spin="atomic").make(ni)
    out = _run(job, tmp_path / "ni")
    doc = out[job.uuid][1].output
    assert doc.fallback.startswith("atomic_spin_start") and doc.path is None
    assert doc.spin_start == "atomic" and doc.total_magnetization > 1.0
    assert not (Path(doc.dir_name) / "CHGCAR").exists()

    # an ML static given such a document runs from atoms (SiC stands in for the mock)
    set_refs, seen = mock_vasp
    set_refs({"ml static": "baseline_static"}, _kwargs(["ml static"]))
    fake = MLDensityDocument(dir_name=str(tmp_path), predictor="model", fallback=doc.fallback,
                             spin_start="atomic")
    static = MLStaticMaker(input_set_generator=static_gen(), density_maker=None).make(
        sic(), ml_density=fake)
    out = _run(static, tmp_path / "sic")
    task = out[static.uuid][1].output
    rec = task.additional_json["ml_start"]
    assert rec["status"] == "abandoned" and rec["fallback"].startswith("atomic_spin_start")
    assert seen["ml static"]["incar"]["ICHARG"] == 2 and "chgcar" not in seen["ml static"]


def test_chained_flow_with_host_prefixed_prev_dir(mock_vasp, tmp_path):
    """atomate2 passes ``dir_name`` (``host:/path``) as prev_dir: relax -> ML static works."""
    import shutil

    set_refs, seen = mock_vasp
    set_refs({"ml static": "ml_static"}, {"ml static": {"incar_settings": ["ICHARG", "ISTART"]}})
    prev = shutil.copytree(REF / "baseline_static" / "outputs", tmp_path / "relax")
    flow = MLStaticMaker(
        input_set_generator=static_gen(), density_maker=MLDensityMaker(predictor="sad")
    ).make(sic(), prev_dir=f"fileserver.example:{prev}")
    out = _run(flow, tmp_path / "run")
    docs = [r[1].output for r in out.values()]
    assert any(type(d).__name__ == "MLDensityDocument" and d.error is None for d in docs)
    assert seen["ml static"]["incar"]["ICHARG"] == 1
    assert seen["ml static"]["chgcar"].n_electrons == pytest.approx(8.0, rel=1e-8)


def test_without_potcar_data_the_ml_start_is_refused(mock_vasp, tmp_path, monkeypatch, caplog):
    """potcar_spec only (no PMG_VASP_PSP_DIR): no start density is made; the ML arm runs
    from atoms and says why; the ML non-SCF arm is refused."""
    import pymatgen.io.vasp.inputs as inputs

    monkeypatch.setitem(inputs.SETTINGS, "PMG_VASP_PSP_DIR", None)
    set_refs, seen = mock_vasp
    set_refs({"ml static": "baseline_static"}, _kwargs(["ml static"]))
    predict = MLDensityMaker(input_set_generator=static_gen(), predictor="sad",
                             allow_failure=True).make(sic())
    static = MLStaticMaker(input_set_generator=static_gen(), density_maker=None).make(
        sic(), ml_density=predict.output)
    out = _run(Flow([predict, static]), tmp_path)
    doc = out[predict.uuid][1].output
    assert doc.error.startswith("PotcarDataError") and "PMG_VASP_PSP_DIR" in doc.error
    rec = out[static.uuid][1].output.additional_json["ml_start"]
    assert rec["status"] == "abandoned" and "PotcarDataError" in rec["fallback"]
    assert seen["ml static"]["incar"]["ICHARG"] == 2 and "chgcar" not in seen["ml static"]

    nscf = MLNonSCFMaker(
        input_set_generator=NonSCFSetGenerator(user_incar_settings={"ENCUT": ENCUT}),
        density_maker=None,
    ).make(sic(), mode="uniform", ml_density=doc)
    out = run_locally(nscf, create_folders=True, root_dir=tmp_path / "nscf",
                      ensure_success=False, store=_store())
    assert nscf.uuid not in out and "ml non-scf" not in seen
    assert "ml non-scf: no predicted density" in caplog.text and "PotcarDataError" in caplog.text
