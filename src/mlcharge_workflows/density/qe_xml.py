"""Structure and run facts from pw.x's ``data-file-schema.xml`` (QE 6.7 ``qes`` schema).

Cell and positions are in bohr in the file and returned in Å; energies there are Hartree.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlcharge_workflows.density.qe_gvectors import QE_BOHR_TO_ANGSTROM as BOHR_TO_ANGSTROM

if TYPE_CHECKING:
    from pymatgen.core import Structure


def _symbol_in(text: str) -> str | None:
    from pymatgen.core import Element

    letters = "".join(ch for ch in text if ch.isalpha())
    for cand in (letters[:2].capitalize(), letters[:1].upper()):
        if cand and Element.is_valid_symbol(cand):
            return cand
    return None


def _species_elements(sec: ET.Element, path: Path) -> dict[str, str]:
    """Species label -> element: the label itself (``Fe``, ``Fe1``), else the pseudopotential
    file's ``element`` (``pseudo_dir`` as pw.x recorded it), else the file name."""
    out: dict[str, str] = {}
    species = sec.find("atomic_species")
    pseudo_dir = Path((species.get("pseudo_dir") or ".") if species is not None else ".")
    for sp in [] if species is None else species.findall("species"):
        label = sp.get("name", "")
        pseudo = (sp.findtext("pseudo_file") or "").strip()
        element = _symbol_in(label.split("_")[0])
        upf = pseudo_dir / pseudo
        if element is None and pseudo and upf.is_file():
            text = upf.read_text(errors="replace")
            match = re.search(r'element\s*=\s*"\s*([A-Za-z]+)', text) or re.search(
                r"^\s*([A-Za-z]{1,2})\s+Element", text, re.MULTILINE
            )
            element = _symbol_in(match.group(1)) if match else None
        element = element or _symbol_in(pseudo.split(".")[0].split("_")[0])
        if element is None:
            raise ValueError(f"{path}: cannot tell the element of species {label!r} ({pseudo})")
        out[label] = element
    return out


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
    elements = _species_elements(sec, path)
    labels = [a.get("name", "") for a in atoms]
    unknown = sorted(set(labels) - set(elements))
    if unknown:
        raise ValueError(f"{path}: atoms of undeclared species {unknown}")
    species = [elements[label] for label in labels]
    structure = Structure(
        Lattice(cell * BOHR_TO_ANGSTROM), species, pos * BOHR_TO_ANGSTROM,
        coords_are_cartesian=True, site_properties={"qe_label": labels},
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
