"""User pseudopotentials end to end with real pw.x: an ML start built on Debian's alternate
(US) Si file is read by pw.x and lands on the energy of the atomic start with that file;
the records name the files and say the prediction's reference differs from training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from mlcharge_workflows.engines.qe.sets import QEProtocol
from mlcharge_workflows.units import RY_TO_EV

pytestmark = pytest.mark.pwx

SI_US = Path("/usr/share/espresso/pseudo/Si.pbe-nl-rrkjus_psl.1.0.0.UPF")
PROTOCOL = {"ecutwfc_ry": 20.0, "ecutrho_ry": 160.0, "kspacing": 0.6}


@pytest.fixture
def si(si_primitive) -> Structure:
    return si_primitive


@pytest.fixture(autouse=True)
def _serial(monkeypatch):
    if not SI_US.is_file():
        pytest.skip("Debian's Si.pbe-nl-rrkjus_psl.1.0.0.UPF is not installed")
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")


def test_ml_start_on_alternate_si_file_reads_and_matches_atomic(tmp_path, si) -> None:
    from mlcharge_workflows.common.store import run_flow_collect
    from mlcharge_workflows.engines.qe.flows import QEComparisonMaker

    protocol = QEProtocol(**PROTOCOL, pseudopotentials={"Si": str(SI_US)})
    out = run_flow_collect(QEComparisonMaker(protocol=protocol, nprocs=1).make(si, label="Si"),
                           tmp_path)
    rec = out["record"]
    assert rec["error"] is None, rec["error"]
    assert rec["ml_density_used"] is True and rec["fallback"] is None
    (attempt,) = rec["details"]["ml_attempts"]
    assert attempt["density_read_from_file"] is True
    for folder in (attempt["dir_name"], rec["details"]["dir_names"]["baseline"]):
        pw_in = (Path(folder) / "pw.in").read_text()
        assert SI_US.name in pw_in and "Si.pbe-rrkj.UPF" not in pw_in
        assert (Path(folder) / "pseudo" / SI_US.name).read_bytes() == SI_US.read_bytes()
    pw_out = (Path(attempt["dir_name"]) / "pw.out").read_text()
    assert "The initial density is read from file" in pw_out
    e = rec["energy_eV"]
    assert abs(e["ml"] - e["baseline"]) < 10 * protocol.conv_thr(si) * RY_TO_EV
    # the savings record says the prediction stood on other pseudopotentials than training
    ref = rec["details"]["prediction_reference"]
    assert ref["differs_from_training"] is True
    assert ref["elements"]["Si"]["source"]["file"] == SI_US.name


def test_scf_cli_pseudo_option_names_the_file_and_md5(tmp_path, si) -> None:
    import hashlib

    from mlcharge_workflows.cli.main import app

    cif = tmp_path / "si.cif"
    si.to(filename=str(cif))
    proto = tmp_path / "p.json"
    proto.write_text(json.dumps(PROTOCOL))
    res = CliRunner().invoke(app, ["scf", str(cif), "--protocol", str(proto), "--pseudo",
                                   f"Si={SI_US}", "--workdir", str(tmp_path / "run"),
                                   "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    md5 = hashlib.md5(SI_US.read_bytes()).hexdigest()
    assert f"Si: {SI_US.name} (user, md5 {md5})" in res.output
    doc = json.loads((tmp_path / "r.json").read_text())["task_document"]
    assert doc["pseudopotentials"]["Si"]["md5"] == md5
    assert doc["protocol"]["pseudopotentials"] == {"Si": str(SI_US)}
    # a wrong element is refused before any run, naming the file
    bad = CliRunner().invoke(app, ["scf", str(cif), "--pseudo", f"C={SI_US}",
                                   "--workdir", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "not for 'C'" in bad.output
    assert not (tmp_path / "bad").exists()
