"""pw.x launching: clear errors when pw.x or MPI is missing (no pw.x run needed)."""

from __future__ import annotations

import pytest

from mlcharge_workflows.engines.qe.run import pw_command, run_pw


def test_default_command_uses_mpi_and_nprocs(monkeypatch):
    monkeypatch.delenv("MLCHARGE_PW_CMD", raising=False)
    monkeypatch.delenv("MLCHARGE_MPI_CMD", raising=False)
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "3")
    cmd = pw_command()
    assert cmd[:4] == ["mpirun", "--allow-run-as-root", "-np", "3"]
    assert cmd[-3:] == ["pw.x", "-in", "pw.in"]
    assert pw_command(nprocs=1)[3] == "1"


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

