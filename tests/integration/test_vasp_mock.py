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
from mlcharge_workflows.engines.vasp.handlers import MLStartFallbackHandler  # noqa: E402
from mlcharge_workflows.engines.vasp.jobs import (  # noqa: E402
    BaselineStaticMaker,
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

    spec = importlib.util.spec_from_file_location("build_reference", REF.parent / "build_reference.py")
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


@pytest.fixture
def mock_vasp(monkeypatch):
    """``monkeypatch_vasp`` plus a spy on what each job wrote before VASP would start."""
    import atomate2.vasp.jobs.base as base

    gen = monkeypatch_vasp(monkeypatch, REF)
    set_refs = next(gen)
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


def _store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


def test_ml_static_places_predicted_chgcar(mock_vasp, tmp_path):
    set_refs, seen = mock_vasp
    set_refs(
        {"ml static": "ml_static"},
        {"ml static": {"incar_settings": START_KEYS}},
    )
    gen = static_gen(ZSortedStaticSetGenerator)
    structure = sic("SiC")  # Si listed first; the generator writes C first
    predict = MLDensityMaker(input_set_generator=gen, predictor="sad").make(structure)
    static = MLStaticMaker(input_set_generator=gen).make(structure, ml_density=predict.output)
    os.chdir(tmp_path)
    out = run_locally(Flow([predict, static]), create_folders=True, ensure_success=True,
                      store=_store())
    doc = out[predict.uuid][1].output
    assert doc.grid_shape == list(NGF) and doc.nelect == 8.0 and doc.nelect_source == "table"
    assert [s.species_string for s in doc.structure] == ["C", "Si"]

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

    task = out[static.uuid][1].output
    rec = task.additional_json["ml_start"]
    assert rec["status"] == "active" and rec["density"]["written"] == "copied"
    assert rec["density"]["predictor"] == "sad"
    assert [a["scf_iterations"] for a in task.additional_json["scf_attempts"]] == [11]
