"""The atomic configuration of a reference: read from the UPF, matched to the training one.

The configurations pinned here are what the files' own headers say (PP_INFO and the
``occupation`` attributes of PP_PSWFC): the registry's Fe ``4S 1.00 / 3D 7.00``,
pslibrary 0.2.1's semicore Fe ``config='[Ar] 4s2.0 3d6.0 4p0'`` with 3s2 3p6.
ld1.x itself runs in tests/integration/test_reference_configuration_ld1.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlcharge_workflows.model import load_model
from mlcharge_workflows.model.atomic import AtomicReference
from mlcharge_workflows.model.configuration import (
    Configuration,
    _all_electron_config,
    read_configuration,
    reference_mode,
    run_references,
    target_configuration,
    training_file,
)
from mlcharge_workflows.pseudo import get_pseudo
from mlcharge_workflows.settings import get_settings

PSEUDO = get_settings().pseudo_dir
FE_SEMICORE = PSEUDO / "Fe.pbe-spn-rrkjus_psl.0.2.1.UPF"
SI_US = PSEUDO / "Si.pbe-nl-rrkjus_psl.1.0.0.UPF"


def conf(text: str) -> Configuration:
    return Configuration(tuple((s[:2].upper(), float(s[2:])) for s in text.split()))


@pytest.fixture(scope="module")
def shipped():
    return load_model()


@pytest.fixture
def no_ld1(monkeypatch):
    """ld1.x must not run: any call fails the test."""
    import mlcharge_workflows.pseudo as pseudo

    def refuse(*args, **kwargs):
        raise AssertionError("ld1.x was run although the configurations agree")

    monkeypatch.setattr(pseudo, "run_ld1", refuse)


def test_configurations_read_from_the_files():
    assert read_configuration(get_pseudo("Fe").source).ld1() == "4s1 3d7"
    semi = read_configuration(FE_SEMICORE)
    assert semi.ld1() == "3s2 4s2 3p6 4p0 3d6" and semi.electrons == 16.0
    assert str(semi) == "3s2 4s2 3p6 3d6"  # empty shells left out of the readable form
    # UPF v1 (Wavefunction lines of PP_PSWFC)
    assert read_configuration(PSEUDO / "Rh.pbe-rrkjus_lb.UPF").ld1() == "4d8 5s1"


def _upf(tmp_path, chis: str, z: float = 8.0):
    path = tmp_path / "X.UPF"
    path.write_text(
        f'<UPF version="2.0.1">\n<PP_HEADER element="Fe" pseudo_type="US" z_valence="{z}" '
        f'functional="PBE" relativistic="scalar"/>\n<PP_PSWFC>\n{chis}\n</PP_PSWFC>\n</UPF>\n'
    )
    return path


def test_unusable_configurations_are_refused_with_the_reason(tmp_path):
    chi = '<PP_CHI.1 label="{}" occupation="{}" l="0">\n1 2\n</PP_CHI.1>'
    with pytest.raises(ValueError, match="hold 6 electrons.*valence is 8"):
        read_configuration(_upf(tmp_path, chi.format("4S", 6.0)))
    with pytest.raises(ValueError, match=r"labels \['S1'\]"):
        read_configuration(_upf(tmp_path, chi.format("S1", 8.0)))
    with pytest.raises(ValueError, match="no atomic wavefunctions"):
        read_configuration(_upf(tmp_path, ""))
    # an unbound state (negative occupation) counts as empty
    two = chi.format("4S", 8.0) + "\n" + chi.format("4P", -1.0).replace("CHI.1", "CHI.2")
    assert read_configuration(_upf(tmp_path, two)).occupations == {"4S": 8.0, "4P": 0.0}


def test_target_configuration_keeps_the_semicore_shells():
    used = target_configuration(conf("3s2 4s2 3p6 4p0 3d6"), conf("4s1 3d7"))
    assert used.ld1() == "3s2 4s1 3p6 4p0 3d7" and used.electrons == 16.0
    assert target_configuration(conf("4s1 3d7"), conf("4s1 3d7")).same_as(conf("3d7 4s1"))
    with pytest.raises(ValueError, match=r"occupies \['3P'\].*not treat as valence"):
        target_configuration(conf("4s2 3d6"), conf("3p6 4s1 3d7"))
    with pytest.raises(ValueError, match="put 9 electrons"):
        target_configuration(conf("4s2 3d6"), conf("4s2 3d7"))


def test_all_electron_configuration_fills_the_core_around_the_valence():
    assert _all_electron_config("Fe", conf("3s2 4s1 3p6 4p0 3d7")) == "1s2 2s2 2p6 3s2 4s1 3p6 4p0 3d7"
    assert _all_electron_config("Fe", conf("4s1 3d7")).startswith("1s2 2s2 2p6 3s2 3p6 4s1")
    hf = _all_electron_config("Hf", conf("6s2 5d2"))  # 4f14 in the core, after 6s
    assert "4f14" in hf and hf.endswith("6s2 5d2") and hf.count("6s") == 1


def test_training_file_is_the_registry_file_checked_against_the_table(shipped):
    assert training_file(shipped.table, "Fe").name == get_pseudo("Fe").filename
    bad = shipped.table.with_references({"Fe": AtomicReference.from_upf(FE_SEMICORE)})
    with pytest.raises(ValueError, match="configuration is unknown"):
        training_file(bad, "Fe")


def test_same_configuration_is_the_unmatched_reference_without_ld1(shipped, no_ld1):
    """The training file itself and a foreign file in the same configuration (US Si 3s2 3p2
    vs the registry's NC Si) are used as they are: same transform, no ld1.x run."""
    refs = run_references(shipped.table, {"Fe": get_pseudo("Fe").source, "Si": SI_US})
    q = np.linspace(0.0, 20.0, 400)
    for el, path in (("Fe", get_pseudo("Fe").source), ("Si", SI_US)):
        np.testing.assert_array_equal(refs[el].transform(q), AtomicReference.from_upf(path).transform(q))
        assert refs[el].identity["configuration"]["matched"] is False
        assert "fallback" not in refs[el].identity["configuration"]
    assert refs["Si"].identity["configuration"]["file"] == "3s2 3p2"


def test_matching_off_is_recorded(shipped, no_ld1):
    refs = run_references(shipped.table, {"Fe": FE_SEMICORE}, mode="file")
    rec = refs["Fe"].identity["configuration"]
    assert rec["matched"] is False and "matching off" in rec["fallback"]
    assert rec["file"] == "3s2 4s2 3p6 3d6" and rec["training"] == "4s1 3d7"
    q = np.linspace(0.0, 20.0, 400)
    np.testing.assert_array_equal(refs["Fe"].transform(q), AtomicReference.from_upf(FE_SEMICORE).transform(q))
    with pytest.raises(ValueError, match="MLCHARGE_REFERENCE_CONFIGURATION"):
        reference_mode("atoms")


def test_element_the_model_does_not_know_passes_through(shipped, no_ld1, tmp_path):
    refs = run_references(shipped.table, {"Xe": tmp_path / "Xe.UPF"})
    assert refs == {"Xe": tmp_path / "Xe.UPF"}


def test_ld1_failure_falls_back_to_the_file_and_says_so(shipped, monkeypatch):
    import mlcharge_workflows.pseudo as pseudo
    from mlcharge_workflows.model import configuration

    def fail(text, cwd):
        raise RuntimeError("ld1.x failed (status 1) in test")

    monkeypatch.setattr(pseudo, "run_ld1", fail)
    configuration._ld1_densities.cache_clear()
    refs = run_references(shipped.table, {"Fe": FE_SEMICORE}, mode="training")
    rec = refs["Fe"].identity["configuration"]
    assert rec["matched"] is False and "ld1.x failed" in rec["fallback"]
    q = np.linspace(0.0, 20.0, 400)
    np.testing.assert_array_equal(refs["Fe"].transform(q), AtomicReference.from_upf(FE_SEMICORE).transform(q))


def test_unknown_training_file_is_recorded_not_guessed(shipped, no_ld1):
    """A model whose Fe row is no registry file: the configuration to match is unknown, the
    file's own density is used and the record says why."""
    bad = shipped.table.with_references({"Fe": AtomicReference.from_upf(FE_SEMICORE)})
    refs = run_references(bad, {"Fe": get_pseudo("Fe").source}, mode="training")
    rec = refs["Fe"].identity["configuration"]
    assert rec["matched"] is False and "configuration is unknown" in rec["training_unknown"]
