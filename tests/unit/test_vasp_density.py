"""The VASP start density on the run's own POTCARs (a synthetic POTCAR library here).

``PMG_VASP_PSP_DIR`` points at POTCARs written in VASP's layout from known radial data
(``engines.vasp.testing``): ``Fe_pv`` is the registry's 8-electron Fe density plus a
compact 6-electron semicore shell, so its ZVAL (14) differs from the model's training
valence (8) as Materials Project's Fe_pv does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("atomate2")

from atomate2.vasp.sets.core import NonSCFSetGenerator, StaticSetGenerator  # noqa: E402

from mlcharge_workflows.density.chgcar import read_chgcar, write_chgcar  # noqa: E402
from mlcharge_workflows.engines.vasp.density import (  # noqa: E402
    REFERENCE_FILE,
    PotcarDataError,
    place_density,
    write_predicted_chgcar,
)
from mlcharge_workflows.engines.vasp.sets import (  # noqa: E402
    input_set,
    potcar_functional,
    with_incar,
)
from mlcharge_workflows.engines.vasp.testing import write_synthetic_potcar_library  # noqa: E402

SYMBOLS = ["Si", "C", "Fe_pv", "Fe", "O", "Ni_pv"]


@pytest.fixture
def potcar_dir(tmp_path, monkeypatch):
    """A synthetic POTCAR library as the user's PMG_VASP_PSP_DIR."""
    import pymatgen.io.vasp.inputs as inputs

    root = write_synthetic_potcar_library(tmp_path / "psp", SYMBOLS)
    write_synthetic_potcar_library(root, SYMBOLS, functional_dir="POT_GGA_PAW_PBE")
    monkeypatch.setenv("PMG_VASP_PSP_DIR", str(root))
    monkeypatch.setitem(inputs.SETTINGS, "PMG_VASP_PSP_DIR", str(root))
    return root


def sic() -> Structure:
    a = 4.36
    lat = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lat, ["C", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def bcc_fe(magmom=(2.5, -2.5)) -> Structure:
    return Structure(Lattice.cubic(2.83), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]],
                     site_properties={"magmom": list(magmom)})


def gen(**incar) -> StaticSetGenerator:
    return StaticSetGenerator(user_incar_settings={"ENCUT": 300, **incar})


def test_potcar_functional_from_the_generator():
    from pymatgen.io.vasp.sets import MPRelaxSet

    assert potcar_functional(gen()) == "PBE_54"
    assert potcar_functional(MPRelaxSet()) == "PBE"  # not a hard-coded PBE_54


def test_no_potcar_data_is_refused(tmp_path, monkeypatch):
    import pymatgen.io.vasp.inputs as inputs

    monkeypatch.setitem(inputs.SETTINGS, "PMG_VASP_PSP_DIR", None)
    monkeypatch.delenv("PMG_VASP_PSP_DIR", raising=False)
    with pytest.raises(PotcarDataError, match="set PMG_VASP_PSP_DIR"):
        write_predicted_chgcar(sic(), gen(), tmp_path / "CHGCAR", predictor="sad")
    assert not (tmp_path / "CHGCAR").exists()


def test_sad_is_vasps_own_superposition(potcar_dir, tmp_path):
    grid, info = write_predicted_chgcar(sic(), gen(), tmp_path / "CHGCAR", predictor="sad")
    assert info["nelect"] == 8.0 and info["nelect_source"] == "POTCAR"
    assert info["scale"] is None and grid.n_electrons == pytest.approx(8.0, abs=1e-9)
    ref = json.loads((tmp_path / REFERENCE_FILE).read_text())
    assert ref["source"] == "POTCAR" and ref["functional"] == "PBE_54"
    assert {d["symbol"] for d in ref["potcars"].values()} == {"C", "Si"}
    assert read_chgcar(tmp_path / "CHGCAR").n_electrons == pytest.approx(8.0, rel=1e-9)


def test_semicore_potcar_model_start_is_not_rescaled(potcar_dir, tmp_path):
    """Fe_pv (ZVAL 14) with the model trained on 8-electron Fe: the prediction is the
    POTCAR reference plus the learned deformation and holds 28 electrons by itself."""
    fe = bcc_fe((2.5, 2.5))
    # atomate2's default set uses Fe (8 e); Materials Project's sets use Fe_pv
    g = StaticSetGenerator(user_incar_settings={"ENCUT": 300, "ISPIN": 2},
                           user_potcar_settings={"Fe": "Fe_pv"})
    grid, info = write_predicted_chgcar(fe, g, tmp_path / "CHGCAR", predictor="model",
                                        spin="model", device="cpu")
    assert info["nelect"] == 28.0 and info["potcar_symbols"] == ["Fe_pv"]
    assert grid.n_electrons == pytest.approx(28.0, abs=1e-6) and info["scale"] is None
    assert info["valence_mismatch"] == {"Fe": {"model": 8.0, "potcar": 14.0}}
    ref = info["reference"]
    assert ref["source"] == "POTCAR" and ref["differs_from_training"] is True
    assert ref["elements"]["Fe"]["z_valence"] == 14.0 and info["device"] == "cpu"
    # the same deformation as on the training reference: outside the semicore shell the
    # start matches a prediction on the training pseudopotential
    from mlcharge_workflows.model import load_model, predict_density

    plain = predict_density(info["structure"], grid.shape, load_model(), spin="model")
    f = np.stack(np.meshgrid(*[np.arange(n) / n for n in grid.shape], indexing="ij"), -1)
    d = np.full(grid.shape, np.inf)
    for site in info["structure"]:
        df = f - site.frac_coords
        df -= np.round(df)
        d = np.minimum(d, np.linalg.norm(df @ fe.lattice.matrix, axis=-1))
    out = d > 0.8
    rel = np.abs(grid.total - plain.total)[out].sum() / plain.total[out].sum()
    assert rel < 2e-3


def test_incar_magmom_reaches_the_model(potcar_dir, tmp_path):
    """An antiferromagnetic MAGMOM (site magmoms -> INCAR) gives zero net moment."""
    g = gen(ISPIN=2)
    grid, info = write_predicted_chgcar(bcc_fe((2.5, -2.5)), g, tmp_path / "afm", predictor="sad")
    assert info["structure"].site_properties["magmom"] == [2.5, -2.5]
    assert abs(grid.total_magnetization) < 1e-9
    fm, _ = write_predicted_chgcar(bcc_fe((2.5, 2.5)), g, tmp_path / "fm", predictor="sad")
    assert fm.total_magnetization == pytest.approx(5.0, rel=1e-9)  # VASP: MAGMOM/ZVAL * rho
    # user_incar_settings MAGMOM overrides site properties, as in the INCAR VASP reads
    g2 = gen(ISPIN=2, MAGMOM={"Fe": 1.0})
    grid2, info2 = write_predicted_chgcar(bcc_fe(), g2, tmp_path / "u", predictor="sad")
    assert info2["incar"]["ISPIN"] == 2
    assert grid2.total_magnetization == pytest.approx(
        sum(input_set(g2, bcc_fe())["INCAR"]["MAGMOM"]), rel=1e-9)


def test_custom_predictor_on_other_valence_is_refused(potcar_dir, tmp_path):
    from mlcharge_workflows.density.grid import DensityGrid

    def seven_electron_fe(structure, shape):  # the run's Fe POTCAR has ZVAL 8
        return DensityGrid(structure, np.ones(shape)).normalized(14.0)

    with pytest.raises(ValueError, match="holds 14.000000 electrons.*never rescaled"):
        write_predicted_chgcar(bcc_fe(), gen(), tmp_path / "CHGCAR", predictor=seven_electron_fe)
    with pytest.raises(ValueError, match="zval overrides disagree"):
        write_predicted_chgcar(bcc_fe(), gen(), tmp_path / "CHGCAR", predictor="sad",
                               zval={"Fe": 14.0})


def test_host_prefixed_prev_dir(potcar_dir, tmp_path):
    """atomate2's dir_name is host:/path: it reaches the input set stripped."""
    import shutil

    ref = Path(__file__).resolve().parents[1] / "test_data" / "vasp" / "SiC" / "baseline_static"
    prev = shutil.copytree(ref / "outputs", tmp_path / "prev")
    with pytest.raises(ValueError, match="Unable to get vasprun"):
        input_set(gen(), sic(), tmp_path / "nowhere")  # prev_dir is really read
    _, info = write_predicted_chgcar(sic(), gen(), tmp_path / "CHGCAR", predictor="sad",
                                     prev_dir=f"somehost.example:{prev}")
    assert info["nelect"] == 8.0
    hosted = input_set(gen(), sic(), f"somehost.example:{prev}")
    assert hosted["INCAR"] == input_set(gen(), sic(), prev)["INCAR"]


def test_nscf_refuses_a_prediction_on_other_potcars(potcar_dir, tmp_path):
    nscf = with_incar(NonSCFSetGenerator(user_incar_settings={"ENCUT": 300}), {"ICHARG": 11})
    vis = input_set(nscf, sic())
    (tmp_path / "pred").mkdir()
    write_predicted_chgcar(sic(), gen(), tmp_path / "pred" / "CHGCAR", predictor="sad")
    (tmp_path / "run").mkdir()
    info = place_density(tmp_path / "pred" / "CHGCAR", vis, tmp_path / "run",
                         potcar_functional(nscf))
    assert info["reference"]["source"] == "POTCAR"
    # the same CHGCAR, recorded as made on another POTCAR set: refused for ICHARG=11
    ref_file = tmp_path / "pred" / REFERENCE_FILE
    ref = json.loads(ref_file.read_text())
    ref["potcars"]["Si"]["sha256"] = "0" * 64
    ref_file.write_text(json.dumps(ref))
    with pytest.raises(ValueError, match="ICHARG=11 refused: .* other POTCARs"):
        place_density(tmp_path / "pred" / "CHGCAR", vis, tmp_path / "run", potcar_functional(nscf))
    ref["source"] = "predictor"
    ref_file.write_text(json.dumps(ref))
    with pytest.raises(ValueError, match="not built on POTCAR"):
        place_density(tmp_path / "pred" / "CHGCAR", vis, tmp_path / "run", potcar_functional(nscf))
    # a converged density (no reference file) is placed as atomate2's NSCF would
    write_chgcar(read_chgcar(tmp_path / "pred" / "CHGCAR"), tmp_path / "converged")
    assert place_density(tmp_path / "converged", vis, tmp_path / "run")["written"] == "copied"
