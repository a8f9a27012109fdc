"""User pseudopotentials in the QE protocol: parsing, validation, inputs and the ML start's
reference (no pw.x here; tests/integration/test_qe_user_pseudos.py runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import fcc_cell
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.catalogue import parse_pseudo_options, qe_protocol, with_pseudo_options
from mlcharge_workflows.engines.qe.sets import QEProtocol, default_nbnd, pw_input

PSEUDO = Path("/usr/share/espresso/pseudo")
SI_US = PSEUDO / "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"
FE_SEMICORE = PSEUDO / "Fe.pbe-spn-rrkjus_psl.0.2.1.UPF"
FE_PAW = PSEUDO / "Fe.pbesol-spn-kjpaw_psl.1.0.0.UPF"

pytestmark = pytest.mark.skipif(not SI_US.is_file() or not FE_SEMICORE.is_file(),
                                reason="Debian's quantum-espresso-data alternates not installed")


def _fe_bcc() -> Structure:
    return Structure(Lattice.cubic(2.83), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_parse_pseudo_options() -> None:
    assert parse_pseudo_options(["Si=/a/Si.UPF", "C = c.UPF"]) == {"Si": "/a/Si.UPF", "C": "c.UPF"}
    assert parse_pseudo_options(None) == {}
    for bad in ("Si", "=x.UPF", "Si="):
        with pytest.raises(ValueError, match="ELEMENT=FILE"):
            parse_pseudo_options([bad])
    with pytest.raises(ValueError, match="two files for Si"):
        parse_pseudo_options(["Si=a.UPF", "Si=b.UPF"])


def test_pseudo_options_merge_into_protocol_fields() -> None:
    fields = with_pseudo_options({"kspacing": 0.5, "pseudopotentials": {"C": "c.UPF"}},
                                 [f"Si={SI_US}"])
    assert fields == {"kspacing": 0.5, "pseudopotentials": {"C": "c.UPF", "Si": str(SI_US)}}
    assert with_pseudo_options(None, []) is None
    proto = qe_protocol({"kspacing": 0.5}, [f"Si={SI_US}"])
    assert proto.kspacing == 0.5 and proto.pseudopotentials == {"Si": str(SI_US.resolve())}
    # a QEProtocol object gets the files too (the --pseudo option wins)
    assert qe_protocol(proto, {"Fe": str(FE_SEMICORE)}).pseudopotentials["Fe"] == str(FE_SEMICORE)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"Si": "/nonexistent/Si.UPF"}, "does not exist"),
        ({"C": str(SI_US)}, "for 'Si', not for 'C'"),
        ({"Fe": str(FE_PAW)}, "PAW"),
    ],
)
def test_bad_pseudo_files_are_refused_naming_the_file(files, message) -> None:
    with pytest.raises(ValueError, match=message):
        qe_protocol({"pseudopotentials": files})


def test_relative_path_is_stored_absolute(tmp_path, monkeypatch) -> None:
    (tmp_path / "Si.UPF").write_bytes(SI_US.read_bytes())
    monkeypatch.chdir(tmp_path)
    proto = QEProtocol(pseudopotentials={"Si": "Si.UPF"})
    assert proto.pseudopotentials["Si"] == str(tmp_path / "Si.UPF")


def test_input_cutoffs_electrons_and_moments_follow_the_users_files() -> None:
    fe = _fe_bcc()
    registry, user = QEProtocol(), QEProtocol(pseudopotentials={"Fe": str(FE_SEMICORE)})
    assert registry.n_electrons(fe) == 16 and user.n_electrons(fe) == 32  # 3s3p semicore
    assert user.starting_moments(fe) == [2 * m for m in registry.starting_moments(fe)]
    assert default_nbnd(fe, user) > default_nbnd(fe, registry)
    # the file's suggested cutoffs (higher than the registry's) are taken
    assert user.cutoffs(fe)[0] > registry.cutoffs(fe)[0]
    text = str(pw_input(fe, user))
    assert FE_SEMICORE.name in text and "Fe.pbe-nd-rrkjus.UPF" not in text
    # an antiferromagnetic start (one species kind per sign) names the user's file too
    afm = fe.copy()
    afm.add_site_property("magmom", [2.0, -2.0])
    text = str(pw_input(afm, user))
    assert text.count(FE_SEMICORE.name) == 2 and "Fe.pbe-nd-rrkjus.UPF" not in text


def test_prediction_reference_is_the_runs_own_pseudopotential() -> None:
    """The ML start of a semicore Fe run holds 16 electrons per atom, not the training 8,
    with no rescaling, and says that its reference differs from the training one."""
    from mlcharge_workflows.engines.qe.density import predict_grid

    fe = _fe_bcc()
    user = QEProtocol(pseudopotentials={"Fe": str(FE_SEMICORE)})
    grid = predict_grid(fe, (20, 20, 20), None, user)
    assert grid.metadata["n_electrons"] == pytest.approx(32.0)
    assert grid.n_electrons == pytest.approx(32.0, rel=1e-6)
    ref = grid.metadata["reference"]
    assert ref["differs_from_training"] is True
    assert ref["elements"]["Fe"]["source"]["file"] == FE_SEMICORE.name
    # the registry's own files reproduce the training reference
    same = predict_grid(fe, (20, 20, 20), None, QEProtocol()).metadata["reference"]
    assert same["differs_from_training"] is False


def test_user_file_admits_an_element_the_registry_lacks() -> None:
    from mlcharge_workflows.pseudo import check_structure, supported_elements

    rh = PSEUDO / "Rh.pbe-rrkjus_lb.UPF"
    if "Rh" in supported_elements() or not rh.is_file():
        pytest.skip("needs an element outside the registry with a Debian US file")
    cell = fcc_cell(["Rh", "Si"], 4.5, [[0, 0, 0], [0.25, 0.25, 0.25]])
    with pytest.raises(ValueError, match="unsupported element"):
        check_structure(cell)
    check_structure(cell, {"Rh": str(rh)})
    proto = QEProtocol(pseudopotentials={"Rh": str(rh)})
    assert rh.name in str(pw_input(cell, proto))
    assert proto.n_electrons(cell) == pytest.approx(4 + proto.pseudos(cell)["Rh"].z_valence)


def test_cli_pseudo_option_on_predict_compare_submit(tmp_path) -> None:
    """predict builds the start on the given file; compare and submit refuse a wrong file
    before any run or submission, naming it; VASP refuses --pseudo."""
    from typer.testing import CliRunner

    from mlcharge_workflows.cli.main import app

    runner = CliRunner()
    cif = tmp_path / "si.cif"
    fcc_cell(["Si", "Si"], 5.43, [[0, 0, 0], [0.25, 0.25, 0.25]]).to(filename=str(cif))
    res = runner.invoke(app, ["predict", str(cif), "-o", str(tmp_path / "p"), "--pseudo", f"Si={SI_US}"])
    assert res.exit_code == 0, res.output
    assert f"reference        Si: {SI_US.name} (differs from the training pseudopotential)" in res.output
    res = runner.invoke(app, ["compare", str(cif), "-o", str(tmp_path / "r.json"), "--workdir",
                              str(tmp_path / "w"), "--pseudo", f"C={SI_US}", "--no-progress"])
    assert res.exit_code == 2 and "not for 'C'" in res.output
    assert not (tmp_path / "r.json").exists()
    res = runner.invoke(app, ["submit", str(cif), "--project", str(tmp_path / "proj"),
                              "--pseudo", f"Si={tmp_path / 'none.UPF'}", "--no-progress"])
    assert res.exit_code == 2 and "does not exist" in res.output and "--pseudo" in res.output
    res = runner.invoke(app, ["submit", str(cif), "--engine", "vasp", "--project",
                              str(tmp_path / "proj"), "--pseudo", f"Si={SI_US}", "--no-progress"])
    assert res.exit_code == 2 and "--engine qe" in res.output
