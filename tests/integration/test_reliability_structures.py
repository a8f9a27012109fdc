"""Structure files through the CLI entry points: a named error or a valid run, never a crash.

Random POSCAR files (random lattices, NaN/inf, overlapping and empty cells) go through
``mlcharge submit`` (read, validate, build the workflow), ``predict`` (model inference),
``scf`` and ``compare``. A segfault shows as a negative exit status (or 139), a raw error as
a traceback on stderr: both fail. What the in-process validation refuses, every command
refuses with the same message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlcharge_workflows.validation import StructureError, read_structure

MLCHARGE = [sys.executable, "-m", "mlcharge_workflows.cli.main"]

NUM = st.one_of(
    st.floats(-9, 9, allow_nan=False).map(lambda x: f"{x:.6f}"),
    st.sampled_from(["nan", "inf", "-inf", "0", "1e-9", "1e30", "4.0"]),
)
LATTICE = st.one_of(
    st.lists(NUM, min_size=9, max_size=9),
    st.floats(2.5, 6.0).map(lambda a: [f"{a}", "0", "0", "0", f"{a}", "0", "0", "0", f"{a}"]),
)
FRAC = st.lists(
    st.lists(st.one_of(st.floats(0, 1).map(lambda x: f"{x:.5f}"),
                       st.sampled_from(["nan", "inf", "0", "0.001"])), min_size=3, max_size=3),
    min_size=0, max_size=4,
)


def _poscar(lattice: list[str], frac: list[list[str]]) -> str:
    rows = [" ".join(lattice[3 * i:3 * i + 3]) for i in range(3)]
    body = [" ".join(f) for f in frac]
    return "\n".join(["fuzz", "1.0", *rows, "Si", str(len(frac)), "Direct", *body]) + "\n"


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMPI_MCA_rmaps_base_oversubscribe": "1", "MLCHARGE_QE_NPROCS": "1"}
    return subprocess.run([*MLCHARGE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _assert_no_crash(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode >= 0 and proc.returncode != 139, f"{what} crashed: {proc.returncode}"
    assert "Traceback" not in proc.stderr, f"{what}: raw traceback\n{proc.stderr[-2000:]}"


def _expected(path: Path) -> str | None:
    try:
        read_structure(path)
    except StructureError as exc:
        return str(exc)
    return None


@settings(max_examples=12, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(lattice=LATTICE, frac=FRAC)
def test_fuzz_submit(tmp_path, lattice, frac):
    """``submit`` reads, validates and builds a compare workflow; all or nothing."""
    path = tmp_path / "POSCAR"
    path.write_text(_poscar(lattice, frac))
    expected = _expected(path)
    proc = _run(["submit", str(path), "--project", str(tmp_path / "proj"), "--no-progress"],
                tmp_path)
    _assert_no_crash(proc, "submit")
    if expected is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert expected.splitlines()[0] in proc.stderr


BAD = {
    "nan-site": (["4 0 0", "0 4 0", "0 0 4"], ["0 0 0", "nan 0.5 0.5"], r"site 1 \(Si\) has non-finite"),
    "inf-lattice": (["inf 0 0", "0 4 0", "0 0 4"], ["0 0 0"], r"lattice vector a = .* not finite"),
    "zero-volume": (["4 0 0", "4 0 0", "0 0 4"], ["0 0 0"], r"cell volume is 0 Å³"),
    "overlap": (["5 0 0", "0 5 0", "0 0 5"], ["0 0 0", "0.06 0 0"], r"0.300 Å apart .*closer than 0.5 Å"),
    "tiny-cell": (["0.55 0 0", "0 0.55 0", "0 0 0.55"], ["0 0 0", "0.5 0.5 0.5"], r"Å³ per atom"),
}


def _bad_file(tmp_path: Path, case: str) -> tuple[Path, str]:
    lattice, frac, match = BAD[case]
    path = tmp_path / f"{case}.vasp"
    path.write_text("\n".join(["bad", "1.0", *lattice, "Si", str(len(frac)), "Direct", *frac]) + "\n")
    return path, match


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["scf", "predict", "submit", "compare"])
def test_bad_structures_named_error(tmp_path, case, command):
    """Each command refuses each bad cell with a message naming the site or lattice vector."""
    import re

    path, match = _bad_file(tmp_path, case)
    args = {
        "scf": ["scf", str(path), "--workdir", str(tmp_path / "run")],
        "predict": ["predict", str(path), "-o", str(tmp_path / "out")],
        "submit": ["submit", str(path), "--project", str(tmp_path / "proj"), "--no-progress"],
        "compare": ["compare", str(path), "-o", str(tmp_path / "rec.json"), "--workdir",
                    str(tmp_path / "run"), "--store", str(tmp_path / "proj"), "--no-progress"],
    }[command]
    proc = _run(args, tmp_path)
    _assert_no_crash(proc, command)
    if command == "compare":  # an error record per bad structure, exit status 3
        assert proc.returncode == 3, proc.stdout + proc.stderr
        (record,) = json.loads((tmp_path / "rec.json").read_text())
        assert re.search(match, record["error"]), record["error"]
        assert not list(tmp_path.glob("run/**/pw.in"))  # nothing ran
        return
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert re.search(match, proc.stderr), proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_predict_refuses_what_scf_refuses(tmp_path):
    """Atoms 0.3 Å apart: predict used to warn and go on while scf refused; now both refuse."""
    path, _ = _bad_file(tmp_path, "overlap")
    for args in (["predict", str(path), "-o", str(tmp_path / "o")],
                 ["scf", str(path), "--workdir", str(tmp_path / "w")]):
        proc = _run(args, tmp_path)
        assert proc.returncode == 1
        assert "closer than 0.5 Å, the limit of every command" in proc.stderr
