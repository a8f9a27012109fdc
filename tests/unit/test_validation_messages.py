"""Clear messages instead of tracebacks, and results never overwritten without --overwrite."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mlcharge_workflows.cli.main import app
from mlcharge_workflows.common.schemas import SavingsDocument


def _invoke(args):
    result = CliRunner().invoke(app, args)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    return result


@pytest.fixture
def si_file(tmp_path, si):
    path = tmp_path / "Si.cif"
    si.to(filename=str(path))
    return path


def test_malformed_training_yaml(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("datasets: [a, b\nepochs: 3\n")
    result = _invoke(["train", str(bad)])
    assert result.exit_code == 1 and "not valid YAML" in result.output
    typo = tmp_path / "typo.yaml"
    typo.write_text("datasets: [ds]\nepoch: 3\n")
    result = _invoke(["train", str(typo)])
    assert result.exit_code == 1
    assert "unknown training config" in result.output and "did you mean 'epochs'?" in result.output


@pytest.mark.parametrize("kind", ["junk", "pickle"])
def test_corrupt_model_file_without_unsafe_advice(tmp_path, si_file, kind):
    import fractions

    import torch

    model = tmp_path / "model.pt"
    if kind == "junk":
        model.write_bytes(b"PK\x03\x04 this is not a torch file" * 10)
    else:  # a pickle of a class torch's safe loader refuses: its error advises weights_only=False
        torch.save({"a": fractions.Fraction(1, 2)}, model)
    result = _invoke(["predict", str(si_file), "-o", str(tmp_path / "out"), "--model", str(model)])
    assert result.exit_code == 1
    assert f"cannot read density model weights {model}" in result.output
    assert "weights_only" not in result.output


def test_scf_nprocs_zero_refused(tmp_path, si_file):
    result = _invoke(["scf", str(si_file), "--nprocs", "0", "--workdir", str(tmp_path / "run")])
    assert result.exit_code == 1 and "--nprocs must be >= 1, got 0" in result.output
    assert not (tmp_path / "run").exists()


def test_scf_workdir_not_overwritten(tmp_path, si_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pw.out").write_text("an earlier run\n")
    result = _invoke(["scf", str(si_file), "--workdir", str(run), "--nprocs", "1"])
    assert result.exit_code == 1
    assert f"--workdir {run} is a folder that is not empty" in result.output
    assert "--overwrite" in result.output
    assert (run / "pw.out").read_text() == "an earlier run\n"


@pytest.mark.parametrize(("engine", "existing"), [("qe", "out/pwscf.save/charge-density.dat"),
                                                  ("vasp", "out/CHGCAR")])
def test_predict_output_not_overwritten(tmp_path, si_file, engine, existing):
    target = tmp_path / existing
    target.parent.mkdir(parents=True)
    target.write_text("earlier\n")
    result = _invoke(["predict", str(si_file), "--engine", engine, "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "earlier results would be overwritten" in result.output
    assert target.read_text() == "earlier\n"


def test_compare_output_not_overwritten(tmp_path, si_file):
    out = tmp_path / "r.json"
    out.write_text("[]\n")
    result = _invoke(["compare", str(si_file), "-o", str(out), "--no-progress"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert out.read_text() == "[]\n"


def test_random_file_named_charge_density_dat(tmp_path, si):
    from mlcharge_workflows.engines.qe.core import load_start_density

    fake = tmp_path / "charge-density.dat"
    fake.write_bytes(b"random bytes, not pw.x's binary file\n" * 20)
    with pytest.raises(ValueError, match="is not a pw.x charge-density.dat") as info:
        load_start_density(fake, si)
    assert "CHGCAR" not in str(info.value)


def _rec(name, ml, fallback=None, error=None):
    return SavingsDocument(
        structure=name, formula="Si", n_atoms=2, engine="qe",
        scf_iterations={"baseline": 10, "ml": ml, "oracle": None},
        energy_eV={"baseline": -100.0, "ml": None if ml is None else -100.0},
        wall_s={"baseline": 10.0, "ml": None if ml is None else 5.0, "predict": 0.5},
        band_gap_eV={}, ml_density_used=False, fallback=fallback, error=error)


def test_report_counts_only_real_fallbacks():
    from mlcharge_workflows.savings.report import summarize, summary_lines

    records = [
        _rec("fell back", 10, fallback="not_converged: ..."),  # the ML arm ran from atoms
        _rec("errored only", None, fallback="not_converged: ...; atomic rerun failed: x",
             error="arm(s) did not finish: ml"),
    ]
    summary = summarize(records)
    assert summary["n_fallback"] == 1 and summary["n_errors"] == 1
    assert "1 with errors, 1 fell back to atoms" in summary_lines(summary)[0]
