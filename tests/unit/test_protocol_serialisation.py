"""The QE protocol travels as one typed object: jobflow's and FireWorks' own serialisation
keep it a :class:`QEProtocol` (no special Firetask), and fireworks submitted with the old
``StrictJobFiretask`` name still load."""

from __future__ import annotations

import json

from fireworks import Workflow
from fireworks.utilities.fw_serializers import load_object
from jobflow.managers.fireworks import JobFiretask
from monty.json import MontyDecoder, MontyEncoder

from mlcharge_workflows.engines.qe.jobs import QEStaticMaker
from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.submit.launchpad import flow_to_fireworks


def test_protocol_is_msonable_and_validated_on_the_way_back() -> None:
    p = QEProtocol(kspacing=0.25, starting_magnetization={"Fe": 0.3}, electron_maxstep=7)
    back = json.loads(json.dumps(p, cls=MontyEncoder), cls=MontyDecoder)
    assert isinstance(back, QEProtocol) and back == p
    bad = {**p.as_dict(), "kspacing": -1.0}
    try:
        QEProtocol.from_dict(bad)
    except ValueError as err:
        assert "kspacing" in str(err)
    else:
        raise AssertionError("a negative kspacing was accepted")


def test_firework_json_keeps_the_protocol_object(si) -> None:
    job = QEStaticMaker(protocol=QEProtocol(kspacing=0.25, electron_maxstep=7)).make(si)
    wf = flow_to_fireworks(job)
    task = wf.fws[0].tasks[0]
    assert type(task) is JobFiretask  # jobflow's own task, no wrapper
    text = json.dumps(wf.to_dict(), default=str)  # what a MongoDB/embedded LaunchPad holds
    maker = Workflow.from_dict(json.loads(text)).fws[0].tasks[0]["job"].function.__self__
    assert isinstance(maker.protocol, QEProtocol) and maker.protocol.electron_maxstep == 7


def test_old_strict_task_name_still_loads(si) -> None:
    job = QEStaticMaker(protocol=QEProtocol(kspacing=0.25)).make(si)
    d = flow_to_fireworks(job).fws[0].tasks[0].to_dict()
    d["_fw_name"] = "{{mlcharge_workflows.submit.launchpad.StrictJobFiretask}}"
    task = load_object(json.loads(json.dumps(d, default=str)))
    assert isinstance(task, JobFiretask)
    assert task["job"].function.__self__.protocol.kspacing == 0.25
