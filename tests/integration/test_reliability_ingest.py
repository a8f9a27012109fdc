"""``mlcharge data ingest`` lists a broken run as a failure with its reason and goes on.

A ``vasprun.xml`` cut in half (VASP killed, or still writing) or not XML at all used to stop
the ingestion with a pymatgen traceback, every rerun at the same folder.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mlcharge_workflows.cli.main import app
from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.ingest import ingest_vasp_runs
from test_data_ingest import VASP, _run_folder  # the same real VASP outputs

pytestmark = pytest.mark.skipif(not VASP.is_dir(), reason="real VASP outputs not present")


def _sources(tmp_path):
    src = tmp_path / "runs"
    _run_folder(src, "a_al", "static_smearing__vasprun.xml")
    cut, _ = _run_folder(src, "b_cut", "static_smearing__vasprun.xml")
    text = (cut / "vasprun.xml").read_text()
    (cut / "vasprun.xml").write_text(text[: len(text) // 2])  # killed mid-write
    junk, _ = _run_folder(src, "c_junk", "static_smearing__vasprun.xml")
    (junk / "vasprun.xml").write_text("this is not XML\x00\x01")
    _run_folder(src, "d_feo", "postprocess__vasprun.xml", mag_fraction=0.1)  # after the broken
    return src


def test_broken_vasprun_is_a_failure_and_ingest_goes_on(tmp_path):
    src = _sources(tmp_path)
    man = ingest_vasp_runs(src, tmp_path / "ds", progress=False)
    assert DensityDataset(tmp_path / "ds").ids == ["vasp-a_al", "vasp-d_feo"]
    for rid in ("vasp-b_cut", "vasp-c_junk"):
        failure = man["failures"][rid]
        assert failure["kind"] == "bad_vasprun", failure
        assert "vasprun.xml: unreadable" in failure["reason"]
        assert "killed or is still writing" in failure["reason"]
    # a rerun reads only what failed, and still does not stop
    again = ingest_vasp_runs(src, tmp_path / "ds", progress=False)
    assert again["summary"]["n_records"] == 2 and again["summary"]["n_failures"] == 2


def test_ingest_cli_lists_the_broken_runs(tmp_path):
    src = _sources(tmp_path)
    result = CliRunner().invoke(app, ["data", "ingest", str(src), "--out", str(tmp_path / "ds"),
                                      "--no-progress"])
    assert result.exit_code == 2, result.output  # finished with failures listed
    assert "records          2" in result.output
    assert "failed vasp-b_cut: bad_vasprun" in result.output
    assert "failed vasp-c_junk: bad_vasprun" in result.output
    assert "Traceback" not in result.output
