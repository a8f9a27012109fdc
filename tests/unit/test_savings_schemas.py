"""The public savings record: exact keys, nulls for arms not run, derived savings."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from mlcharge_workflows.common.schemas import (
    RECORD_KEYS,
    SavingsDocument,
    SavingsRecord,
    error_record,
)


def _full() -> SavingsDocument:
    return SavingsDocument(
        structure="Si.cif", formula="Si", n_atoms=2, engine="qe",
        scf_iterations={"baseline": 10, "ml": 6, "oracle": 2},
        energy_eV={"baseline": -214.1, "ml": -214.1000001},
        wall_s={"baseline": 4.0, "ml": 2.5, "predict": 0.5},
        ml_density_used=True,
        band_gap_eV={"scf": 0.59, "nscf_ml": 0.61, "nscf_atomic": 0.89},
        details={"model_version": "v1", "ml_attempts": [{"start": "ml", "scf_iterations": 6}]},
    )


def test_record_has_exactly_the_documented_keys_and_nested_arms() -> None:
    rec = _full().record()
    assert tuple(rec) == RECORD_KEYS
    assert set(rec["scf_iterations"]) == {"baseline", "ml", "oracle"}
    assert set(rec["energy_eV"]) == {"baseline", "ml"}
    assert set(rec["wall_s"]) == {"baseline", "ml", "predict"}
    assert set(rec["band_gap_eV"]) == {"scf", "nscf_ml", "nscf_atomic"}
    assert "details" not in rec
    json.dumps(rec)  # JSON-ready


def test_arms_not_run_are_null() -> None:
    rec = SavingsRecord(structure="x", engine="vasp").record()
    assert rec["scf_iterations"] == {"baseline": None, "ml": None, "oracle": None}
    assert rec["band_gap_eV"] == {"scf": None, "nscf_ml": None, "nscf_atomic": None}
    assert rec["ml_density_used"] is None and rec["fallback"] is None and rec["error"] is None


def test_derived_savings() -> None:
    doc = _full()
    assert doc.iteration_saving == pytest.approx(0.4)
    assert doc.oracle_saving == pytest.approx(0.8)
    assert doc.wall_saving == pytest.approx(1 - 3.0 / 4.0)  # prediction time is counted
    assert doc.energy_difference_eV == pytest.approx(-1e-7)
    assert SavingsRecord(structure="x", engine="qe").iteration_saving is None


def test_stored_document_round_trips_and_validates_as_record() -> None:
    doc = _full()
    data = json.loads(doc.model_dump_json())
    assert SavingsDocument.model_validate(data) == doc
    # a reader of the public format ignores the details and unknown future keys
    rec = SavingsRecord.model_validate({**data, "a_future_key": 1})
    assert rec.record() == doc.record()


def test_bad_values_are_rejected_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="engine"):
        SavingsRecord(structure="x", engine="castep")
    with pytest.raises(ValidationError, match="scf_iterations"):
        SavingsRecord(structure="x", engine="qe", scf_iterations={"baseline": 3, "typo": 1})


def test_error_record() -> None:
    rec = error_record("bad.cif", "qe", "ValueError: cannot read").record()
    assert rec["error"] == "ValueError: cannot read"
    assert rec["scf_iterations"]["baseline"] is None
