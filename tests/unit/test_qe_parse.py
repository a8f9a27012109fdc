"""parse_pw_output / parse_pw_xml on real pw.x 6.7 outputs (tests/unit/data/qe/make_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlcharge_workflows.engines.qe.parse import (
    band_edges,
    band_gap,
    parse_pw_output,
    parse_pw_xml,
)
from mlcharge_workflows.units import RY_TO_EV

DATA = Path(__file__).parent / "data" / "qe"


def test_scf_from_atoms():
    out = parse_pw_output(DATA / "si_scf_atomic.out")
    assert out.converged and out.job_done and not out.not_converged
    assert out.scf_iterations == 9 == out.n_iterations_printed == len(out.scf_accuracy_Ry)
    assert out.energy_eV == pytest.approx(-15.73610120 * RY_TO_EV, abs=1e-9)
    assert out.atomic_start and not out.density_read_from_file and not out.density_file_missing
    assert out.n_electrons == 8 and out.n_kpoints == 10 and out.n_symmetry_ops == 48
    assert out.nprocs == 1 and out.version == "v.6.7MaX" and out.calculation == "scf"
    assert out.fermi_energy_eV == pytest.approx(6.3749)
    assert out.wall_time_s > 0 and out.cpu_time_s > 0
    assert out.total_magnetization is None


def test_scf_from_file_reports_density_read():
    out = parse_pw_output((DATA / "si_scf_file.out").read_text())  # text works too
    assert out.density_read_from_file and not out.atomic_start
    assert out.converged and out.scf_iterations == 1


def test_missing_density_file_is_detected():
    out = parse_pw_output(DATA / "si_cannot_read_rho.out")
    assert out.density_file_missing and not out.density_read_from_file and out.atomic_start
    assert out.converged  # pw.x silently converged from atoms


def test_not_converged_and_dry_run():
    out = parse_pw_output(DATA / "si_not_converged.out")
    assert not out.converged and out.not_converged and out.scf_iterations is None
    assert out.n_iterations_printed == 2 and out.energy_eV is None
    dry = parse_pw_output(DATA / "si_dryrun.out")
    assert dry.job_done and dry.not_converged and dry.n_iterations_printed == 0


def test_crash_message():
    out = parse_pw_output(DATA / "si_crash.out")
    assert not out.job_done
    assert out.errors == ["Error in routine mp_start_pools (1): invalid number of pools, out of range"]


def test_spin_polarised_text_and_xml():
    out = parse_pw_output(DATA / "ni_scf_atomic.out")
    assert out.converged and out.scf_iterations == 13
    assert out.total_magnetization == pytest.approx(0.62) and out.absolute_magnetization == pytest.approx(0.76)
    xml = parse_pw_xml(DATA / "ni_scf.xml")
    assert xml.lsda and xml.converged and xml.scf_iterations == 13
    assert xml.total_magnetization == pytest.approx(0.6225694, abs=1e-6)  # more digits than text
    assert xml.energy_eV == pytest.approx(out.energy_eV, abs=1e-6)
    e = np.array(xml.eigenvalues_eV)
    assert e.shape == (2, 16, 9)
    assert band_gap(e, xml.n_electrons) == 0.0  # a metal


def test_xml_eigenvalues_and_gap():
    xml = parse_pw_xml(DATA / "si_scf.xml")
    assert not xml.lsda and xml.n_electrons == 8
    assert np.shape(xml.eigenvalues_eV) == (1, 10, 8) and len(xml.kweights) == 10
    assert xml.fermi_energy_eV == pytest.approx(6.3749, abs=1e-4)
    vbm, cbm = band_edges(xml.eigenvalues_eV, xml.n_electrons)
    assert vbm < xml.fermi_energy_eV < cbm
    bands = parse_pw_xml(DATA / "si_bands.xml")
    gap = band_gap(bands.eigenvalues_eV, bands.n_electrons)
    assert 0.55 < gap < 0.65  # PBE Si, indirect; light protocol (20 Ry)
    assert parse_pw_output(DATA / "si_bands.out").density_read_from_file


def test_band_edges_counts_electrons_per_k():
    e = np.array([[[-1.0, 0.0, 2.0], [-0.5, 0.5, 3.0]]])  # (1 spin, 2 k, 3 bands)
    assert band_edges(e, 4) == (0.5, 2.0)
    assert band_gap(e, 4) == 1.5
    assert band_edges(e, 4.5) is None and band_edges(e, 6) is None  # fractional / too few bands
    spin = np.stack([e[0], e[0] + 0.25])
    assert band_edges(spin, 4) == (0.75, 2.0)  # 4 lowest of up+down at each k


def test_unreadable_xml(tmp_path):
    bad = tmp_path / "data-file-schema.xml"
    bad.write_text("<qes><output>")
    with pytest.raises(ValueError, match="unreadable"):
        parse_pw_xml(bad)
