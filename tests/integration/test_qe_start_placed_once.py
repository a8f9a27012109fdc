"""A start density written by :func:`write_start_density` goes to pw.x as is (placed once);
any other file is rewritten in pw.x's order, with the same SCF either way (real pw.x)."""

from __future__ import annotations

import pytest

from mlcharge_workflows.density.qe_file import (
    grid_to_qe,
    read_qe_charge_density,
    write_qe_charge_density,
)
from mlcharge_workflows.density.qe_gvectors import qe_fft_grid
from mlcharge_workflows.density.sad import superposition_density
from mlcharge_workflows.engines.qe.core import run_qe_scf, write_start_density
from mlcharge_workflows.engines.qe.sets import QEProtocol

pytestmark = pytest.mark.pwx

PROTOCOL = QEProtocol(ecutwfc_ry=15.0, ecutrho_ry=60.0, kspacing=0.6)


@pytest.fixture(autouse=True)
def _serial(monkeypatch):
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")


def test_placed_file_is_copied_as_is_and_others_rewritten(tmp_path, si_fcc) -> None:
    _, ecutrho = PROTOCOL.cutoffs(si_fcc)
    pseudos = {el: info.source for el, info in PROTOCOL.pseudos(si_fcc).items()}
    grid = superposition_density(si_fcc, qe_fft_grid(si_fcc.lattice.matrix, ecutrho), pseudos)
    placed = write_start_density(si_fcc, tmp_path / "pred", grid, PROTOCOL)

    as_is = run_qe_scf(si_fcc, tmp_path / "as_is", start=placed, protocol=PROTOCOL)
    assert as_is.start_file_as_is is True and as_is.density_read_from_file is True
    assert as_is.g_order_source == "computed"
    with open(as_is.start_density_file, "rb") as a, open(placed, "rb") as b:
        assert a.read() == b.read()  # byte for byte: no read-back, renormalise, write

    # the same density in another G order: pw.x ignores the indices, so it must be rewritten
    qcd = read_qe_charge_density(placed)
    shuffled = grid_to_qe(grid, ecutrho, mill=qcd.mill[::-1])
    other = write_qe_charge_density(tmp_path / "other" / "charge-density.dat", shuffled)
    rewritten = run_qe_scf(si_fcc, tmp_path / "rewritten", start=other, protocol=PROTOCOL)
    assert rewritten.start_file_as_is is False and rewritten.density_read_from_file is True
    assert rewritten.scf_iterations == as_is.scf_iterations
    assert rewritten.energy_eV == pytest.approx(as_is.energy_eV, abs=1e-6)
