"""Regenerate the real pw.x outputs that tests/unit/test_qe_parse.py reads.

Run from the repository root: ``.venv/bin/python tests/unit/data/qe/make_fixtures.py``
(QE 6.7 from Debian, 1 MPI process, about 30 s). Files written next to this script:

* ``si_scf_atomic.out`` / ``si_scf.xml``: Si (2 atoms) SCF from atoms, light protocol.
* ``si_scf_file.out``: the restart from that run's density ("The initial density is read").
* ``si_cannot_read_rho.out``: startingpot='file' with the file deleted ("Cannot read rho").
* ``si_not_converged.out``: electron_maxstep=2.
* ``si_dryrun.out``: the zero-step dry run (exit status 2).
* ``si_crash.out`` / ``si_crash.CRASH``: pw.x -nk 7 on 1 process (invalid number of pools).
* ``ni_scf_atomic.out`` / ``ni_scf.xml``: spin-polarised fcc Ni from atoms.
* ``si_bands.out`` / ``si_bands.xml``: line-mode bands from the Si density.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pymatgen.core import Lattice, Structure

from mlcharge_workflows.engines.qe.core import read_converged_density, run_qe_nscf, run_qe_scf
from mlcharge_workflows.engines.qe.sets import QEProtocol, pw_input, write_pw_input

HERE = Path(__file__).parent
LIGHT = QEProtocol(ecutwfc_ry=20, kspacing=0.5, line_density=4)


def si() -> Structure:
    a = 5.43
    lat = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lat, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def ni() -> Structure:
    a = 3.52
    lat = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lat, ["Ni"], [[0, 0, 0]])


def main() -> None:
    os.environ["MLCHARGE_QE_NPROCS"] = "1"
    tmp = Path(tempfile.mkdtemp())
    run_qe_scf(si(), tmp / "a", protocol=LIGHT)
    shutil.copy(tmp / "a/pw.out", HERE / "si_scf_atomic.out")
    shutil.copy(tmp / "a/out/pwscf.save/data-file-schema.xml", HERE / "si_scf.xml")
    run_qe_scf(si(), tmp / "b", start=tmp / "a", protocol=LIGHT)
    shutil.copy(tmp / "b/pw.out", HERE / "si_scf_file.out")
    shutil.copy(tmp / "b/dryrun.out", HERE / "si_dryrun.out")
    # startingpot='file' without a file: pw.x says "Cannot read rho" and starts from atoms
    c = tmp / "c"
    shutil.copytree(tmp / "b", c)
    (c / "out/pwscf.save/charge-density.dat").unlink()
    subprocess.run("pw.x -in pw.in > pw.out 2>&1", shell=True, cwd=c, check=True)
    shutil.copy(c / "pw.out", HERE / "si_cannot_read_rho.out")
    write_pw_input(pw_input(si(), LIGHT, electron_maxstep=2), c / "nc.in")
    subprocess.run("pw.x -in nc.in > nc.out 2>&1", shell=True, cwd=c)
    shutil.copy(c / "nc.out", HERE / "si_not_converged.out")
    subprocess.run("pw.x -nk 7 -in pw.in > crash.out 2>&1", shell=True, cwd=c)
    shutil.copy(c / "crash.out", HERE / "si_crash.out")
    shutil.copy(c / "CRASH", HERE / "si_crash.CRASH")
    run_qe_scf(ni(), tmp / "ni", protocol=QEProtocol(ecutwfc_ry=25, ecutrho_ry=200, kspacing=0.6))
    shutil.copy(tmp / "ni/pw.out", HERE / "ni_scf_atomic.out")
    shutil.copy(tmp / "ni/out/pwscf.save/data-file-schema.xml", HERE / "ni_scf.xml")
    run_qe_nscf(si(), tmp / "bands", read_converged_density(tmp / "a"), protocol=LIGHT)
    shutil.copy(tmp / "bands/pw.out", HERE / "si_bands.out")
    shutil.copy(tmp / "bands/out/pwscf.save/data-file-schema.xml", HERE / "si_bands.xml")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
