"""The NSCF arms of the VASP comparison run with the settings of the SCF they are compared
with (prev_dir = the baseline): same ISPIN, NBANDS and smearing in all three (atomate2 mock)."""

from __future__ import annotations

import pytest

pytest.importorskip("atomate2")

from test_vasp_mock import (  # noqa: E402, F401 - fixtures and helpers of the VASP mock tests
    _run,
    full_comparison,
    mock_vasp,
    potcar_dir,
    sic,
)


def test_nscf_arms_take_spin_bands_and_smearing_from_the_baseline(mock_vasp, tmp_path) -> None:
    _, seen = mock_vasp
    maker = full_comparison(mock_vasp)
    flow = maker.make(sic())
    _run(flow, tmp_path)
    arms = ("nscf converged", "nscf ml", "nscf atomic")
    incars = {a: seen[a]["incar"] for a in arms}
    # the baseline SiC run is not magnetic: without prev_dir atomate2 would ask ISPIN = 2
    assert {i.get("ISPIN", 1) for i in incars.values()} == {1}
    for key in ("NBANDS", "ISMEAR", "SIGMA"):
        assert len({str(i.get(key)) for i in incars.values()}) == 1, key
    assert incars["nscf ml"].get("NBANDS") is not None  # taken from the baseline's vasprun
    # and the prev_dir copy never brings the baseline's CHGCAR into the ML or atomic arm
    assert seen["nscf atomic"].get("chgcar") is None
