"""Pseudopotential registry: every file exists, is PBE NC/US, and structures are checked."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.pseudo import (
    check_structure,
    get_pseudo,
    is_pbe,
    n_valence_electrons,
    read_upf_header,
    stage_pseudos,
    supported_elements,
)

# Valence charges as printed in the UPF headers of Debian's quantum-espresso-data 6.7 and of
# the files generated with ld1.x (pseudo.LD1_RECIPES: semicore Li 1s, Na 2s2p, K/Ca/Ti 3s3p).
VALENCE = {"H": 1, "B": 3, "C": 4, "N": 5, "O": 6, "Si": 4, "Fe": 8, "Co": 9, "Ni": 10, "Cu": 11,
           "Li": 3, "Na": 9, "Mg": 2, "Al": 3, "P": 5, "S": 6, "F": 7, "Cl": 7, "K": 9,
           "Ca": 10, "Ti": 12, "Zn": 12}
ORIGINAL = ("H", "B", "C", "N", "O", "Si", "Fe", "Co", "Ni", "Cu")


def test_required_elements_are_supported():
    assert set(ORIGINAL) <= set(supported_elements())


@pytest.mark.parametrize("element", supported_elements())
def test_registry_file_is_pbe_nc_or_us(element):
    info = get_pseudo(element)
    assert info.source.is_file()
    assert info.kind in ("NC", "US"), f"{element}: {info.kind} (PAW is avoided on purpose)"
    assert is_pbe(info.functional), f"{element}: functional {info.functional!r} is not PBE"
    assert info.z_valence == VALENCE[element]
    assert info.ecutrho_ry >= 4 * info.ecutwfc_ry
    head = read_upf_header(info.source)
    assert head["element"] == element


def test_is_pbe_rejects_lda_and_pbesol():
    assert is_pbe("SLA PW PBX PBC") and is_pbe("PBE") and is_pbe(" SLA  PW   PBE  PBE")
    assert not is_pbe("SLA PZ NOGX NOGC") and not is_pbe("PBESOL") and not is_pbe("SLA PW PSX PSC")


def test_unknown_element_lists_supported():
    with pytest.raises(ValueError, match=r"'Xe'.*supported elements: H, B, C"):
        get_pseudo("Xe")
    s = Structure(Lattice.cubic(4.0), ["Si", "Xe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"unsupported element\(s\) Xe; supported elements: .*Si"):
        check_structure(s)


def test_close_atoms_rejected_including_periodic_images():
    s = Structure(Lattice.cubic(4.0), ["Si", "Si"], [[0, 0, 0], [0.1, 0, 0]])
    with pytest.raises(ValueError, match=r"0\.400 Å apart.*closer than 0\.5 Å"):
        check_structure(s)
    tiny = Structure(Lattice.cubic(0.45), ["Si"], [[0, 0, 0]])  # atom meets its own image
    with pytest.raises(ValueError, match="closer than 0.5"):
        check_structure(tiny)


def test_empty_cell_rejected():
    with pytest.raises(ValueError, match="no atoms"):
        check_structure(Structure(Lattice.cubic(4.0), [], []))


def test_disordered_structure_rejected():
    s = Structure(Lattice.cubic(4.0), [{"Si": 0.5, "C": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match="disordered"):
        check_structure(s)


def test_valid_structure_passes_and_counts_electrons():
    s = Structure(Lattice.cubic(4.36), ["Si", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    check_structure(s)
    assert n_valence_electrons(s) == 8


def test_gzipped_sources_are_served_as_plain_files(tmp_path):
    from mlcharge_workflows.pseudo import QE_EXAMPLES_DIR

    h = get_pseudo("H")  # shipped only as .gz among QE's examples
    assert (QE_EXAMPLES_DIR / "CPV/EXX-wf-example/H_HSCV_PBE-1.0.UPF.gz").is_file()
    assert h.source.suffix == ".UPF" and "<PP_HEADER" in h.source.read_text()
    folder = stage_pseudos(["H", "Si"], tmp_path / "pseudo")
    assert (folder / h.filename).read_bytes() == h.source.read_bytes()
    assert read_upf_header(folder / h.filename)["z_valence"] == 1.0
    assert (folder / "Si.pbe-rrkj.UPF").read_bytes() == get_pseudo("Si").source.read_bytes()


def test_co_is_generated_with_ld1_reproducibly(tmp_path):
    from mlcharge_workflows.pseudo import LD1_RECIPES, generate_pseudo

    fresh = generate_pseudo(LD1_RECIPES["Co"].filename, tmp_path)
    head = read_upf_header(fresh)
    assert head == {**head, "element": "Co", "kind": "US", "z_valence": 9.0, "functional": "PBE"}
    assert not head["has_so"]  # scalar-relativistic: pw.x accepts it without spin-orbit
    cached = get_pseudo("Co").source
    # same numbers (older caches hold a date and unwrapped matrix lines)
    body = lambda p: p.read_text().split("<PP_MESH", 1)[1].split()  # noqa: E731
    assert body(fresh) == body(cached)


@pytest.mark.parametrize("element", ["K", "Zn"])
def test_generated_files_are_byte_identical_and_readable(tmp_path, element):
    """Two generations give the same bytes (no date); no line trips QE's 1024-character limit."""
    from mlcharge_workflows.pseudo import LD1_RECIPES, generate_pseudo

    recipe = LD1_RECIPES[element]
    a = generate_pseudo(recipe.filename, tmp_path / "a")
    b = generate_pseudo(recipe.filename, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert max(len(line) for line in a.read_text().splitlines()) < 1024  # K: 7 projectors
    head = read_upf_header(a)
    assert (head["element"], head["kind"], head["z_valence"]) == (element, "US", VALENCE[element])
    assert head["has_rhoatom"] and not head["has_so"] and is_pbe(head["functional"])


def test_committed_validation_records_match_the_generated_files():
    """Every supported ld1.x element has a passing record for exactly the file generated here."""
    from mlcharge_workflows.pseudo import (
        LD1_RECIPES,
        _REGISTRY,
        excluded_elements,
        validation_record,
    )

    generated = [el for el, e in _REGISTRY.items() if e.needs_record]
    assert len(generated) >= 8
    for el in generated:
        rec = validation_record(el)
        assert rec is not None, f"{el}: no validation record"
        assert rec["file"] == LD1_RECIPES[el].filename
        if el in supported_elements():
            assert rec["passed"] and rec["ghost_free"] and rec["transferable"] and rec["lattice_ok"]
            assert abs(rec["relative_error"]) <= 0.015
            info = get_pseudo(el)
            if f"v{rec['ld1_version'][1:]}" in info.source.read_text()[:500]:  # same ld1.x build
                assert info.md5 == rec["md5"], f"{el}: generated file differs from the validated one"
        else:
            assert not rec["passed"] and rec["reason"]
            assert "failed validation" in excluded_elements()[el]
    assert len([el for el in generated if el in supported_elements()]) >= 8


def _write_records(tmp_path, monkeypatch, records):
    import json

    import mlcharge_workflows.pseudo as pseudo

    path = tmp_path / "validation.json"
    path.write_text(json.dumps(records))
    monkeypatch.setattr(pseudo, "VALIDATION_FILE", path)
    return pseudo


def test_failed_validation_keeps_the_element_out(tmp_path, monkeypatch):
    pseudo = _write_records(tmp_path, monkeypatch, {
        "Al": {"file": "Al.pbe-n-rrkjus_ld1.UPF", "passed": False,
               "reason": "lattice constant 4.20 Å vs PBE 4.04 Å (+4.0 %)"},
        "Si": {"passed": False, "reason": "ghost state at l=2"},
    })
    supported = pseudo.supported_elements()
    assert "Al" not in supported and "Si" not in supported and "C" in supported
    assert "4.0 %" in pseudo.excluded_elements()["Al"]
    with pytest.raises(ValueError, match=r"'Al' is not supported: .*failed validation: lattice"):
        pseudo.get_pseudo("Al")
    with pytest.raises(ValueError, match=r"'Si' is not supported: .*ghost state"):
        pseudo.get_pseudo("Si")
    s = Structure(Lattice.cubic(4.0), ["Al", "C"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"unsupported element\(s\) Al"):
        pseudo.check_structure(s)
    # the validation itself still reaches the file
    assert pseudo.get_pseudo("Al", validated_only=False).z_valence == 3.0


def test_generated_element_without_a_record_is_not_supported(tmp_path, monkeypatch):
    pseudo = _write_records(tmp_path, monkeypatch, {})
    supported = pseudo.supported_elements()
    assert set(ORIGINAL) <= set(supported)  # Debian files need no record
    assert not {"Li", "Al", "Zn"} & set(supported)
    assert "no validation record" in pseudo.excluded_elements()["Zn"]


PSEUDO_DIR = "/usr/share/espresso/pseudo"


def test_user_us_file_gives_its_own_info():
    from mlcharge_workflows.pseudo import pseudo_from_file

    info = pseudo_from_file(f"{PSEUDO_DIR}/Si.pbe-nl-rrkjus_psl.1.0.0.UPF")
    assert (info.element, info.kind, info.z_valence, info.origin) == ("Si", "US", 4.0, "user")
    assert info.has_rhoatom and is_pbe(info.functional) and len(info.md5) == 32
    # cutoffs: the larger of the registry's (30 Ry) and the header's suggestion (43.7 Ry)
    assert info.ecutwfc_ry == 44.0 and info.ecutrho_ry >= 8 * 44.0
    assert pseudo_from_file(info.source, "Si", ecutwfc_ry=25, ecutrho_ry=200).ecutwfc_ry == 25


def test_user_file_semicore_valence_counts():
    from mlcharge_workflows.pseudo import pseudo_from_file, resolve_pseudos

    fe = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    infos = resolve_pseudos(fe, overrides={"Fe": f"{PSEUDO_DIR}/Fe.pbe-spn-rrkjus_psl.0.2.1.UPF"})
    assert infos["Fe"].z_valence == 16 and infos["Fe"].origin == "user"
    assert n_valence_electrons(fe, infos) == 32 and n_valence_electrons(fe) == 16
    assert pseudo_from_file(f"{PSEUDO_DIR}/Fe.pbe-spn-rrkjus_psl.0.2.1.UPF").ecutwfc_ry == 64


def test_paw_spin_orbit_and_wrong_element_are_refused(tmp_path):
    from mlcharge_workflows.pseudo import pseudo_from_file

    with pytest.raises(ValueError, match=r"PAW data set, refused: .*becsum"):
        pseudo_from_file(f"{PSEUDO_DIR}/B.pbe-n-kjpaw_psl.1.0.0.UPF")
    with pytest.raises(ValueError, match=r"PAW.*becsum"):
        pseudo_from_file(f"{PSEUDO_DIR}/N.pbe-kjpaw.UPF")  # UPF v1 PAW
    with pytest.raises(ValueError, match="fully relativistic"):
        pseudo_from_file(f"{PSEUDO_DIR}/Fe.rel-pbe-spn-rrkjus_psl.0.2.1.UPF")
    with pytest.raises(ValueError, match=r"for 'C', not for 'Si'"):
        pseudo_from_file(f"{PSEUDO_DIR}/C.pbe-rrkjus.UPF", "Si")
    with pytest.raises(ValueError, match="does not exist"):
        pseudo_from_file(tmp_path / "missing.UPF")
    text = tmp_path / "Si_without_rhoatom.UPF"
    src = open(f"{PSEUDO_DIR}/Si.pbe-rrkj.UPF").read()
    start, end = src.index("<PP_RHOATOM"), src.index("</PP_RHOATOM>") + len("</PP_RHOATOM>")
    text.write_text(src[:start] + src[end:])
    with pytest.raises(ValueError, match="no PP_RHOATOM"):
        pseudo_from_file(text)


def test_gzipped_user_file_is_served_plain():
    from mlcharge_workflows.pseudo import QE_EXAMPLES_DIR, pseudo_from_file

    info = pseudo_from_file(QE_EXAMPLES_DIR / "XSpectra/pseudo/Cu_US_PBE_3pj_lowE.UPF.gz")
    assert info.filename == "Cu_US_PBE_3pj_lowE.UPF" and info.source.suffix == ".UPF"
    assert "<PP_HEADER" in info.source.read_text() and info.z_valence == 11


def test_resolve_pseudos_overrides_and_checks(tmp_path):
    import shutil

    from mlcharge_workflows.pseudo import pseudo_from_file, resolve_pseudos

    sic = Structure(Lattice.cubic(4.36), ["Si", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    user_si = f"{PSEUDO_DIR}/Si.pbe-nl-rrkjus_psl.1.0.0.UPF"
    infos = resolve_pseudos(sic, overrides={"Si": user_si, "O": f"{PSEUDO_DIR}/O.pbe-rrkjus.UPF"})
    assert list(infos) == ["Si", "C"]  # overrides for absent elements are ignored
    assert infos["Si"].filename == "Si.pbe-nl-rrkjus_psl.1.0.0.UPF" and infos["Si"].kind == "US"
    assert infos["C"] == get_pseudo("C")
    with pytest.raises(ValueError, match=r"override for 'C' is a pseudopotential for 'Si'"):
        resolve_pseudos(sic, overrides={"C": infos["Si"]})
    # a PBEsol file among PBE ones: pw.x refuses mixed functionals, so do we, by name
    sio = Structure(Lattice.cubic(4.0), ["Si", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"mix exchange-correlation functionals.*O: PBESOL"):
        resolve_pseudos(sio, overrides={"O": f"{PSEUDO_DIR}/O.pbesol-n-rrkjus_psl.0.1.UPF"})
    clash = tmp_path / "Si.pbe-rrkj.UPF"  # a C file under the registry Si file's name
    shutil.copyfile(f"{PSEUDO_DIR}/C.pbe-van_bm.UPF", clash)
    with pytest.raises(ValueError, match="would both use the file name"):
        resolve_pseudos(sic, overrides={"C": clash})
    staged = stage_pseudos(["Si", "C"], tmp_path / "pseudo", infos)
    assert (staged / infos["Si"].filename).read_bytes() == open(user_si, "rb").read()
    assert read_upf_header(staged / "C.pbe-rrkjus.UPF")["element"] == "C"
    assert pseudo_from_file(staged / infos["Si"].filename).md5 == infos["Si"].md5


def test_unreadable_valence_is_an_error_not_zero(tmp_path):
    src = open(f"{PSEUDO_DIR}/Si.pbe-nl-rrkjus_psl.1.0.0.UPF").read()
    bad = tmp_path / "Si.bad.UPF"
    bad.write_text(src.replace('z_valence="', 'z_valence="four', 1))
    with pytest.raises(ValueError, match="unreadable z_valence"):
        read_upf_header(bad)
