"""The QE engine against real pw.x 6.7 (tiny cells, one MPI process, light protocol).

Light protocol: 20 Ry (Si) / 25-200 Ry (Ni), k-spacing 0.5-0.6 Å⁻¹; every other setting is
the comparison protocol's (docs/qe-protocol.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.qe_file import read_qe_charge_density
from mlcharge_workflows.engines.qe.core import (
    read_converged_density,
    run_qe_nscf,
    run_qe_scf,
)
from mlcharge_workflows.engines.qe.parse import parse_pw_xml
from mlcharge_workflows.pseudo import stage_pseudos
from mlcharge_workflows.engines.qe.run import run_pw
from mlcharge_workflows.engines.qe.sets import QEProtocol, pw_input, write_pw_input
from mlcharge_workflows.units import RY_TO_EV
from conftest import fcc_cell as fcc  # noqa: E402 - tests/conftest.py

pytestmark = pytest.mark.pwx

SI_LIGHT = QEProtocol(ecutwfc_ry=20, kspacing=0.5, line_density=5)
NI_LIGHT = QEProtocol(ecutwfc_ry=25, ecutrho_ry=200, kspacing=0.6)




SI = fcc(["Si", "Si"], 5.43, [[0, 0, 0], [0.25, 0.25, 0.25]])
NI = fcc(["Ni"], 3.52, [[0, 0, 0]])


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")


@pytest.fixture(scope="module")
def si_scf(tmp_path_factory):
    """Si SCF from the atomic superposition (shared by the tests of this module)."""
    doc = run_qe_scf(SI, tmp_path_factory.mktemp("si") / "atomic", protocol=SI_LIGHT, nprocs=1)
    assert doc.converged and doc.start == "atomic" and not doc.density_read_from_file
    assert doc.scf_iterations >= 5  # a real SCF, so that "<= 2 from the density" means something
    return doc


def test_si_round_trip_restarts_in_one_or_two_iterations(si_scf, tmp_path):
    grid = read_converged_density(si_scf.dir_name)  # QE file -> DensityGrid
    assert grid.n_electrons == pytest.approx(8.0, abs=1e-8)
    doc = run_qe_scf(SI, tmp_path / "restart", start=grid, protocol=SI_LIGHT, nprocs=1)
    assert doc.density_read_from_file and doc.density_initialised and doc.start == "file"
    assert doc.scf_iterations <= 2 and doc.g_order_source == "computed"
    assert abs(doc.energy_eV - si_scf.energy_eV) / RY_TO_EV < 1e-6
    # the file given to pw.x (kept) equals pw.x's own converged file: the round trip is exact
    ours = read_qe_charge_density(doc.start_density_file)
    theirs = read_qe_charge_density(Path(si_scf.dir_name) / "out/pwscf.save/charge-density.dat")
    assert np.array_equal(ours.mill, theirs.mill)
    assert np.abs(ours.rho_g - theirs.rho_g).max() < 1e-9 * abs(theirs.rho_g[0, 0])


def test_ni_round_trip_keeps_the_moment(tmp_path):
    first = run_qe_scf(NI, tmp_path / "atomic", protocol=NI_LIGHT, nprocs=1)
    assert first.nspin == 2 and first.total_magnetization > 0.5  # ferromagnetic Ni
    grid = read_converged_density(first.dir_name)
    assert grid.total_magnetization == pytest.approx(first.total_magnetization, abs=1e-6)
    again = run_qe_scf(NI, tmp_path / "restart", start=grid, protocol=NI_LIGHT, nprocs=1)
    assert again.density_initialised and again.scf_iterations <= 2
    assert again.total_magnetization == pytest.approx(first.total_magnetization, abs=1e-3)
    assert again.absolute_magnetization == pytest.approx(first.absolute_magnetization, abs=1e-3)
    assert abs(again.energy_eV - first.energy_eV) / RY_TO_EV < 1e-6


def _native_bands(scf_dir: Path, workdir: Path) -> np.ndarray:
    """Bands the usual QE way: a bands run in a copy of the SCF's own outdir."""
    workdir.mkdir()
    shutil.copytree(Path(scf_dir) / "out", workdir / "out")
    stage_pseudos(["Si"], workdir / "pseudo")
    write_pw_input(pw_input(SI, SI_LIGHT, calculation="bands"), workdir / "pw.in")
    run_pw(workdir, nprocs=1)
    return np.array(parse_pw_xml(workdir / "out/pwscf.save/data-file-schema.xml").eigenvalues_eV)


def test_bands_from_a_written_density_equal_bands_from_the_scf(si_scf, tmp_path):
    native = _native_bands(Path(si_scf.dir_name), tmp_path / "native")
    grid = read_converged_density(si_scf.dir_name)
    doc = run_qe_nscf(SI, tmp_path / "written", grid, mode="line", protocol=SI_LIGHT, nprocs=1)
    assert doc.calculation == "bands" and doc.density_read_from_file
    ours = np.array(doc.eigenvalues_eV)
    assert ours.shape == native.shape and ours.shape[1] > 20
    assert np.abs(ours - native).max() < 1e-3  # eV
    assert 0.5 < doc.band_gap_eV < 0.7  # PBE Si at 20 Ry


def test_pw_x_crash_is_reported_with_its_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCHARGE_PW_CMD", "pw.x -nk 7")  # more pools than processes: pw.x stops
    with pytest.raises(RuntimeError, match=r"(?s)exit status.*CRASH file.*invalid number of pools"):
        run_qe_scf(SI, tmp_path / "crash", protocol=SI_LIGHT, nprocs=1)


def test_pw_x_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCHARGE_PW_CMD", "/nonexistent/pw.x")
    with pytest.raises(RuntimeError, match="pw.x not found"):
        run_qe_scf(SI, tmp_path / "missing", protocol=SI_LIGHT, nprocs=1)


def test_unread_density_is_never_reported_as_used(si_scf, tmp_path, monkeypatch):
    # pw.x itself, but the density file disappears just before the SCF reads it
    wrapper = tmp_path / "pw_losing_density.sh"
    wrapper.write_text(
        '#!/bin/sh\ncase "$*" in *pw.in*) rm -f out/pwscf.save/charge-density.dat;; esac\n'
        'exec pw.x "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("MLCHARGE_PW_CMD", str(wrapper))
    with pytest.raises(RuntimeError, match="did not read the start density.*Cannot read rho"):
        run_qe_scf(SI, tmp_path / "lost", start=si_scf.dir_name, protocol=SI_LIGHT, nprocs=1)
    out = (tmp_path / "lost/pw.out").read_text()
    assert "Cannot read rho" in out and "The initial density is read from file" not in out


def test_unconverged_run_is_an_error(tmp_path):
    protocol = SI_LIGHT.model_copy(update={"electron_maxstep": 2})
    with pytest.raises(RuntimeError, match="did not converge in 2 iterations"):
        run_qe_scf(SI, tmp_path / "short", protocol=protocol, nprocs=1)
    doc = run_qe_scf(SI, tmp_path / "short2", protocol=protocol, nprocs=1, allow_unconverged=True)
    assert not doc.converged and doc.scf_iterations is None


def test_makers_chain_through_job_outputs(tmp_path):
    from jobflow import Flow, JobStore, run_locally
    from maggma.stores import MemoryStore

    from mlcharge_workflows.engines.qe.jobs import QENonSCFMaker, QEStaticMaker

    atomic = QEStaticMaker(protocol=SI_LIGHT, nprocs=1).make(SI)
    restart = QEStaticMaker(name="qe static from density", protocol=SI_LIGHT, nprocs=1).make(
        SI, start_density=atomic.output.dir_name
    )
    dos = QENonSCFMaker(mode="uniform", protocol=SI_LIGHT.model_copy(update={"nscf_kspacing": 0.35}),
                        nprocs=1).make(SI, atomic.output.dir_name)
    responses = run_locally(
        Flow([atomic, restart, dos]), store=JobStore(MemoryStore()), create_folders=True,
        root_dir=tmp_path, ensure_success=True,
    )
    first, second, third = (responses[j.uuid][1].output for j in (atomic, restart, dos))
    assert first.start == "atomic" and second.density_initialised and second.scf_iterations <= 2
    assert second.dir_name != first.dir_name
    assert third.calculation == "nscf" and third.n_kpoints > first.n_kpoints
    assert third.band_gap_eV == pytest.approx(first.band_gap_eV, abs=0.15)
    assert len(second.model_dump_json()) < 100_000  # no grids in the document


def test_every_registry_pseudopotential_loads_in_pw_x(tmp_path):
    from mlcharge_workflows.engines.qe.parse import parse_pw_output
    from mlcharge_workflows.pseudo import get_pseudo, supported_elements

    every = supported_elements()
    n_cells = -(-len(every) // 10)  # pw.x 6.7 takes at most 10 species per run (ntypx)
    for k in range(n_cells):
        elements = every[k::n_cells]
        run = tmp_path / f"cell{k}"
        cell = Structure(Lattice.orthorhombic(1.6 * len(elements), 3.5, 3.5), elements,
                         [[i / len(elements), (i % 2) / 2, (i % 3) / 3] for i in range(len(elements))])
        stage_pseudos(elements, run / "pseudo")
        protocol = QEProtocol(ecutwfc_ry=12, ecutrho_ry=96, kspacing=2.0, standard_orientation=False)
        write_pw_input(pw_input(cell, protocol, electron_maxstep=0), run / "pw.in")
        run_pw(run, nprocs=1, ok_returncodes=(2,))  # zero-step run: setup only
        out = parse_pw_output(run / "pw.out")
        assert out.job_done and out.errors == []
        assert out.n_electrons == sum(get_pseudo(el).z_valence for el in elements)


def test_nearly_tied_g_shells_take_pw_x_order_from_a_dry_run(tmp_path):
    """c/a = 1/sqrt(2) written to 10 decimals: |G|^2 shells nearly tie at QE's 1e-8, so the
    G order comes from a dry run up front (no post-run mismatch and redo)."""
    import warnings

    a = 3.5406274155
    sic = Structure(Lattice.tetragonal(a, a / np.sqrt(2)), ["Si", "C"],
                    [[0, 0, 0], [0.5, 0.5, 0.5]])
    protocol = QEProtocol(kspacing=0.6)
    atomic = run_qe_scf(sic, tmp_path / "atomic", protocol=protocol, nprocs=1)
    grid = read_converged_density(atomic.dir_name)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="computed G order differs")
        doc = run_qe_scf(sic, tmp_path / "restart", start=grid, protocol=protocol, nprocs=1)
    assert doc.g_order_source == "dry run" and doc.density_read_from_file
    assert doc.scf_iterations <= 2 and doc.prep_wall_time_s > 0
