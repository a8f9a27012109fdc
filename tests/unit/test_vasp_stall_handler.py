"""MLStartStallHandler: custodian stops a stalled ML-started VASP SCF and falls back to atoms.

The stalled SCF is a real one: the 100 electronic steps of a V2O5 run that never converged
(tests/test_data/vasp/outputs/unconverged__vasprun.xml.electronic), written out as OSZICAR
lines; under custodian they are written one by one by a process custodian must stop.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
from custodian import Custodian
from custodian.custodian import Job
from pymatgen.io.vasp import Incar, Oszicar, Vasprun

from mlcharge_workflows.convergence import StallRule
from mlcharge_workflows.engines.vasp.handlers import (
    ML_CHGCAR,
    MLStartFallbackHandler,
    MLStartStallHandler,
    new_ml_start_record,
    read_ml_start_record,
    write_ml_start_record,
)

OUT = Path(__file__).resolve().parents[1] / "test_data" / "vasp" / "outputs"
STALLED = OUT / "unconverged__vasprun.xml.electronic"  # V2O5, 100 = NELM steps
CONVERGED = OUT / "lobster__vasp_lobster_output_v51__vasprun.xml"  # NaCl, 17 steps
CONVERGED_OSZ = OUT / "lobster__vasp_lobster_output_v51__OSZICAR"
HEADER = "       N       E                     dE             d eps       ncg     rms          rms(c)\n"


def _oszicar_lines(vasprun: Path) -> list[str]:
    """The electronic steps of a real run as OSZICAR lines (N, E, dE, d eps, ncg, rms)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps = Vasprun(str(vasprun), parse_dos=False, parse_eigen=False).ionic_steps[0]["electronic_steps"]
    lines, last = [], 0.0
    for n, step in enumerate(steps, start=1):
        e = step["e_fr_energy"]
        lines.append(f"RMM: {n:3d}   {e: .12E}   {e - last: .5E}   0.10000E+00  1000   0.100E+00\n")
        last = e
    return lines


def _ml_folder(path: Path, oszicar_lines: list[str] | None) -> Path:
    path.mkdir(exist_ok=True)
    Incar({"ICHARG": 1, "NELM": 100, "ALGO": "Fast"}).write_file(path / "INCAR")
    (path / ML_CHGCAR).write_text("predicted density\n")
    (path / "CHGCAR").write_text("predicted density\n")
    if oszicar_lines is not None:
        (path / "OSZICAR").write_text(HEADER + "".join(oszicar_lines))
    write_ml_start_record(new_ml_start_record({"source": "test"}), path)
    return path


def test_the_stalled_run_is_seen_as_stalled_at_the_default_rule() -> None:
    lines = _oszicar_lines(STALLED)
    assert len(lines) == 100
    de = [abs(float(line.split()[3])) for line in lines]
    assert StallRule().stalled_at(de) == 35  # of 100 steps to NELM


def test_check_and_correct_abandon_the_ml_start(tmp_path: Path) -> None:
    lines = _oszicar_lines(STALLED)
    h = MLStartStallHandler()
    early = _ml_folder(tmp_path / "early", lines[:34])
    assert Oszicar(str(early / "OSZICAR")).electronic_steps[0][-1]["N"] == 34  # pymatgen reads it
    assert not h.check(str(early))  # not stalled yet
    d = _ml_folder(tmp_path / "stalled", lines[:40])
    assert h.check(str(d))
    out = h.correct(str(d))
    rec = read_ml_start_record(d)
    assert rec["status"] == "abandoned" and rec["fallback"].startswith("stalled: the SCF stalled")
    assert "|dE| (eV)" in rec["fallback"] and "iteration 35" in rec["fallback"]
    assert rec["events"][0]["scf_steps"] == [40]
    assert Incar.from_file(d / "INCAR")["ICHARG"] == 2 and not (d / "CHGCAR").exists()
    assert (d / ML_CHGCAR).exists() and len(list(d.glob("error.*.tar.gz"))) == 1
    assert out["errors"][0].startswith("ML start: stalled")
    assert not h.check(str(d)) and not MLStartFallbackHandler().check(str(d))  # settled
    converged = _ml_folder(tmp_path / "converged", None)
    (converged / "OSZICAR").write_text(CONVERGED_OSZ.read_text())
    assert not h.check(str(converged))
    with pytest.raises(ValueError, match="StallRule needs"):
        MLStartStallHandler(window=0)
    assert MLStartStallHandler.from_dict(MLStartStallHandler(20, 3.0, 25).as_dict()).rule == StallRule(20, 3.0, 25)


class _StallingVasp(Job):
    """First run: a process that writes the stalled SCF's steps to OSZICAR, one every
    20 ms, and would go on for minutes; later runs write a converged run at once."""

    def __init__(self, lines: list[str], log: list) -> None:
        self.lines, self.log = lines, log

    def setup(self, directory: str = "./") -> None:
        pass

    def run(self, directory: str = "./"):
        d = Path(directory)
        chg = d / "CHGCAR"
        self.log.append({"ICHARG": Incar.from_file(d / "INCAR").get("ICHARG"),
                         "CHGCAR": chg.read_text() if chg.exists() else None})
        if len(self.log) == 1:
            (d / "lines.txt").write_text("".join(self.lines))
            script = ("import sys, time\nlines = open('lines.txt').readlines()\n"
                      f"out = open('OSZICAR', 'w'); out.write({HEADER!r})\n"
                      "for line in lines:\n    out.write(line); out.flush(); time.sleep(0.02)\n"
                      "time.sleep(600)\n")
            return subprocess.Popen([sys.executable, "-c", script], cwd=d)
        (d / "OSZICAR").write_text(CONVERGED_OSZ.read_text())
        (d / "vasprun.xml").write_text(CONVERGED.read_text())
        return subprocess.Popen([sys.executable, "-c", "pass"], cwd=d)

    def postprocess(self, directory: str = "./") -> None:
        pass


def test_under_custodian_the_stalled_run_is_stopped_and_rerun_from_atoms(tmp_path: Path) -> None:
    d = _ml_folder(tmp_path, None)
    log: list = []
    handlers = [MLStartStallHandler(), MLStartFallbackHandler()]
    Custodian(handlers, [_StallingVasp(_oszicar_lines(STALLED), log)], max_errors=3,
              polling_time_step=0.05, monitor_freq=2, directory=str(d)).run()
    assert log == [{"ICHARG": 1, "CHGCAR": "predicted density\n"}, {"ICHARG": 2, "CHGCAR": None}]
    rec = read_ml_start_record(d)
    assert rec["status"] == "abandoned" and rec["fallback"].startswith("stalled:")
    with tarfile.open(next(d.glob("error.1.tar.gz"))) as tar:  # the stopped attempt, kept
        member = next(m for m in tar.getmembers() if m.name.endswith("OSZICAR"))
        steps = tar.extractfile(member).read().decode().count("RMM:")
    assert 35 <= steps < 100  # stopped soon after it stalled, long before NELM
