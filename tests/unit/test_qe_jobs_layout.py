"""The QE Makers live one concept per module (predict, static, nscf) and stay importable,
and decodable, under ``mlcharge_workflows.engines.qe.jobs``, the module every document
serialised before the split names (MSONable writes the defining module into ``@module``).

``data/qe/workflow_before_jobs_split.json`` is a FireWorks workflow written by the version
before the split (commit f64afcb): the six QE Makers' jobs of one Si flow, converted with
``jobflow.managers.fireworks.flow_to_workflow`` and saved with
``Workflow.to_format("json")``, as a launchpad stores them."""

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


def test_a_fireworks_workflow_stored_before_the_split_loads_with_every_maker() -> None:
    """What a launchpad gives a worker (``Firework.from_dict`` of the stored spec): each
    task's job is bound to a Maker of today's class with the stored settings."""
    wf = Workflow.from_dict(_stored_workflow())
    makers = {}
    for fw in wf.fws:
        job = fw.tasks[0]["job"]
        assert isinstance(job, Job)
        maker = job.function.__self__
        assert type(maker) is getattr(jobs, type(maker).__name__)
        assert isinstance(maker.protocol, QEProtocol) and job.function_args[0] == _si()
        makers[type(maker).__name__] = (fw, job, maker)
    assert sorted(makers) == sorted(MAKERS)
    fw, job, maker = makers["QEPredictDensityMaker"]
    assert maker == jobs.QEPredictDensityMaker(manager_config={"_fworker": "gpu"})
    assert fw.spec["_fworker"] == "gpu" and job.function.__func__ is (
        jobs.QEPredictDensityMaker._predict)  # the job of today's code
    assert makers["MLQENonSCFMaker"][2] == jobs.MLQENonSCFMaker(mode="uniform",
                                                               skip_without_prediction=True)
    for name in ("MLQEStaticMaker", "QEStaticMaker", "QENonSCFMaker", "QEAtomicNonSCFMaker"):
        assert makers[name][2] == getattr(jobs, name)(), name
    # the ML static and the ML non-SCF still read the prediction's output
    predict_uuid = makers["QEPredictDensityMaker"][1].uuid
    assert makers["MLQEStaticMaker"][1].function_kwargs["prediction"].uuid == predict_uuid
    assert makers["MLQENonSCFMaker"][1].function_args[1].uuid == predict_uuid
