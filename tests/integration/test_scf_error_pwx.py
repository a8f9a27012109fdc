"""pw.x's SCF error functional against pw.x itself (real pw.x 6.7, tiny cells, one process).

pw.x prints ``dr2 = rho_ddot(rho_out - rho_in)`` as its "estimated scf accuracy". Run A
(atomic start, ``conv_thr`` huge so iteration 1 counts as converged) writes its output
density; run B starts from that file (``startingpot='file'``), so its ``rho_in`` is A's file
(no renormalisation: pw.x would say so), and, converged at iteration 1 again, writes its own
``rho_out`` unmixed. :func:`scf_error_coefficients` of the difference of the two files must
give the accuracy B printed (8 decimals), for a norm-conserving k-point run, a gamma-only run
(half-sphere storage) and a spin-polarised ultrasoft run whose ``ecutrho`` is 8 x
``ecutwfc`` (pw.x sums over its smooth sphere only).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density import read_qe_charge_density
from mlcharge_workflows.engines.qe.parse import parse_pw_output
from mlcharge_workflows.settings import get_settings
from mlcharge_workflows.training.metrics import scf_error_coefficients
from mlcharge_workflows.units import PER_BOHR3_TO_PER_ANGSTROM3

pytestmark = pytest.mark.pwx


def _pw(workdir: Path, s: Structure, pseudo: dict, ecutwfc: float, ecutrho: float, kpts,
        start_file: bool, spin: dict | None) -> tuple[Path, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    species = sorted({x.species_string for x in s})
    mag = "" if not spin else ", nspin=2, " + ", ".join(
        f"starting_magnetization({i + 1})={spin[el]}" for i, el in enumerate(species))
    start = ", startingpot='file'" if start_file else ""
    lines = [
        "&CONTROL",
        f"  calculation='scf', prefix='t', outdir='./out', pseudo_dir='{get_settings().pseudo_dir}'",
        "/",
        "&SYSTEM",
        f"  ibrav=0, nat={len(s)}, ntyp={len(species)}, ecutwfc={ecutwfc}, ecutrho={ecutrho}, "
        f"occupations='smearing', degauss=0.02{mag}",
        "/",
        "&ELECTRONS",
        f"  electron_maxstep=1, conv_thr=1.0e3{start}",
        "/",
        "ATOMIC_SPECIES",
        *(f"{el} 1.0 {pseudo[el]}" for el in species),
        "CELL_PARAMETERS angstrom",
        *(" ".join(repr(float(x)) for x in row) for row in s.lattice.matrix),
        "ATOMIC_POSITIONS crystal",
        *(f"{x.species_string} " + " ".join(repr(float(c)) for c in x.frac_coords) for x in s),
        "K_POINTS gamma" if kpts == "gamma" else f"K_POINTS automatic\n{kpts} {kpts} {kpts} 0 0 0",
    ]
    (workdir / "pw.in").write_text("\n".join(lines) + "\n")
    settings = get_settings()
    cmd = shlex.split(settings.mpi_cmd.format(nprocs=1)) + [settings.pw_cmd, "-in", "pw.in"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    (workdir / "pw.out").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return workdir / "out" / "t.save", proc.stdout


SI = Structure(Lattice([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]), ["Si", "Si"],
               [[0, 0, 0], [0.25, 0.25, 0.25]])
NI = Structure(Lattice([[0, 1.76, 1.76], [1.76, 0, 1.76], [1.76, 1.76, 0]]), ["Ni"], [[0, 0, 0]])
CASES = {
    "si_nc_kpoints": (SI, {"Si": "Si.pbe-rrkj.UPF"}, 16, 64, 2, None),
    "si_nc_gamma": (SI, {"Si": "Si.pbe-rrkj.UPF"}, 16, 64, "gamma", None),
    "ni_us_nspin2": (NI, {"Ni": "Ni.pbe-nd-rrkjus.UPF"}, 25, 200, 2, {"Ni": 0.3}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reproduces_pwx_estimated_scf_accuracy(case, tmp_path):
    s, pseudo, ecutwfc, ecutrho, kpts, spin = CASES[case]
    a, _ = _pw(tmp_path / "a", s, pseudo, ecutwfc, ecutrho, kpts, False, spin)
    (tmp_path / "b" / "out" / "t.save").mkdir(parents=True)
    shutil.copy(a / "charge-density.dat", tmp_path / "b" / "out" / "t.save" / "charge-density.dat")
    b, text = _pw(tmp_path / "b", s, pseudo, ecutwfc, ecutrho, kpts, True, spin)
    assert "renormalised" not in text  # rho_in is exactly A's file
    printed = parse_pw_output(tmp_path / "b" / "pw.out").scf_accuracy_Ry
    assert len(printed) == 1 and printed[0] > 1e-4  # one iteration, 8 decimals: >= 4 digits
    rho_in, rho_out = read_qe_charge_density(a / "charge-density.dat"), read_qe_charge_density(b / "charge-density.dat")
    assert np.array_equal(rho_in.mill, rho_out.mill)
    delta = (rho_out.rho_g - rho_in.rho_g) * PER_BOHR3_TO_PER_ANGSTROM3  # the boundary: file -> e/Å³
    d_mag = delta[1] if rho_in.nspin == 2 else None
    weights = np.where((rho_in.mill == 0).all(1), 1.0, 2.0) if rho_in.gamma_only else None
    assert rho_in.gamma_only == (kpts == "gamma") and rho_in.nspin == (2 if spin else 1)
    charge, mag = scf_error_coefficients(delta[0], d_mag, rho_in.mill, s.lattice.matrix,
                                         ecut_ry=4 * ecutwfc, weights=weights)
    assert charge + mag == pytest.approx(printed[0], rel=1e-6, abs=1e-8)
    if spin:  # both terms matter, and so does pw.x's smooth sphere (ecutrho = 8 ecutwfc)
        assert mag > 1e-3 * printed[0] and abs(charge - printed[0]) > 1e-5 * printed[0]
        whole = sum(scf_error_coefficients(delta[0], d_mag, rho_in.mill, s.lattice.matrix))
        assert abs(whole - printed[0]) > 1e-5 * printed[0]
