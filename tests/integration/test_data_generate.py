"""`mlcharge data generate` with real pw.x: records, failures, resume after SIGKILL, timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.generate import (
    CONVERGENCE_RETRY,
    GenerationSettings,
    generate_dataset,
)
from mlcharge_workflows.training.splits import check_disjoint

pytestmark = pytest.mark.pwx

# tiny and cheap: Si cells of 1-2 atoms, low cutoffs, coarse k-points
FAST = {"kspacing": 0.8, "ecutwfc_ry": 16.0, "ecutrho_ry": 64.0}
CLI_ARGS = ["--seed", "0", "--elements", "Si", "--max-atoms", "2", "--kspacing", "0.8",
            "--store-ecut", "40", "--no-progress"]  # fmt: skip


def _settings(**protocol) -> GenerationSettings:
    return GenerationSettings(
        seed=0, elements=["Si"], max_atoms=2, protocol={**FAST, **protocol}, store_ecut_ry=40.0
    )


def _pw_processes_in(folder: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] and "pw.x" in p.info["name"] and str(folder) in p.cwd():
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture(autouse=True)
def _serial_qe(monkeypatch):
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")


def test_generate_records_with_real_pwx(tmp_path):
    out = tmp_path / "ds"
    man = generate_dataset(out, 3, _settings(), nprocs=1, workers=2, progress=False)
    ds = DensityDataset(out)
    assert len(ds) == 3 and man["summary"]["n_records"] == 3 and not man["failures"]
    assert not (out / "work").exists() or not any((out / "work").iterdir())
    for rec in ds.records():
        meta = rec.metadata
        assert meta["converged"] and rec.scf_iterations >= 2
        assert rec.energy_eV < -90 * len(rec.structure)  # Si: about -105 eV per atom (NC PBE)
        assert abs(rec.n_electrons - 4 * len(rec.structure)) < 1e-3
        # stored at 40 Ry out of pw.x's 64 Ry sphere, with the measured truncation error
        assert meta["storage"]["store_ecut_ry"] == 40.0 and meta["ecutrho_ry"] == 64.0
        assert 0 < meta["storage"]["truncation_nmape_total_percent"] < 5
        assert meta["pw_version"].startswith("v.6") and meta["pseudopotentials"]["Si"]["md5"]
        assert "data generate" in json.dumps(meta["provenance"]) or meta["provenance"]["command"]
        grid = rec.to_grid()
        assert np.isfinite(grid.total).all() and grid.total.min() > -1e-2
        assert man["records"][rec.id]["family"] == "Si"
    assert sorted(sum(man["splits"].values(), [])) == ds.ids
    check_disjoint(man["splits"], {i: r["family"] for i, r in man["records"].items()})
    # resuming a finished dataset runs nothing and keeps the files
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "records").iterdir()}
    generate_dataset(out, 3, _settings(), nprocs=1, workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "records").iterdir()} == mtimes
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(out, 3, GenerationSettings(seed=1, elements=["Si"], max_atoms=2,
                                                    protocol=FAST), progress=False)


def test_unconverged_runs_are_listed_not_recorded(tmp_path):
    out = tmp_path / "ds"
    proc = subprocess.run(
        [sys.executable, "-m", "mlcharge_workflows.cli.main", "data", "generate", "--n", "1",
         "--out", str(out), "--protocol", str(_protocol_file(tmp_path, electron_maxstep=2)),
         *CLI_ARGS],  # the default: no convergence rerun
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["summary"]["n_records"] == 0 and len(man["failures"]) == 1
    (fail,) = man["failures"].values()
    assert fail["kind"] == "not_converged" and "did not converge" in fail["reason"]
    assert "not_converged" in proc.stdout
    run_dir = out / "work" / next(iter(man["failures"]))
    assert (run_dir / "pw.out").is_file() and not (run_dir / "out").exists()
    assert "rerun with" not in fail["reason"] and not (run_dir / "retry").exists()  # opt-in


def test_an_unconverged_run_is_rerun_once_with_local_tf_and_says_so(tmp_path):
    out = tmp_path / "ds"
    proc = subprocess.run(
        [sys.executable, "-m", "mlcharge_workflows.cli.main", "data", "generate", "--n", "1",
         "--out", str(out), "--protocol", str(_protocol_file(tmp_path, electron_maxstep=2)),
         "--convergence-retry", *CLI_ARGS],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert not man["failures"] and man["summary"]["n_records"] == 1
    (rec,) = DensityDataset(out).records()
    retry = rec.metadata["convergence_retry"]
    assert retry["changed"] == CONVERGENCE_RETRY
    assert retry["first_attempt"] == {"mixing_mode": "plain", "mixing_beta": 0.4,
                                      "electron_maxstep": 2}
    assert "did not converge in 2" in retry["reason"]
    # the record's protocol is the run that converged, the same physics otherwise
    prot = rec.metadata["protocol"]
    assert (prot["mixing_mode"], prot["mixing_beta"], prot["electron_maxstep"]) == (
        "local-TF", 0.2, 200)
    assert prot["kspacing"] == FAST["kspacing"] and rec.metadata["converged"]
    assert 2 < rec.scf_iterations <= 200
    assert abs(rec.n_electrons - 4 * len(rec.structure)) < 1e-3


def test_a_rerun_that_fails_too_is_listed_with_both_reasons(tmp_path):
    out = tmp_path / "ds"
    man = generate_dataset(out, 1, _settings(electron_maxstep=2), nprocs=1, workers=1,
                           progress=False,
                           convergence_retry={"mixing_mode": "local-TF", "electron_maxstep": 3})
    assert man["summary"]["n_records"] == 0
    (fail,) = man["failures"].values()
    assert fail["kind"] == "not_converged"
    assert "did not converge in 2" in fail["reason"]
    assert "rerun with {'mixing_mode': 'local-TF', 'electron_maxstep': 3}" in fail["reason"]
    assert "did not converge in 3" in fail["reason"]
    run_dir = out / "work" / next(iter(man["failures"]))
    assert (run_dir / "pw.out").is_file() and (run_dir / "retry" / "pw.out").is_file()
    assert not (run_dir / "out").exists() and not (run_dir / "retry" / "out").exists()


def _finished(out: Path) -> list[Path]:
    return sorted(p for p in (out / "records").glob("*.npz") if ".tmp" not in p.name)


def _protocol_file(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps({**FAST, **extra}))
    return path


def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "ds"
    n = 3
    cmd = [sys.executable, "-m", "mlcharge_workflows.cli.main", "data", "generate", "--n", str(n),
           "--out", str(out), "--workers", "1", "--protocol", str(_protocol_file(tmp_path)),
           *CLI_ARGS]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not _finished(out):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    first = _finished(out)
    assert first, "no record appeared before the deadline"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in first}
    time.sleep(2)  # the pool worker follows its parent (PDEATHSIG) and takes pw.x with it
    assert not _pw_processes_in(out)
    done_before = len(list((out / "records").glob("*.npz")))
    assert done_before < n, "generation finished before the kill: nothing to resume"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    ds = DensityDataset(out)
    assert len(ds) == n and len(set(ds.ids)) == n
    assert not list((out / "records").glob("*.tmp*"))
    for name, data in before.items():  # records finished before the kill were not redone
        assert (out / "records" / name).read_bytes() == data
    man = json.loads((out / "manifest.json").read_text())
    assert sorted(man["records"]) == ds.ids and not man["failures"]
    assert len(man["runs"]) == 2  # both commands are in the provenance


def test_timeout_kills_pwx_and_is_listed(tmp_path):
    out = tmp_path / "ds"
    settings = _settings(kspacing=0.15)  # thousands of k-points: far longer than the limit
    man = generate_dataset(out, 1, settings, nprocs=1, workers=1, progress=False, timeout_s=2)
    assert man["summary"]["n_records"] == 0
    (fail,) = man["failures"].values()
    assert fail["kind"] == "timeout"
    time.sleep(0.5)
    assert not _pw_processes_in(out)


def test_fireworks_submission_then_worker(tmp_path):
    """--fireworks: the same jobs go to the embedded LaunchPad; `mlcharge worker` runs them."""
    from mlcharge_workflows.submit import run_worker
    from mlcharge_workflows.training.storage import finalize_manifest

    out, project = tmp_path / "ds", tmp_path / "project"
    res = generate_dataset(out, 2, _settings(), fireworks=True, project=project)
    assert res["submitted"] == 2 and not DensityDataset(out).ids  # nothing ran yet
    again = generate_dataset(out, 2, _settings(), fireworks=True, project=project)
    assert again["submitted"] == 0  # not submitted twice
    summary = run_worker(project=project, progress=False)
    assert len(summary.completed) == 2 and not summary.fizzled
    man = finalize_manifest(out)
    assert man["summary"]["n_records"] == 2 and not man["failures"]
    assert all(r["scf_iterations"] > 0 for r in man["records"].values())


SI_US = Path("/usr/share/espresso/pseudo/Si.pbe-nl-rrkjus_psl.1.0.0.UPF")


@pytest.mark.skipif(not SI_US.is_file(), reason="Debian's alternate Si file is not installed")
def test_generate_with_a_user_pseudopotential_names_it_and_refuses_a_mixed_resume(tmp_path):
    import hashlib

    out = tmp_path / "ds"
    settings = _settings(ecutrho_ry=128.0, pseudopotentials={"Si": str(SI_US)})
    man = generate_dataset(out, 1, settings, nprocs=1, workers=1, progress=False)
    md5 = hashlib.md5(SI_US.read_bytes()).hexdigest()
    assert man["engine"]["pseudopotentials"]["Si"] == {
        "file": SI_US.name, "kind": "US", "z_valence": 4.0, "md5": md5}
    (rec,) = DensityDataset(out).records()
    assert rec.metadata["pseudopotentials"]["Si"]["file"] == SI_US.name
    assert abs(rec.n_electrons - 4 * len(rec.structure)) < 1e-3
    # the same folder with the registry's Si file is another dataset
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(out, 1, _settings(ecutrho_ry=128.0), progress=False)


def test_a_dataset_made_before_a_protocol_field_existed_resumes():
    from mlcharge_workflows.engines.qe.sets import QEProtocol
    from mlcharge_workflows.training.generate import _canon, _with_protocol_defaults

    today = QEProtocol(kspacing=0.6).model_dump(mode="json")
    before = {k: v for k, v in today.items() if k != "pseudopotentials"}  # older manifests
    filled = _with_protocol_defaults({"protocol": before, "store_ecut_ry": None})
    assert _canon(filled["protocol"]) == _canon(today)
    other = _with_protocol_defaults({"protocol": {**before, "kspacing": 0.3}})
    assert _canon(other["protocol"]) != _canon(today)


def test_generate_cli_refuses_a_wrong_pseudopotential_before_any_run(tmp_path):
    from typer.testing import CliRunner

    from mlcharge_workflows.cli.main import app

    c_file = "/usr/share/espresso/pseudo/C.pbe-rrkjus.UPF"
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["data", "generate", "--n", "1", "--out", str(out),
                                      "--elements", "Si", "--pseudo", f"Si={c_file}",
                                      "--no-progress"])
    assert result.exit_code == 1
    assert "is a pseudopotential for 'C', not for 'Si'" in result.output
    assert not out.exists()


def test_skip_packed_reruns_only_what_the_repository_lacks(tmp_path):
    from mlcharge_workflows.training.pack import pack_dataset

    first = tmp_path / "first"
    generate_dataset(first, 2, _settings(), nprocs=1, workers=1, progress=False)
    into = tmp_path / "qe"
    pack_dataset(first, into, log=lambda s: None)
    packed = set(DensityDataset(first).ids)
    ran: list[str] = []
    fresh = tmp_path / "fresh"  # a new machine: the generation folder is gone
    generate_dataset(fresh, 3, _settings(), nprocs=1, workers=1, progress=False,
                     skip_packed=[into], on_result=lambda r: ran.append(r["id"]))
    assert len(ran) == 1 and ran[0] not in packed
    assert set(DensityDataset(fresh).ids) == set(ran)
    with pytest.raises(ValueError, match="not a sharded dataset"):
        generate_dataset(tmp_path / "x", 1, _settings(), progress=False, skip_packed=[first])
