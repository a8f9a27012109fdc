"""The VASP Makers live one concept per module and stay importable, and decodable, under
``mlcharge_workflows.engines.vasp.jobs``, the module every document serialised before the
split names (MSONable writes the defining module into ``@module``)."""

from __future__ import annotations

import importlib
import json
import re

import pytest

pytest.importorskip("atomate2")

from jobflow import Job  # noqa: E402
from monty.json import MontyDecoder  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from mlcharge_workflows.engines.vasp import jobs  # noqa: E402

OLD = "mlcharge_workflows.engines.vasp.jobs"
HOME = {
    "MLDensityMaker": "predict",
    "MLStaticMaker": "static",
    "BaselineStaticMaker": "baseline",
    "MLFallbackStaticMaker": "baseline",
    "OccupancyDonorMaker": "baseline",
    "MLNonSCFMaker": "nscf",
    "AtomicNonSCFMaker": "nscf",
    "MLDensityDocument": "schemas",
}
#: makers that existed when jobs.py was one module (OccupancyDonorMaker came later)
MAKERS = [name for name in HOME if name not in ("MLDensityDocument", "OccupancyDonorMaker")]


def _si() -> Structure:
    return Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])


def _as_before_the_split(doc: dict) -> dict:
    """``doc`` with every module of the split named as the old single module."""
    text = re.sub(r'"mlcharge_workflows\.engines\.vasp\.(predict|static|baseline|nscf)"',
                  f'"{OLD}"', json.dumps(doc))
    return json.loads(text)


def test_every_public_name_of_jobs_is_the_object_of_its_module() -> None:
    assert sorted(jobs.__all__) == sorted(HOME)
    for name, module in HOME.items():
        home = importlib.import_module(f"mlcharge_workflows.engines.vasp.{module}")
        assert getattr(jobs, name) is getattr(home, name), name
        assert getattr(jobs, name).__module__ == home.__name__, name


def test_the_package_exports_resolve_to_the_same_classes() -> None:
    vasp = importlib.import_module("mlcharge_workflows.engines.vasp")
    shared = set(vasp.__all__) & set(HOME)
    assert len(shared) == 7
    for name in shared:
        assert getattr(vasp, name) is getattr(jobs, name), name


@pytest.mark.parametrize("name", MAKERS)
def test_a_maker_serialised_before_the_split_decodes_to_the_same_maker(name) -> None:
    cls = getattr(jobs, name)
    maker = cls(name=f"my {name}")
    old = _as_before_the_split(maker.as_dict())
    assert old["@module"] == OLD
    decoded = MontyDecoder().process_decoded(old)
    assert type(decoded) is cls and decoded == maker
    # the smallest old document: class, module and one field
    assert MontyDecoder().process_decoded({"@module": OLD, "@class": name, "name": "x"}) == cls(
        name="x")


@pytest.mark.parametrize("name", ["MLStaticMaker", "MLNonSCFMaker", "BaselineStaticMaker"])
def test_a_job_serialised_before_the_split_rebuilds_with_its_maker(name) -> None:
    """A jobflow Job (what a FireWorks spec holds) of the old module path: its function is
    the bound ``make`` of an equal Maker, its arguments unchanged."""
    cls = getattr(jobs, name)
    job = cls().make(_si())
    old = _as_before_the_split(job.as_dict())
    assert old["function"]["@module"] == OLD and old["function"]["@bound"]["@module"] == OLD
    again = Job.from_dict(old)
    assert again.function.__func__ is job.function.__func__
    assert type(again.function.__self__) is cls and again.function.__self__ == cls()
    assert again.function_args[0] == _si() and again.uuid == job.uuid and again.name == job.name
