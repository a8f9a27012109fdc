"""QE density files against real pw.x 6.7 runs (tiny cells, one MPI process).

A dry run (``electron_maxstep=0``, exit code 2) writes ``charge-density.dat`` in pw.x's own
G order with QE's atomic superposition: the reference for the G order, the FFT grid and SAD.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density import (
    grid_to_qe,
    qe_fft_grid,
    qe_gvector_order,
    qe_to_grid,
    read_qe_charge_density,
    read_paw_txt,
    read_qe_density,
    write_qe_charge_density,
    write_qe_start_density,
)
from mlcharge_workflows.density.chgcar import chgcar_to_qe, qe_to_chgcar, read_chgcar
from mlcharge_workflows.density.qe_file import qe_fft_fact, read_qe_xml
from mlcharge_workflows.density.qe_gvectors import QE_PER_BOHR3_TO_PER_ANGSTROM3
from mlcharge_workflows.density.sad import sad_coefficients, superposition_density
from mlcharge_workflows.settings import get_settings

pytestmark = pytest.mark.pwx

PSEUDO = {"Si": "Si.pbe-rrkj.UPF", "C": "C.pbe-rrkjus.UPF", "X": "C.pbe-n-kjpaw_psl.0.1.UPF"}
MASS = {"Si": 28.086, "C": 12.011, "X": 12.011}


def _pseudo_paths(structure: Structure) -> dict[str, Path]:
    root = get_settings().pseudo_dir
    return {el: root / PSEUDO[el] for el in {s.species_string for s in structure}}


def run_pw(
    workdir: Path,
    structure: Structure,
    ecutwfc: float,
    ecutrho: float | None = None,
    maxstep: int = 0,
    gamma: bool = False,
    magnetization: dict[str, float] | None = None,
    start_from_file: bool = False,
    paw: bool = False,
) -> tuple[Path, str]:
    """Run pw.x serially in ``workdir``; returns (``.save`` folder, stdout)."""
    workdir.mkdir(parents=True, exist_ok=True)
    species = sorted({s.species_string for s in structure})
    if paw:  # same element, PAW file
        species = ["X"]
    spin = ""
    if magnetization:
        spin = ", nspin=2, " + ", ".join(
            f"starting_magnetization({i + 1})={magnetization.get(el, 0.0)}"
            for i, el in enumerate(species)
        )
    rho = f", ecutrho={ecutrho}" if ecutrho else ""
    start = ", startingpot='file'" if start_from_file else ""
    lines = [
        "&CONTROL",
        f"  calculation='scf', prefix='t', outdir='./out', pseudo_dir='{get_settings().pseudo_dir}'",
        "/",
        "&SYSTEM",
        f"  ibrav=0, nat={len(structure)}, ntyp={len(species)}, ecutwfc={ecutwfc}{rho}, "
        f"occupations='smearing', degauss=0.02{spin}",
        "/",
        "&ELECTRONS",
        f"  electron_maxstep={maxstep}, conv_thr=1e-9{start}",
        "/",
        "ATOMIC_SPECIES",
        *(f"{el} {MASS[el]} {PSEUDO[el]}" for el in species),
        "CELL_PARAMETERS angstrom",
        *(" ".join(repr(float(x)) for x in row) for row in structure.lattice.matrix),
        "ATOMIC_POSITIONS crystal",
        *(("X " if paw else f"{s.species_string} ") + " ".join(repr(float(x)) for x in s.frac_coords)
          for s in structure),
        "K_POINTS gamma" if gamma else "K_POINTS automatic\n2 2 2 0 0 0",
    ]
    (workdir / "pw.in").write_text("\n".join(lines) + "\n")
    settings = get_settings()
    cmd = shlex.split(settings.mpi_cmd.format(nprocs=1)) + [settings.pw_cmd, "-in", "pw.in"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    expected_rc = 2 if maxstep == 0 else 0
    assert proc.returncode == expected_rc, proc.stdout[-3000:] + proc.stderr[-2000:]
    return workdir / "out" / "t.save", proc.stdout


def hexagonal() -> Structure:
    """Graphite-like C4 cell (hexagonal lattice, many |G| ties)."""
    coords = [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
    return Structure(Lattice.hexagonal(2.46, 6.70), ["C"] * 4, coords)


def triclinic() -> Structure:
    lattice = Lattice.from_parameters(3.9, 4.3, 4.7, 78.0, 95.0, 104.0)
    return Structure(lattice, ["Si", "Si"], [[0.0, 0.0, 0.0], [0.27, 0.31, 0.22]])


def silicon() -> Structure:
    return Structure(
        Lattice([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]),
        ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]],
    )


def diamond() -> Structure:
    return Structure(
        Lattice([[0, 1.785, 1.785], [1.785, 0, 1.785], [1.785, 1.785, 0]]),
        ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]],
    )


class _DryRuns(dict):
    """pw.x dry runs, each run on first use: name -> (structure, .save folder, ecutrho in Ry)."""

    CASES = {
        "hexagonal": (hexagonal, dict(ecutwfc=20, ecutrho=120)),
        "triclinic": (triclinic, dict(ecutwfc=16)),
        "triclinic_gamma": (triclinic, dict(ecutwfc=16, gamma=True)),
        "si_spin": (silicon, dict(ecutwfc=16, magnetization={"Si": 0.3})),
        "diamond_paw": (diamond, dict(ecutwfc=25, ecutrho=150, paw=True)),
    }

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> tuple[Structure, Path, float]:
        make, kw = self.CASES[name]
        structure = make()
        save, _ = run_pw(self.root / name, structure, **kw)
        self[name] = (structure, save, float(kw.get("ecutrho") or 4 * kw["ecutwfc"]))
        return self[name]


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> _DryRuns:
    return _DryRuns(tmp_path_factory.mktemp("qe_dry"))


@pytest.mark.parametrize("name", ["hexagonal", "triclinic", "triclinic_gamma"])
def test_gvector_order_and_fft_grid_match_pwx(dry_runs, name):
    structure, save, ecutrho = dry_runs[name]
    qcd = read_qe_charge_density(save / "charge-density.dat")
    gamma = name.endswith("gamma")
    assert qcd.gamma_only is gamma
    mill = qe_gvector_order(structure.lattice.matrix, ecutrho, gamma_only=gamma)
    assert mill.shape == qcd.mill.shape
    np.testing.assert_array_equal(mill, qcd.mill)
    _, info = read_qe_xml(save / "data-file-schema.xml")
    fact = qe_fft_fact(structure)
    assert qe_fft_grid(structure.lattice.matrix, ecutrho, fact) == info["fft_grid"]
    # the computed writer gives pw.x's own file back: same b, same order, same numbers
    grid = read_qe_density(save, structure)
    again = grid_to_qe(grid, ecutrho, gamma_only=gamma)
    np.testing.assert_array_equal(again.b, qcd.b)
    np.testing.assert_allclose(again.rho_g, qcd.rho_g, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["triclinic_gamma", "si_spin"])
def test_file_grid_file_round_trip_is_exact(dry_runs, name, tmp_path):
    structure, save, ecutrho = dry_runs[name]
    qcd = read_qe_charge_density(save / "charge-density.dat")
    grid = qe_to_grid(qcd, structure)
    assert grid.is_spin_polarized is (qcd.nspin == 2)
    back = grid_to_qe(grid, ecutrho, mill=qcd.mill, gamma_only=qcd.gamma_only)
    out = write_qe_charge_density(tmp_path / "charge-density.dat", back)
    again = read_qe_charge_density(out)
    np.testing.assert_array_equal(again.mill, qcd.mill)
    np.testing.assert_allclose(again.rho_g, qcd.rho_g, rtol=0, atol=1e-14 * abs(qcd.rho_g).max())
    assert again.n_electrons == pytest.approx(qcd.n_electrons, abs=1e-12)


def test_spin_density_magnetization_round_trip(dry_runs, tmp_path):
    structure, save, ecutrho = dry_runs["si_spin"]
    grid = read_qe_density(save)  # structure and nelec from the XML
    assert grid.n_electrons == pytest.approx(8.0, abs=1e-10)
    assert grid.total_magnetization == pytest.approx(0.3 * 8.0, abs=1e-10)  # 0.3 * rho_atom
    out = write_qe_start_density(tmp_path / "t.save", grid, ecutrho, reference=save)
    back = read_qe_density(out, structure, expected_electrons=8.0)
    assert back.total_magnetization == pytest.approx(grid.total_magnetization, abs=1e-12)
    np.testing.assert_allclose(back.magnetization, grid.magnetization, atol=1e-12)


@pytest.mark.parametrize("name", ["hexagonal", "si_spin"])
def test_sad_matches_pwx_atomic_start(dry_runs, name):
    """Our SAD equals pw.x's atomic superposition (after its renormalisation to nelec)."""
    structure, save, ecutrho = dry_runs[name]
    qcd = read_qe_charge_density(save / "charge-density.dat")
    mag = {"Si": 0.3} if name == "si_spin" else None
    total, m = sad_coefficients(structure, qcd.mill, _pseudo_paths(structure), mag)
    scale = qcd.n_electrons / (total[0].real * structure.volume)
    ref = qcd.rho_g * QE_PER_BOHR3_TO_PER_ANGSTROM3
    # measured: 6e-14 (C, US) and 1e-13 (Si, NC, nspin=2) relative to the largest coefficient
    assert np.abs(total * scale - ref[0]).max() < 1e-10 * np.abs(ref[0]).max()
    if m is not None:
        assert np.abs(m * scale - ref[1]).max() < 1e-10 * np.abs(ref[1]).max()
    grid = superposition_density(structure, qe_fft_grid(structure.lattice.matrix, ecutrho),
                                 _pseudo_paths(structure), mag)
    assert grid.n_electrons == pytest.approx(qcd.n_electrons, abs=1e-10)


def test_chgcar_qe_conversions_conserve_electrons(dry_runs, tmp_path):
    structure, save, ecutrho = dry_runs["si_spin"]
    qcd = read_qe_charge_density(save / "charge-density.dat")
    grid = qe_to_chgcar(qcd, structure, tmp_path / "CHGCAR", encut=300, prec="Normal")
    chg = read_chgcar(tmp_path / "CHGCAR", structure)
    assert chg.n_electrons == pytest.approx(qcd.n_electrons, abs=1e-6)
    assert chg.total_magnetization == pytest.approx(grid.total_magnetization, abs=1e-6)
    back = chgcar_to_qe(tmp_path / "CHGCAR", ecutrho, structure=structure)
    np.testing.assert_array_equal(back.mill, qcd.mill)
    assert back.n_electrons == pytest.approx(qcd.n_electrons, abs=1e-6)


def test_mismatched_structure_is_refused(dry_runs, tmp_path):
    structure, save, ecutrho = dry_runs["hexagonal"]
    strained = structure.copy()
    strained.scale_lattice(structure.volume * 1.05)
    with pytest.raises(ValueError, match="different cell"):
        read_qe_density(save, strained)
    si, si_save, _ = dry_runs["triclinic"]
    swapped = Structure(si.lattice, ["Si", "Si"], si.frac_coords[::-1])
    with pytest.raises(ValueError, match="positions"):
        read_qe_density(si_save, swapped)
    with pytest.raises(ValueError, match="electrons"):
        read_qe_density(save, expected_electrons=12.0)
    grid = read_qe_density(si_save)
    with pytest.raises(ValueError, match="different cell"):
        write_qe_start_density(tmp_path / "x.save", grid, ecutrho, reference=save)


def test_pwx_restarts_from_written_density(tmp_path):
    """SCF, then a fresh pw.x run from the density this package rewrote: read, <= 2 iterations."""
    structure = silicon()
    save, _ = run_pw(tmp_path / "scf", structure, ecutwfc=16, maxstep=100)
    grid = read_qe_density(save)
    dry, _ = run_pw(tmp_path / "restart", structure, ecutwfc=16)
    write_qe_start_density(dry, grid, 64.0, reference=dry, expected_electrons=8.0)
    _, out = run_pw(tmp_path / "restart", structure, ecutwfc=16, maxstep=100, start_from_file=True)
    assert "The initial density is read from file" in out
    n_iter = int(out.split("convergence has been achieved in")[1].split()[0])
    assert n_iter <= 2


def test_paw_occupations_pass_through(dry_runs, tmp_path):
    structure, save, ecutrho = dry_runs["diamond_paw"]
    becsum = read_paw_txt(save / "paw.txt")
    assert becsum.size == 2 * 36 and becsum[0] == pytest.approx(2.0)  # nhm=8: 36 per atom
    grid = read_qe_density(save)
    assert grid.n_electrons == pytest.approx(8.0, abs=1e-10)
    out = write_qe_start_density(tmp_path / "t.save", grid, ecutrho, reference=save,
                                 paw_becsum=becsum)
    np.testing.assert_array_equal(read_paw_txt(out.parent / "paw.txt"), becsum)
