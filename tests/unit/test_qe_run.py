"""pw.x launching: clear errors when pw.x or MPI is missing (no pw.x run needed)."""

from __future__ import annotations

import os

import pytest

from mlcharge_workflows.engines.qe.run import pw_command, run_pw


def test_default_command_uses_mpi_and_nprocs(monkeypatch):
    monkeypatch.delenv("MLCHARGE_PW_CMD", raising=False)
    monkeypatch.delenv("MLCHARGE_MPI_CMD", raising=False)
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "3")
    cmd = pw_command()
    assert cmd[:6] == ["mpirun", "--allow-run-as-root", "--bind-to", "none", "-np", "3"]
    assert cmd[-3:] == ["pw.x", "-in", "pw.in"]
    assert pw_command(nprocs=1)[5] == "1"


def test_default_mpirun_does_not_pin_ranks(monkeypatch, tmp_path):
    """Open MPI binds each mpirun's ranks to the first cores: two concurrent single-rank
    pw.x runs then shared core 0 (measured: both at ~50% CPU, the other core idle)."""
    import shutil
    import subprocess

    if shutil.which("mpirun") is None or not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs Open MPI's mpirun and sched_getaffinity")
    script = tmp_path / "affinity.sh"
    script.write_text("#!/bin/sh\npython3 -c 'import os; print(sorted(os.sched_getaffinity(0)))'\n")
    script.chmod(0o755)
    monkeypatch.delenv("MLCHARGE_MPI_CMD", raising=False)
    monkeypatch.setenv("MLCHARGE_PW_CMD", str(script))
    out = subprocess.run(pw_command(nprocs=1), capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(sorted(os.sched_getaffinity(0))), out.stdout + out.stderr


def test_serial_when_mpi_cmd_empty(monkeypatch):
    monkeypatch.setenv("MLCHARGE_MPI_CMD", "")
    assert pw_command(nprocs=4, input_file="x.in") == ["pw.x", "-in", "x.in"]


def test_missing_pw_x(monkeypatch, tmp_path):
    monkeypatch.setenv("MLCHARGE_PW_CMD", "/nonexistent/pw.x")
    (tmp_path / "pw.in").write_text("&CONTROL\n/\n")
    with pytest.raises(RuntimeError, match=r"pw.x not found: MLCHARGE_PW_CMD='/nonexistent/pw.x'"):
        run_pw(tmp_path, nprocs=1)


def test_missing_mpi(monkeypatch):
    monkeypatch.setenv("MLCHARGE_MPI_CMD", "no-such-mpirun -np {nprocs}")
    with pytest.raises(RuntimeError, match="MPI launcher not found"):
        pw_command(nprocs=1)


def test_bad_nprocs_and_missing_input(tmp_path):
    with pytest.raises(ValueError, match="nprocs"):
        pw_command(nprocs=-1)
    with pytest.raises(FileNotFoundError, match="pw.in"):
        run_pw(tmp_path, nprocs=1)



def test_pw_environment_malloc_defaults(monkeypatch):
    from mlcharge_workflows.engines.qe.run import PW_MALLOC_ENV, pw_environment

    env = pw_environment({"PATH": "/usr/bin", "MALLOC_TOP_PAD_": "123"})
    assert env["PATH"] == "/usr/bin" and env["MALLOC_TOP_PAD_"] == "123"  # the user's value wins
    assert env["MALLOC_MMAP_THRESHOLD_"] == PW_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]
    off = pw_environment({"MLCHARGE_PW_MALLOC": "0"})
    assert not set(PW_MALLOC_ENV) & set(off)


def test_run_pw_passes_the_environment(monkeypatch, tmp_path):
    import subprocess

    from mlcharge_workflows.engines.qe import run as run_mod

    seen = {}

    def fake_run(cmd, **kwargs):
        seen.update(kwargs)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(run_mod, "run_tied", fake_run)  # pw.x runs through run_tied
    monkeypatch.setenv("MLCHARGE_MPI_CMD", "")
    monkeypatch.setenv("MLCHARGE_PW_CMD", "python3")  # any executable: subprocess is faked
    (tmp_path / "pw.in").write_text("&control\n/\n")
    run_mod.run_pw(tmp_path)
    assert seen["env"]["MALLOC_TRIM_THRESHOLD_"] == run_mod.PW_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]
