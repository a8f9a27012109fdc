"""The NSCF arms of the VASP comparison run with the settings of the SCF they are compared
with (prev_dir = the baseline): same ISPIN, NBANDS and smearing in all three (atomate2 mock)."""

from __future__ import annotations

import pytest

pytest.importorskip("atomate2")

from atomate2.vasp.sets.core import NonSCFSetGenerator  # noqa: E402
from test_vasp_mock import (  # noqa: E402, F401 - fixtures and helpers of the VASP mock tests
    ALL_REFS,
    ENCUT,
    SHIPPED,
    _kwargs,
    _run,
    mock_vasp,
    potcar_dir,
    sic,
    static_gen,
)


def test_nscf_arms_take_spin_bands_and_smearing_from_the_baseline(mock_vasp, tmp_path) -> None:
    from mlcharge_workflows.engines.vasp.flows import VaspComparisonMaker

    set_refs, seen = mock_vasp
    set_refs(ALL_REFS, _kwargs(ALL_REFS))
    maker = VaspComparisonMaker(
        input_set_generator=static_gen(),
        nscf_input_set_generator=NonSCFSetGenerator(user_incar_settings={"ENCUT": ENCUT}),
        oracle=True, nscf=True, nscf_mode="line", predictor=SHIPPED,
    )
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
