"""``mlcharge scf`` end to end: the installed command, real pw.x, one MPI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.chgcar import write_chgcar
from mlcharge_workflows.engines.qe.core import read_converged_density
from mlcharge_workflows.units import RY_TO_EV

pytestmark = pytest.mark.pwx

MLCHARGE = str(Path(sys.executable).with_name("mlcharge"))
LIGHT = "ecutwfc_ry: 20\nkspacing: 0.5\n"


def si_cif(path: Path) -> Path:
    """Si as a CIF: pymatgen reads it back with a along x (pw.x sees 4 of 48 operations)."""
    a = 5.43
    lat = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    Structure(lat, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]).to(filename=str(path))
    return path


def mlcharge(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MLCHARGE_QE_NPROCS": "1", **(env or {})}
    return subprocess.run(
        [MLCHARGE, "scf", *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd
    )


@pytest.fixture(scope="module")
def atomic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "light.yaml").write_text(LIGHT)
    cif = si_cif(root / "si.cif")
    res = mlcharge(cif, "--engine", "qe", "--start", "atomic", "--workdir", root / "atomic",
                   "--protocol", root / "light.yaml", "--json", root / "atomic.json")
    assert res.returncode == 0, res.stderr
    return root, cif, res, json.loads((root / "atomic.json").read_text())


def test_atomic_start_prints_the_numbers(atomic_run):
    _, _, res, data = atomic_run
    for label in ("SCF iterations", "total energy", "wall time", "magnetisation", "density read"):
        assert label in res.stdout
    assert data["start"] == "atomic" and not data["density_initialised"] and data["converged"]
    assert data["scf_iterations"] >= 5
    assert f"{data['energy_eV']:.6f} eV" in res.stdout
    assert data["task_document"]["n_symmetry_ops"] == 48  # CIF frame turned for pw.x
    assert data["task_document"]["kpoints"] == [5, 5, 5]  # ceil(2.004 Å⁻¹ / 0.5 Å⁻¹)


@pytest.mark.parametrize("kind", ["run folder", "charge-density.dat", "CHGCAR"])
def test_restart_from_a_density(atomic_run, kind):
    root, cif, _, first = atomic_run
    start = {
        "run folder": root / "atomic",
        "charge-density.dat": root / "atomic/out/pwscf.save/charge-density.dat",
        "CHGCAR": root / "CHGCAR",
    }[kind]
    if kind == "CHGCAR":
        write_chgcar(read_converged_density(root / "atomic"), start)
    out = root / f"restart-{kind}.json"
    res = mlcharge(cif, "--start", start, "--workdir", root / f"restart-{kind}",
                   "--protocol", root / "light.yaml", "--json", out)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["density_read_from_file"] and data["density_initialised"]
    assert "yes (pw.x printed 'The initial density is read from file')" in res.stdout
    assert data["scf_iterations"] <= 2
    assert abs(data["energy_eV"] - first["energy_eV"]) / RY_TO_EV < 1e-6


def test_bad_inputs_exit_with_a_message(atomic_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mlcharge_workflows.cli.main import app

    root, cif, _, _ = atomic_run
    au = tmp_path / "au.cif"
    Structure(Lattice.cubic(4.08), ["Au"], [[0, 0, 0]]).to(filename=str(au))
    cases = [
        ((au,), {}, "supported elements: H, B, C"),
        ((cif, "--start", tmp_path / "nope"), {}, "does not exist"),
        ((cif, "--engine", "vasp"), {}, "engine 'vasp' is not supported"),
        ((tmp_path / "missing.cif",), {}, "does not exist"),
        ((cif, "--protocol", root / "light.yaml"), {"MLCHARGE_PW_CMD": "/nonexistent/pw.x"},
         "pw.x not found"),
    ]
    for args, env, message in cases:  # in-process: same code as the command, no re-import
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        res = CliRunner().invoke(app, ["scf", *map(str, args), "--workdir", str(tmp_path / "w")])
        assert res.exit_code == 1, (args, res.output)
        assert message in res.stderr, (args, res.stderr)
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").glob("out/*"))


def test_density_pw_x_did_not_read_is_reported_as_not_used(atomic_run, tmp_path):
    root, cif, _, _ = atomic_run
    wrapper = tmp_path / "pw_losing_density.sh"  # real pw.x; the file vanishes before the SCF
    wrapper.write_text(
        '#!/bin/sh\ncase "$*" in *pw.in*) rm -f out/pwscf.save/charge-density.dat;; esac\n'
        'exec pw.x "$@"\n'
    )
    wrapper.chmod(0o755)
    res = mlcharge(cif, "--start", root / "atomic", "--workdir", tmp_path / "lost",
                   "--protocol", root / "light.yaml", "--json", tmp_path / "lost.json",
                   env={"MLCHARGE_PW_CMD": str(wrapper)})
    assert res.returncode == 3, res.stderr
    assert "NO: pw.x started from atoms; this run is NOT density-initialised" in res.stdout
    data = json.loads((tmp_path / "lost.json").read_text())
    assert data["start"] == "file"
    assert not data["density_read_from_file"] and not data["density_initialised"]
    assert data["task_document"]["density_file_missing"]
