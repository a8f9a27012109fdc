"""`mlcharge data ingest`: CHGCARs written by the package's writer, metadata from real VASP
outputs (tests/test_data/vasp/outputs, custodian test files), and the checks that reject a folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlcharge_workflows.density.chgcar import write_chgcar
from mlcharge_workflows.density.grid import DensityGrid, fft_miller
from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.ingest import find_runs, ingest_vasp_runs, parse_outcar

VASP = Path(__file__).resolve().parents[1] / "test_data" / "vasp" / "outputs"  # in the repository
needs_vasp = pytest.mark.skipif(not VASP.is_dir(), reason="real VASP outputs not present")


def smooth_density(structure, shape, nelect, width=0.5, mag_fraction=None) -> DensityGrid:
    """A periodic sum of Gaussians (built in G space, so exactly periodic) holding ``nelect``."""
    m = fft_miller(shape).reshape(-1, 3)
    g = m @ structure.lattice.reciprocal_lattice.matrix
    phase = np.exp(-2j * np.pi * (m @ structure.frac_coords.T)).sum(axis=1)
    c = phase * np.exp(-0.5 * (g**2).sum(axis=1) * width**2)
    rho = np.fft.ifftn(c.reshape(shape)).real * np.prod(shape)
    rho *= nelect / (rho.mean() * structure.volume)
    mag = None if mag_fraction is None else rho * mag_fraction
    return DensityGrid(structure, rho, mag)


def _vasprun(name: str):
    from pymatgen.io.vasp import Vasprun

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Vasprun(str(VASP / name), parse_dos=False, parse_eigen=False,
                       parse_potcar_file=False)  # fmt: skip


def _run_folder(
    root: Path, name: str, vasprun: str, structure=None, shape=None, **density_kw
) -> tuple[Path, DensityGrid]:
    """A run folder: the real vasprun.xml and a CHGCAR written by the package (by default
    for the run's final structure on its fine grid)."""
    v = _vasprun(vasprun)
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(VASP / vasprun, folder / "vasprun.xml")
    ngf = tuple(int(v.parameters[k]) for k in ("NGXF", "NGYF", "NGZF"))
    grid = smooth_density(structure or v.final_structure, shape or ngf, v.parameters["NELECT"],
                          **density_kw)  # fmt: skip
    write_chgcar(grid, folder / "CHGCAR")
    return folder, grid


@needs_vasp
def test_ingest_real_vasp_metadata_and_package_chgcars(tmp_path):
    src = tmp_path / "runs"
    _, al = _run_folder(src, "al", "static_smearing__vasprun.xml")
    _, feo = _run_folder(src / "relax", "feo", "postprocess__vasprun.xml", mag_fraction=0.1)
    # a CHGCAR whose header (POSCAR) is not the run's structure: Al moved by 0.3 Å
    moved = _vasprun("static_smearing__vasprun.xml").final_structure
    moved.translate_sites([0], [0.3, 0, 0], frac_coords=False)
    _run_folder(src, "al_moved", "static_smearing__vasprun.xml", structure=moved)
    # a CHGCAR on another grid than the run's NGXF x NGYF x NGZF
    _run_folder(src, "al_grid", "static_smearing__vasprun.xml", shape=(40, 40, 40))
    # an unconverged run (V2O5, NELM reached): excluded before its CHGCAR is used
    unconv = src / "v2o5"
    unconv.mkdir()
    shutil.copy(VASP / "unconverged__vasprun.xml.electronic", unconv / "vasprun.xml")
    write_chgcar(smooth_density(moved, (8, 8, 8), 3.0), unconv / "CHGCAR")

    out = tmp_path / "ds"
    man = ingest_vasp_runs(src, out, progress=False)
    ds = DensityDataset(out)
    assert ds.ids == ["vasp-al", "vasp-relax__feo"]
    assert man["failures"]["vasp-al_moved"]["kind"] == "structure_mismatch"
    assert "does not match the run's final structure" in man["failures"]["vasp-al_moved"]["reason"]
    assert man["failures"]["vasp-al_grid"]["kind"] == "grid_mismatch"
    assert "(40, 40, 40) is not the run's fine grid" in man["failures"]["vasp-al_grid"]["reason"]
    assert man["failures"]["vasp-v2o5"]["kind"] == "not_converged"

    rec = ds["vasp-al"]  # Al, ICHARG=1 static: 2 ionic steps of 6 and 8 SCF steps
    assert rec.scf_iterations == 6 and rec.metadata["electronic_steps"] == [6, 8]
    assert rec.energy_eV == pytest.approx(-3.74599651)
    assert rec.grid_shape == (48, 48, 48) and rec.metadata["ngf"] == [48, 48, 48]
    assert rec.metadata["potcar_symbols"] == ["PAW_PBE Al 04Jan2001"]
    assert rec.metadata["incar"]["ENCUT"] == 680.0 and rec.metadata["nelect"] == 3.0
    # coefficients by FFT of the CHGCAR grid give the density back (to CHGCAR's 11 digits)
    back = rec.to_grid()
    assert np.abs(back.total - al.total).max() < 1e-6 * al.total.max()
    assert rec.metadata["storage"]["truncation_nmape_total_percent"] < 1e-6

    fe = ds["vasp-relax__feo"]  # FeO relaxation, spin-polarised: magnetisation kept
    assert fe.scf_iterations == 40 and fe.magnetization is not None
    assert fe.to_grid().total_magnetization == pytest.approx(feo.total_magnetization, rel=1e-6)
    assert fe.energy_eV == pytest.approx(-28.21851457)
    assert man["records"]["vasp-relax__feo"]["family"] == "Fe-O"

    # resume: nothing is read again, failures stay listed
    again = ingest_vasp_runs(src, out, progress=False)
    assert again["summary"]["n_records"] == 2 and again["summary"]["n_failures"] == 3


@needs_vasp
def test_ingest_cli_with_outcar_and_oszicar(tmp_path):
    """A folder without vasprun.xml: SCF steps from the real OSZICAR, the rest from OUTCAR."""
    v = _vasprun("lobster__vasp_lobster_output_v51__vasprun.xml")  # NaCl, 17 SCF steps
    folder = tmp_path / "runs" / "nacl"
    folder.mkdir(parents=True)
    shutil.copy(VASP / "lobster__vasp_lobster_output_v51__OSZICAR", folder / "OSZICAR")
    shape = (24, 24, 24)  # CHGCAR grid; the OUTCAR below says the same (kept small)
    (folder / "OUTCAR").write_text(
        " vasp.5.4.4.18Apr17-6-g9f103f2a35 (build Apr 17 2017) complex\n"
        "   NELM   =    200;   NELMIN=  2; NELMDL= -5     # of ELM steps\n"
        "   NELECT =      56.0000    total number of electrons\n"
        f" dimension x,y,z NGXF=    {shape[0]} NGYF=   {shape[1]} NGZF=   {shape[2]}\n"
        "--------------------------------------- Iteration      1(   1)  -----------\n"
        "  energy  without entropy=      -27.11090125  energy(sigma->0) =      -27.11090125\n"
        " General timing and accounting informations for this job:\n"
    )
    write_chgcar(smooth_density(v.final_structure, shape, 56.0), folder / "CHGCAR")
    (folder / "POSCAR").write_text(v.final_structure.to(fmt="poscar"))
    out = tmp_path / "ds"
    proc = subprocess.run(
        [sys.executable, "-m", "mlcharge_workflows.cli.main", "data", "ingest",
         str(tmp_path / "runs"), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "records          1" in proc.stdout
    rec = DensityDataset(out)["vasp-nacl"]
    assert rec.scf_iterations == 17 and rec.energy_eV == pytest.approx(-27.11090125)
    assert rec.metadata["metadata_source"] == "OUTCAR" and rec.metadata["converged_electronic"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "vasp-ingested" and man["summary"]["structures_with_element"] == {
        "Cl": 1, "Na": 1}  # fmt: skip


def test_outcar_parser_and_bad_chgcar(tmp_path):
    outcar = tmp_path / "OUTCAR"
    outcar.write_text(
        "   NELM   =     10;\n NELECT =  8.0000\n"
        + "".join(f" ---- Iteration    1(   {i})  ----\n" for i in range(1, 11))
        + "  energy(sigma->0) =      -10.5\n"
    )
    info = parse_outcar(outcar)
    assert info["electronic_steps"] == [10] and info["nelm"] == 10 and not info["finished"]
    # NELM reached and no final timing block: not converged
    folder = tmp_path / "runs" / "si"
    folder.mkdir(parents=True)
    shutil.move(outcar, folder / "OUTCAR")
    (folder / "CHGCAR").write_text("not a CHGCAR\n")
    man = ingest_vasp_runs(tmp_path / "runs", tmp_path / "ds", progress=False)
    assert man["failures"]["vasp-si"]["kind"] == "not_converged"
    # a truncated CHGCAR of a converged run: listed as bad_chgcar
    (folder / "OUTCAR").write_text(
        " NELM = 60;\n Iteration 1( 1)\n General timing and accounting\n"
    )
    man = ingest_vasp_runs(tmp_path / "runs", tmp_path / "ds2", progress=False)
    assert man["failures"]["vasp-si"]["kind"] == "bad_chgcar"
    with pytest.raises(FileNotFoundError, match="no CHGCAR"):
        ingest_vasp_runs(tmp_path / "ds", tmp_path / "ds3")
    assert find_runs(tmp_path / "runs") == [folder]
