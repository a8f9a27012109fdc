"""``data generate --generator-option``: generator 2's options reach the generator and its
manifest settings; unknown keys and generator 1 are refused by name, before any pw.x run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mlcharge_workflows.cli.data import _generator_options
from mlcharge_workflows.cli.main import app
from mlcharge_workflows.training.generate import GenerationSettings


def test_options_parse_as_json_values():
    assert _generator_options(["afm_fraction=1.0", "size_exponent=0", "magnetic_elements=[\"Fe\"]"]) == {
        "afm_fraction": 1.0, "size_exponent": 0, "magnetic_elements": ["Fe"]}


def test_options_reach_the_generator_and_its_settings():
    settings = GenerationSettings(seed=3, generator_version=2, elements=["Fe", "Co", "O"],
                                  generator_options={"magnetic_fraction": 1.0, "afm_fraction": 1.0})
    gen = settings.generator()
    assert gen.settings()["afm_fraction"] == 1.0 and gen.settings()["magnetic_fraction"] == 1.0
    default = GenerationSettings(seed=3, generator_version=2, elements=["Fe", "Co", "O"]).generator()
    assert default.settings()["afm_fraction"] != 1.0
    # every structure with two or more magnetic atoms now starts antiferromagnetic
    for g in gen.generate(12):
        magmom = [m for m in g.structure.site_properties.get("magmom", []) if m]
        assert magmom, g.id  # magnetic_fraction 1: every cell has a magnetic start
        if len(magmom) >= 2:
            assert min(magmom) < 0 < max(magmom), g.id


def test_bad_options_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="afm_fracton"):
        GenerationSettings(generator_version=2, generator_options={"afm_fracton": 1.0}).generator()
    with pytest.raises(ValueError, match="version 1 takes no options"):
        GenerationSettings(generator_version=1, generator_options={"afm_fraction": 1.0}).generator()
    runner = CliRunner()
    out = tmp_path / "ds"
    res = runner.invoke(app, ["data", "generate", "--n", "1", "--generator", "2", "--out", str(out),
                              "--generator-option", "afm_fracton=1"])
    assert res.exit_code != 0 and "afm_fracton" in res.output
    res = runner.invoke(app, ["data", "generate", "--n", "1", "--out", str(out), "--generator-option", "afm"])
    assert res.exit_code != 0 and "KEY=VALUE" in res.output
    assert not (out / "records").exists()
