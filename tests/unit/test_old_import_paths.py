"""The import paths users' scripts had before the ``common`` layer still resolve, to the
objects that live in their new modules now (``savings.MOVED``)."""

from __future__ import annotations

import importlib

import pytest

from mlcharge_workflows.savings import MOVED


@pytest.mark.parametrize("old", ["savings", "savings.schemas", "savings.fallback",
                                 "savings.jobs", "savings.flows"])
def test_every_moved_name_resolves_through_every_old_module(old) -> None:
    module = importlib.import_module(f"mlcharge_workflows.{old}")
    for name, where in MOVED.items():
        assert getattr(module, name) is getattr(importlib.import_module(where), name), name


def test_old_from_imports_of_the_docs_and_examples() -> None:
    from mlcharge_workflows.common.flows import BaseComparisonMaker
    from mlcharge_workflows.savings.flows import QEComparisonMaker, project_job_store
    from mlcharge_workflows.savings.jobs import default_nbnd
    from mlcharge_workflows.savings.schemas import RECORD_KEYS

    assert issubclass(QEComparisonMaker, BaseComparisonMaker)
    assert callable(project_job_store) and callable(default_nbnd)
    assert RECORD_KEYS[0] == "structure"


def test_an_unknown_old_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="savings.flows' has no attribute 'nope'"):
        importlib.import_module("mlcharge_workflows.savings.flows").nope  # noqa: B018
