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

# Valence charges as printed in the UPF headers of Debian's quantum-espresso-data 6.7.
VALENCE = {"H": 1, "B": 3, "C": 4, "N": 5, "O": 6, "Si": 4, "Fe": 8, "Co": 9, "Ni": 10, "Cu": 11}


def test_required_elements_are_supported():
    assert set(VALENCE) <= set(supported_elements())


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
    s = Structure(Lattice.cubic(4.0), ["Si", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"unsupported element\(s\) Al; supported elements: .*Si"):
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
    from mlcharge_workflows.pseudo import LD1_INPUTS, generate_pseudo

    (name,) = LD1_INPUTS
    fresh = generate_pseudo(name, tmp_path)
    head = read_upf_header(fresh)
    assert head == {**head, "element": "Co", "kind": "US", "z_valence": 9.0, "functional": "PBE"}
    assert not head["has_so"]  # scalar-relativistic: pw.x accepts it without spin-orbit
    cached = get_pseudo("Co").source
    body = lambda p: p.read_text().split("<PP_MESH", 1)[1]  # noqa: E731 (dates differ in PP_INFO)
    assert body(fresh) == body(cached)
