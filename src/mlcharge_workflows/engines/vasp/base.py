"""What every VASP run Maker of this engine shares (the role of atomate2's ``jobs/base.py``).

* :func:`copy_maker` - a copy of an atomate2 Maker with another input-set generator, so a
  job that changes its INCAR (start, pinned grid) never changes the Maker it was given;
* :func:`annotate_attempts` - every SCF attempt of the run (custodian reruns included)
  added to the task document.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mlcharge_workflows.engines.vasp.parse import count_attempts

if TYPE_CHECKING:
    from jobflow import Response

__all__ = ["annotate_attempts", "copy_maker"]


def copy_maker(maker: Any, generator: Any, **changes: Any) -> Any:
    """A copy of ``maker`` (own kwargs dicts) with a new generator: makers stay reusable."""
    return replace(
        maker,
        input_set_generator=generator,
        write_input_set_kwargs=dict(maker.write_input_set_kwargs),
        copy_vasp_kwargs=dict(maker.copy_vasp_kwargs),
        run_vasp_kwargs=dict(maker.run_vasp_kwargs),
        task_document_kwargs=dict(maker.task_document_kwargs),
        **changes,
    )


def annotate_attempts(response: Response) -> Response:
    """Add every SCF attempt (custodian reruns included) to the task document."""
    doc = response.output
    if doc is not None and getattr(doc, "dir_name", None):
        extra = dict(doc.additional_json or {})
        folder = str(doc.dir_name).split(":", 1)[-1]
        try:
            extra["scf_attempts"] = count_attempts(folder)
        except (OSError, ValueError) as err:
            extra["scf_attempts_error"] = str(err)
        doc.additional_json = extra
    return response
