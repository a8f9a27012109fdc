"""Antiferromagnetic starts: the magmom signs of a generated structure reach pw.x as two
species kinds per element, and pw.x converges a compensated state from them."""

from __future__ import annotations

import re

import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.engines.qe.sets import QEProtocol, antiparallel_signs, pw_input


def _species_block(text: str) -> tuple[list[str], list[str], dict[int, float]]:
    species = text.split("ATOMIC_SPECIES\n")[1].split("ATOMIC_POSITIONS")[0].split("\n")
    labels = [ln.split()[0] for ln in species if ln.strip()]
    pos = text.split("ATOMIC_POSITIONS crystal\n")[1].split("K_POINTS")[0].split("\n")
    sites = [ln.split()[0] for ln in pos if ln.strip()]
    mags = {int(n): float(v.replace("d", "e")) for n, v in
            re.findall(r"starting_magnetization\((\d+)\) = ([-0-9.ed]+)", text)}
    return labels, sites, mags


def test_afm_signs_become_species_kinds_in_pw_order():
    lat = Lattice.tetragonal(3.0, 6.0)
    s = Structure(lat, ["Fe", "O", "Fe", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.25], [0, 0, 0.5], [0.5, 0.5, 0.75]],
                  site_properties={"magmom": [3.0, 0.0, -3.0, 0.0]})
    p = QEProtocol()
    assert antiparallel_signs(s, p) == [1, 1, -1, 1]
    labels, sites, mags = _species_block(str(pw_input(s, p)))
    assert len(labels) == 3 and "nspin = 2" in str(pw_input(s, p))
    by_label = {lab: mags[i + 1] for i, lab in enumerate(labels)}
    assert by_label[sites[0]] == pytest.approx(0.4) and by_label[sites[2]] == pytest.approx(-0.4)
    assert by_label[sites[1]] == by_label[sites[3]] == 0.0
    ferri = Structure(lat, ["Fe", "Co"], [[0, 0, 0], [0.5, 0.5, 0.5]],
                      site_properties={"magmom": [3.0, -2.0]})
    labels, sites, mags = _species_block(str(pw_input(ferri, p)))
    assert antiparallel_signs(ferri, p) == [1, -1]
    assert {lab: mags[i + 1] for i, lab in enumerate(labels)}[sites[1]] == pytest.approx(-0.35)
    ferro = s.copy(site_properties={"magmom": [3.0, 0.0, 3.0, 0.0]})
    assert antiparallel_signs(ferro, p) is None
    labels, sites, mags = _species_block(str(pw_input(ferro, p)))
    assert labels == ["Fe", "O"] and mags == {1: 0.4, 2: 0.0}


def test_pw_x_converges_an_antiferromagnetic_start(tmp_path):
    """bcc Fe as a 2-atom cubic cell with antiparallel starts (35 s of pw.x, 1 process)."""
    from mlcharge_workflows.engines.qe.core import run_qe_scf

    s = Structure(Lattice.cubic(2.83), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]],
                  site_properties={"magmom": [3.0, -3.0]})
    doc = run_qe_scf(s, tmp_path / "afm", start="atomic", protocol=QEProtocol(kspacing=0.6),
                     nprocs=1)
    assert doc.converged and doc.nspin == 2
    assert abs(doc.total_magnetization) < 0.05 and doc.absolute_magnetization > 2.0
