"""``mlcharge compare`` keeps finished work (real pw.x on 2-atom Si cells).

* ``-o`` is checked before any run (unwritable, existing without --overwrite/--resume);
* each record reaches the JSON, the JSON Lines file and the store as its structure finishes:
  SIGINT after the first structure keeps it, and ``--resume`` skips it;
* a structure whose process dies (SIGSEGV, as a crash in native code) gets an error record
  and the others finish; the exit status says some structure failed (3).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

pytestmark = pytest.mark.pwx

FAST = json.dumps({"ecutwfc_ry": 12.0, "ecutrho_ry": 48.0, "kspacing": 1.0})
MLCHARGE = [sys.executable, "-m", "mlcharge_workflows.cli.main"]


def _si(path: Path, a: float) -> str:
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    Structure(lattice, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]).to(filename=str(path))
    return str(path)


def _env() -> dict[str, str]:
    return dict(os.environ, MLCHARGE_QE_NPROCS="1", MLCHARGE_MPI_CMD="", OMP_NUM_THREADS="1")


def _compare(tmp_path: Path, structures: list[str], *extra: str) -> list[str]:
    return [*MLCHARGE, "compare", *structures, "-o", str(tmp_path / "out" / "records.json"),
            "--workdir", str(tmp_path / "runs"), "--store", str(tmp_path / "project"),
            "--protocol", FAST, "--no-progress", *extra]


def _processes_under(root: Path) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(root)):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_output_checked_before_any_run(tmp_path):
    si = _si(tmp_path / "Si.cif", 5.43)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    proc = subprocess.run([*MLCHARGE, "compare", si, "-o", str(blocker / "r.json"), "--workdir",
                           str(tmp_path / "runs"), "--no-progress"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert f"{blocker} is a file, not a folder" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing ran

    out = tmp_path / "out" / "records.json"
    out.parent.mkdir()
    out.write_text("[]\n")
    proc = subprocess.run(_compare(tmp_path, [si]), capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == 2
    assert "exists: add --overwrite to replace it or --resume" in proc.stderr
    assert out.read_text() == "[]\n" and not (tmp_path / "runs").exists()


def test_interrupt_keeps_finished_then_resume(tmp_path):
    structures = [_si(tmp_path / f"Si{i}.cif", a) for i, a in enumerate((5.43, 5.50, 5.36))]
    jsonl = tmp_path / "out" / "records.jsonl"
    # SIGINT handled as at a terminal, even when the suite runs as a background job
    # (which starts every child with SIGINT ignored)
    proc = subprocess.Popen(_compare(tmp_path, structures, "--jobs", "1"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 400
    while time.time() < deadline:  # wait for the first record, then Ctrl-C
        if jsonl.is_file() and jsonl.read_text().count("\n") >= 1:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    else:
        pytest.fail("no structure finished")
    os.kill(proc.pid, signal.SIGINT)  # the compare process only, as a test of its own handling
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Rerun with --resume" in err
    records = json.loads((tmp_path / "out" / "records.json").read_text())
    assert 1 <= len(records) < 3
    first = records[0]
    assert first["structure"] == structures[0] and first["error"] is None
    assert first["scf_iterations"]["baseline"] > 0
    assert len(jsonl.read_text().splitlines()) == len(records)
    time.sleep(1)
    assert _processes_under(tmp_path / "runs") == []  # no pw.x of the stopped structure left

    from mlcharge_workflows.common.store import savings_documents
    from mlcharge_workflows.submit.config import project_job_store, project_paths

    store = project_job_store(project_paths(tmp_path / "project"))
    assert {d.structure for d in savings_documents(store)} == {r["structure"] for r in records}

    first_run = Path(tmp_path / "runs")
    before = {p: p.stat().st_mtime for p in first_run.glob("000-*/**/pw.out")}
    done = subprocess.run(_compare(tmp_path, structures, "--jobs", "1", "--resume"),
                          capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr
    assert f"{len(records)} kept from the earlier run" in done.stdout
    final = json.loads((tmp_path / "out" / "records.json").read_text())
    assert [r["structure"] for r in final] == structures
    assert final[0] == first  # the finished structure was not run again
    assert all(r["error"] is None for r in final)
    assert {p: p.stat().st_mtime for p in first_run.glob("000-*/**/pw.out")} == before


def test_one_crashing_structure_does_not_take_the_others(tmp_path):
    structures = [_si(tmp_path / f"Si{i}.cif", a) for i, a in enumerate((5.43, 5.50, 5.36))]
    proc = subprocess.Popen(_compare(tmp_path, structures, "--jobs", "2"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    victim = None
    deadline = time.time() + 400
    while victim is None and time.time() < deadline:  # the process running structure 000
        for pid in _processes_under(tmp_path / "runs" / "000-Si0"):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                stat = Path(f"/proc/{pid}/stat").read_text().split()
            except OSError:
                continue
            if comm == "pw.x":
                victim = int(stat[3])  # its parent: the structure's Python process
                break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    assert victim is not None and victim != proc.pid
    os.kill(victim, signal.SIGSEGV)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 3, err  # finished, some structure failed
    records = json.loads((tmp_path / "out" / "records.json").read_text())
    assert [r["structure"] for r in records] == structures
    crashed, *others = records
    assert "died: killed by SIGSEGV" in crashed["error"]
    assert all(r["error"] is None and r["scf_iterations"]["ml"] for r in others)
    assert "BrokenProcessPool" not in err
