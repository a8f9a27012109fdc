"""Where an ML start's PAW occupancies come from: the decision, prev_dir's CHGCAR and the
merge of a donor's occupancies into a placed CHGCAR."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("atomate2")

from pymatgen.io.vasp import Incar  # noqa: E402

from mlcharge_workflows.density.chgcar import read_chgcar, write_chgcar  # noqa: E402
from mlcharge_workflows.density.grid import DensityGrid  # noqa: E402
from mlcharge_workflows.engines.vasp.density import is_paw, prev_dir_occupancies  # noqa: E402
from mlcharge_workflows.engines.vasp.placement import (  # noqa: E402
    add_paw_occupancies,
    occupancy_action,
)
from mlcharge_workflows.engines.vasp.sets import input_set  # noqa: E402

SIC = Path(__file__).resolve().parents[1] / "test_data" / "vasp" / "SiC"


@pytest.mark.parametrize(
    ("mode", "has", "paw", "donor", "action"),
    [
        ("auto", False, True, None, "donor"),
        ("auto", True, True, None, "keep"),  # prev_dir's (or a VASP CHGCAR's)
        ("auto", False, True, "/d", "merge"),
        ("auto", False, False, None, "keep"),  # non-PAW POTCARs need none
        ("donor", True, True, None, "donor"),
        ("donor", True, True, "/d", "merge"),
        ("prev_dir", False, True, None, "refuse"),
        ("prev_dir", True, True, None, "keep"),
        ("none", False, True, None, "keep"),
    ],
)
def test_occupancy_action(mode, has, paw, donor, action) -> None:
    assert occupancy_action(mode, has, paw, donor) == action


def test_occupancy_action_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="paw_occupancies must be one of"):
        occupancy_action("atomic", False, True, None)
    assert is_paw(["PAW_PBE Si 05Jan2001", "PAW_PBE C 08Apr2002"]) and is_paw(None)
    assert not is_paw(["US Si"])


def _sic_vis():
    from atomate2.vasp.sets.core import StaticSetGenerator
    from pymatgen.io.vasp import Poscar

    structure = Poscar.from_file(SIC / "ml_static" / "inputs" / "POSCAR").structure
    return input_set(StaticSetGenerator(user_incar_settings={"ENCUT": 300}), structure)


TITLES = ["PAW_PBE C 05Jan2001", "PAW_PBE Si 05Jan2001"]  # the mock vasprun's atom types


def test_prev_dir_occupancies_reasons(tmp_path) -> None:
    vis = _sic_vis()
    prev = shutil.copytree(SIC / "baseline_static" / "outputs", tmp_path / "prev")
    path, note = prev_dir_occupancies(f"host.example:{prev}", vis, TITLES)
    assert path == prev / "CHGCAR.gz" and note.startswith("copied from prev_dir")
    assert prev_dir_occupancies(prev, vis, ["PAW_PBE C 01Jan2000", TITLES[1]])[0] is None
    incar = Incar.from_file(prev / "INCAR")
    incar["LMAXMIX"] = 4
    incar.write_file(prev / "INCAR")
    path, note = prev_dir_occupancies(prev, vis, TITLES)
    assert path is None and "LMAXMIX=4" in note and "LMAXMIX=2" in note
    (prev / "INCAR").unlink()
    assert "no INCAR" in prev_dir_occupancies(prev, vis, TITLES)[1]
    (prev / "CHGCAR.gz").unlink()
    assert "has no CHGCAR" in prev_dir_occupancies(prev, vis, TITLES)[1]
    assert prev_dir_occupancies(None, vis, TITLES) == (None, "no prev_dir")


def test_donor_occupancies_go_in_without_touching_density_or_moments(tmp_path) -> None:
    vis = _sic_vis()
    s = vis["POSCAR"].structure
    rng = np.random.default_rng(0)
    grid = DensityGrid(s, 0.1 + rng.random((6, 6, 6)), magnetization=0.01 * rng.random((6, 6, 6)))
    write_chgcar(grid, tmp_path / "CHGCAR", magmom=[0.6, -0.6])
    shutil.copy(tmp_path / "CHGCAR", tmp_path / "CHGCAR.ml")
    summary = add_paw_occupancies(SIC / "occupancy_donor" / "outputs", vis, tmp_path,
                                  ("CHGCAR", "CHGCAR.ml"))
    assert summary["blocks"] == ["total", "diff"]
    for name in ("CHGCAR", "CHGCAR.ml"):
        back = read_chgcar(tmp_path / name)
        np.testing.assert_allclose(back.total, grid.total, rtol=1e-10)
        np.testing.assert_allclose(back.magnetization, grid.magnetization, rtol=1e-9, atol=1e-14)
        assert back.metadata["chgcar_magmom"] == [0.6, -0.6]
        np.testing.assert_allclose(back.metadata["data_aug"]["total"][2], 0.4 + 0.01 * np.arange(8))
    other = tmp_path / "other"
    other.mkdir()
    write_chgcar(DensityGrid(s.copy().scale_lattice(s.volume * 1.1), np.ones((4, 4, 4))),
                 other / "CHGCAR", data_aug={"total": {1: [1.0], 2: [1.0]}})
    with pytest.raises(ValueError, match="another cell"):
        add_paw_occupancies(other, vis, tmp_path)


def test_the_donor_replacement_survives_serialisation() -> None:
    """[occupancy donor, ml static] as a FireWorks spec holds it: JSON, decoded again."""
    from jobflow import Flow
    from monty.json import MontyDecoder, jsanitize

    from mlcharge_workflows.engines.vasp.baseline import DONOR_NAME, with_donor
    from mlcharge_workflows.engines.vasp.jobs import MLStaticMaker
    from mlcharge_workflows.engines.vasp.schemas import MLDensityDocument

    vis = _sic_vis()
    s = vis["POSCAR"].structure
    doc = MLDensityDocument(dir_name="host:/p", path="/p/CHGCAR", predictor="model", structure=s,
                            density=DensityGrid(s, np.ones((2, 2, 2))), total_magnetization=1.2)
    maker = MLStaticMaker(input_set_generator=vis_generator(), density_maker=None)
    response = with_donor(maker, s, None, doc,
                          reference={"energy_eV": -10.0, "total_magnetization": 0.0})
    flow = response.replace
    assert isinstance(flow, Flow) and [j.name for j in flow.jobs] == [DONOR_NAME, "ml static"]
    donor, run = flow.jobs
    assert donor.function.__self__.run_vasp_kwargs["handlers"] == []
    assert run.function_kwargs["occupancy_donor"].uuid == donor.uuid
    assert "density" not in run.function_kwargs["ml_density"]  # the grid does not travel
    again = MontyDecoder().process_decoded(jsanitize(flow.as_dict(), strict=True))
    assert [j.name for j in again.jobs] == [DONOR_NAME, "ml static"]
    assert again.jobs[1].function_kwargs["reference"]["energy_eV"] == -10.0


def vis_generator():
    from atomate2.vasp.sets.core import StaticSetGenerator

    return StaticSetGenerator(user_incar_settings={"ENCUT": 300})
