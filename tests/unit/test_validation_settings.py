"""Unknown settings are refused, with the nearest valid name, by every command reading them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mlcharge_workflows.catalogue import qe_protocol
from mlcharge_workflows.cli.main import app
from mlcharge_workflows.validation import check_known_fields

TYPO = "unknown QE protocol field 'ecutwfcc' (did you mean 'ecutwfc_ry'?)"


def test_check_known_fields_suggests_nearest():
    check_known_fields({"a": 1}, ["a", "b"], "thing")
    with pytest.raises(ValueError, match=r"unknown thing fields 'alpah' \(did you mean 'alpha'\?\), "
                                         r"'zzz'; known fields: alpha, beta"):
        check_known_fields({"alpah": 1, "zzz": 2, "beta": 3}, ["alpha", "beta"], "thing")


def test_qe_protocol_refuses_typo():
    with pytest.raises(ValueError, match=r"did you mean 'ecutwfc_ry'"):
        qe_protocol({"ecutwfcc": 45})
    assert qe_protocol({"ecutwfc_ry": 45}).ecutwfc_ry == 45


@pytest.fixture
def typo_file(tmp_path, si):
    p = tmp_path / "p.yaml"
    p.write_text("ecutwfcc: 45\n")
    si.to(filename=str(tmp_path / "Si.cif"))
    return p


@pytest.mark.parametrize("command", ["scf", "data generate", "submit", "compare",
                                     "compare-inline"])
def test_every_command_refuses_a_typo(tmp_path, typo_file, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    si = str(tmp_path / "Si.cif")
    args = {
        "scf": ["scf", si, "--protocol", str(typo_file), "--workdir", "run"],
        "data generate": ["data", "generate", "--n", "1", "--out", "ds", "--protocol",
                          str(typo_file), "--no-progress"],
        "submit": ["submit", si, "--protocol", str(typo_file), "--project", "proj",
                   "--no-progress"],
        "compare": ["compare", si, "--protocol", str(typo_file), "-o", "r.json", "--no-progress"],
        "compare-inline": ["compare", si, "--protocol", json.dumps({"ecutwfcc": 45}), "-o",
                           "r.json", "--no-progress"],
    }[command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (1, 2), result.output
    assert TYPO in result.output
    assert not any((tmp_path / n).exists() for n in ("run", "ds", "proj", "r.json"))


def test_empty_model_path_means_the_shipped_weights(monkeypatch):
    from mlcharge_workflows.settings import MLChargeSettings

    monkeypatch.setenv("MLCHARGE_MODEL_PATH", "")
    assert MLChargeSettings().model_path is None
    monkeypatch.setenv("MLCHARGE_MODEL_PATH", "/x/w.pt")
    assert str(MLChargeSettings().model_path) == "/x/w.pt"
