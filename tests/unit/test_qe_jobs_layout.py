"""The QE Makers live one concept per module (predict, static, nscf) and stay importable,
and decodable, under ``mlcharge_workflows.engines.qe.jobs``, the module every document
serialised before the split names (MSONable writes the defining module into ``@module``).

``data/qe/workflow_before_jobs_split.json`` is a FireWorks workflow written by the version
before the split (commit f64afcb): the six QE Makers' jobs of one Si flow (``si_fcc``, the
small protocol :data:`STORED_PROTOCOL`), converted with
``jobflow.managers.fireworks.flow_to_workflow(flow, store=None)`` and saved with
``Workflow.to_format("json")``, as a launchpad stores them.
tests/integration/test_qe_jobs_old_documents.py runs it with pw.x."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
from fireworks import Workflow
from jobflow import Job
from monty.json import MontyDecoder

from mlcharge_workflows.engines.qe import jobs
from mlcharge_workflows.engines.qe.sets import QEProtocol

OLD = "mlcharge_workflows.engines.qe.jobs"
HOME = {
    "QEPredictDensityMaker": "predict",
    "PREDICTED_FILE": "predict",
    "UNSUPPORTED_DEFAULT": "predict",
    "QEStaticMaker": "static",
    "MLQEStaticMaker": "static",
    "QENonSCFMaker": "nscf",
    "MLQENonSCFMaker": "nscf",
    "QEAtomicNonSCFMaker": "nscf",
}
MAKERS = [name for name in HOME if name.endswith("Maker")]
STORED = Path(__file__).parent / "data" / "qe" / "workflow_before_jobs_split.json"
#: The protocol every Maker of the stored workflow holds.
STORED_PROTOCOL = QEProtocol(ecutwfc_ry=15.0, ecutrho_ry=60.0, kspacing=0.6,
                             conv_thr_per_atom=1e-8, nscf_kspacing=0.4, line_density=5)


def _si():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])


def _as_before_the_split(doc: dict) -> dict:
    """``doc`` with every module of the split named as the old single module."""
    text = re.sub(r'"mlcharge_workflows\.engines\.qe\.(predict|static|nscf)"', f'"{OLD}"',
                  json.dumps(doc))
    return json.loads(text)


def _stored_workflow() -> dict:
    return json.loads(STORED.read_text())["workflow"]


def test_every_public_name_of_jobs_is_the_object_of_its_module() -> None:
    assert sorted(jobs.__all__) == sorted(HOME)
    for name, module in HOME.items():
        home = importlib.import_module(f"mlcharge_workflows.engines.qe.{module}")
        assert getattr(jobs, name) is getattr(home, name), name
    for name in MAKERS:
        assert getattr(jobs, name).__module__ == f"mlcharge_workflows.engines.qe.{HOME[name]}"


def test_the_package_and_the_old_savings_paths_resolve_to_the_same_classes() -> None:
    qe = importlib.import_module("mlcharge_workflows.engines.qe")
    assert set(MAKERS) <= set(qe.__all__)
    for name in MAKERS:
        assert getattr(qe, name) is getattr(jobs, name), name
    for old in ("savings", "savings.jobs", "savings.flows"):
        module = importlib.import_module(f"mlcharge_workflows.{old}")
        for name in ("QEPredictDensityMaker", "MLQEStaticMaker", "MLQENonSCFMaker",
                     "QEAtomicNonSCFMaker", "PREDICTED_FILE"):
            assert getattr(module, name) is getattr(jobs, name), (old, name)


@pytest.mark.parametrize("name", MAKERS)
def test_a_maker_serialised_before_the_split_decodes_to_the_same_maker(name) -> None:
    cls = getattr(jobs, name)
    maker = cls(name=f"my {name}", protocol=QEProtocol(ecutwfc_ry=21.0, kspacing=0.5))
    old = _as_before_the_split(maker.as_dict())
    assert old["@module"] == OLD
    decoded = MontyDecoder().process_decoded(old)
    assert type(decoded) is cls and decoded == maker
    assert decoded.protocol.ecutwfc_ry == 21.0
    # the smallest old document: class, module and one field
    assert MontyDecoder().process_decoded({"@module": OLD, "@class": name, "name": "x"}) == cls(
        name="x")


@pytest.mark.parametrize(("name", "args"), [("QEStaticMaker", ()), ("MLQEStaticMaker", ()),
                                            ("QENonSCFMaker", ("scf",)),
                                            ("QEAtomicNonSCFMaker", ())])
def test_a_job_serialised_before_the_split_rebuilds_with_its_maker(name, args) -> None:
    """A jobflow Job (what a FireWorks spec holds) of the old module path: its function is
    the bound ``make`` of an equal Maker, its arguments unchanged."""
    cls = getattr(jobs, name)
    job = cls().make(_si(), *args)
    old = _as_before_the_split(job.as_dict())
    assert old["function"]["@module"] == OLD and old["function"]["@bound"]["@module"] == OLD
    again = Job.from_dict(old)
    assert again.function.__func__ is job.function.__func__
    assert type(again.function.__self__) is cls and again.function.__self__ == cls()
    assert again.function_args[0] == _si() and again.uuid == job.uuid and again.name == job.name


def test_the_stored_workflow_names_only_the_old_module() -> None:
    """The fixture really is a pre-split document (else the tests below prove nothing)."""
    text = STORED.read_text()
    modules = set(re.findall(r'"mlcharge_workflows\.engines\.qe\.[a-z_]+"', text))
    assert f'"{OLD}"' in modules
    assert not modules & {f'"mlcharge_workflows.engines.qe.{m}"' for m in ("predict", "static",
                                                                            "nscf")}


def test_a_fireworks_workflow_stored_before_the_split_loads_with_every_maker(si_fcc) -> None:
    """What a launchpad gives a worker (``Firework.from_dict`` of the stored spec): each
    task's job is bound to a Maker of today's class with the stored settings."""
    wf = Workflow.from_dict(_stored_workflow())
    makers = {}
    for fw in wf.fws:
        job = fw.tasks[0]["job"]
        assert isinstance(job, Job)
        maker = job.function.__self__
        assert type(maker) is getattr(jobs, type(maker).__name__)
        assert job.function_args[0] == si_fcc
        makers[type(maker).__name__] = (fw, job, maker)
    assert sorted(makers) == sorted(MAKERS)
    fw, job, maker = makers["QEPredictDensityMaker"]
    assert maker == jobs.QEPredictDensityMaker(protocol=STORED_PROTOCOL,
                                               manager_config={"_fworker": "gpu"})
    assert fw.spec["_fworker"] == "gpu"
    assert job.function.__func__ is jobs.QEPredictDensityMaker._predict  # today's code
    run = {"protocol": STORED_PROTOCOL, "nprocs": 1}
    assert makers["QEStaticMaker"][2] == jobs.QEStaticMaker(**run)
    assert makers["MLQEStaticMaker"][2] == jobs.MLQEStaticMaker(**run)
    assert makers["QENonSCFMaker"][2] == jobs.QENonSCFMaker(mode="line", **run)
    assert makers["MLQENonSCFMaker"][2] == jobs.MLQENonSCFMaker(
        mode="uniform", skip_without_prediction=True, **run)
    assert makers["QEAtomicNonSCFMaker"][2] == jobs.QEAtomicNonSCFMaker(mode="uniform", **run)
    # the references between the jobs survive: prediction -> ML static and ML non-SCF,
    # baseline -> ML static's reference, ML static's folder -> bands
    uuid = {name: job.uuid for name, (_, job, _) in makers.items()}
    ml_kwargs = makers["MLQEStaticMaker"][1].function_kwargs
    assert ml_kwargs["prediction"].uuid == uuid["QEPredictDensityMaker"]
    assert ml_kwargs["reference"].uuid == uuid["QEStaticMaker"]
    assert makers["MLQENonSCFMaker"][1].function_args[1].uuid == uuid["QEPredictDensityMaker"]
    assert makers["QENonSCFMaker"][1].function_args[1].uuid == uuid["MLQEStaticMaker"]
