"""Structure and run facts from pw.x's ``data-file-schema.xml`` (QE 6.7 ``qes`` schema).

Cell and positions are in bohr in the file and returned in Å; energies there are Hartree.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlcharge_workflows.density.qe_gvectors import QE_BOHR_TO_ANGSTROM as BOHR_TO_ANGSTROM

if TYPE_CHECKING:
    from pymatgen.core import Structure


def _element_of_label(label: str) -> str:
    from pymatgen.core import Element

    letters = "".join(ch for ch in label if ch.isalpha())
    for cand in (letters[:2].capitalize(), letters[:1].upper()):
        if cand and Element.is_valid_symbol(cand):
            return cand
    raise ValueError(f"cannot tell the element of QE species label {label!r}")


def read_qe_xml(path: str | Path) -> tuple[Structure, dict]:
    """Structure (Å) and run facts (nelec, ecutrho_ry, gamma_only, lsda, fft_grid) from
    ``data-file-schema.xml`` (its ``output`` section, else ``input``)."""
    from pymatgen.core import Lattice, Structure

    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"{path}: unreadable QE XML ({err})") from None
    sec = root.find("output")
    if sec is None or sec.find("atomic_structure") is None:
        sec = root.find("input")
    ast = None if sec is None else sec.find("atomic_structure")
    if ast is None:
        raise ValueError(f"{path}: no atomic_structure in QE XML")
    try:
        cell = np.array(
            [[float(x) for x in ast.find(f"cell/{a}").text.split()] for a in ("a1", "a2", "a3")]
        )
        atoms = ast.findall("atomic_positions/atom")
        pos = np.array([[float(x) for x in a.text.split()] for a in atoms]).reshape(-1, 3)
    except (AttributeError, ValueError) as err:
        raise ValueError(f"{path}: corrupt atomic_structure ({err})") from None
    if not atoms:
        raise ValueError(f"{path}: QE XML lists no atoms")
    species = [_element_of_label(a.get("name", "")) for a in atoms]
    structure = Structure(
        Lattice(cell * BOHR_TO_ANGSTROM), species, pos * BOHR_TO_ANGSTROM,
        coords_are_cartesian=True, site_properties={"qe_label": [a.get("name") for a in atoms]},
    )
    info: dict = {}
    for key, tag in (("nelec", "band_structure/nelec"), ("ecutrho_ry", "basis_set/ecutrho")):
        el = sec.find(tag) if sec.tag == "output" else None
        if el is not None:
            info[key] = float(el.text) * (2.0 if key == "ecutrho_ry" else 1.0)  # Ha -> Ry
    for key, tag in (("gamma_only", "basis_set/gamma_only"), ("lsda", "band_structure/lsda")):
        el = sec.find(tag)
        if el is not None:
            info[key] = el.text.strip().lower() == "true"
    fft = sec.find("basis_set/fft_grid")
    if fft is not None:
        info["fft_grid"] = tuple(int(fft.get(k)) for k in ("nr1", "nr2", "nr3"))
    return structure, info


__all__ = ["read_qe_xml"]
