"""Structure types for generator version 2 (:mod:`.realistic`): the AFLOW prototype library
that ships with pymatgen, its sites' roles, charge balance and bond lengths.

Every AFLOW prototype (``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``) is reduced
to its primitive cell; its example compound's species get a role from the example's own
oxidation states (pymatgen's guess): ``anion``, ``cation`` (a metal), ``ncation`` (a
nonmetal cation: Si in SiO2, P in BPO4) or, without a guess, ``metal`` / ``anion`` by
whether the element is a metal (Fe3C: Fe metal, C anion). Molecular crystals (N2, CO,
NH3, SiF4, ...) are left out. Decorating a prototype puts supported elements of the
same role on its sites; the cell is then scaled so that the closest pair, relative to its
expected bond, sits at that bond.

Bonds: a metal cation and an anion with known oxidation states -> sum of Shannon radii
(pymatgen ``Species.ionic_radius``: MgO 2.12 Å, NaCl 2.83, LiF 2.09, TiO2 2.01, FeO 2.18);
otherwise the version-1 bond model (:func:`.prototypes.bond`), with covalent and
interstitial radii added for F, P, S and Cl.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Species, Structure

from mlcharge_workflows.training import prototypes as P

#: Oxidation state of each anion former as an anion.
ANION_STATES = {"O": -2, "N": -3, "F": -1, "Cl": -1, "S": -2, "H": -1, "P": -3, "C": -4,
                "B": -3, "Si": -4}
#: Nonmetals that can be cations (SiO2, BPO4, CaCO3-like sites), with their states.
NCATION_STATES = {"B": (3,), "C": (4,), "N": (5, 3), "Si": (4,), "P": (5, 3), "S": (6, 4)}
COVALENT = {**P.COVALENT, "F": 0.57, "P": 1.07, "S": 1.05, "Cl": 1.02}
INTERSTITIAL = {**P.INTERSTITIAL, "F": 0.80, "P": 1.10, "S": 1.10, "Cl": 1.15}
#: Example formulas of molecular crystals (and molecular ions) left out of the library.
MOLECULAR = {"CO", "N2", "O2", "H3N", "NH3", "CH", "HC", "CNCl", "SiF4", "I", "H3S", "KCSN",
             "KClO3", "Br2", "HgBr2", "PI2", "BiI3", "Se", "Po"}


def is_metal(symbol: str) -> bool:
    """Metals as pymatgen has them (Li, Mg, Al, Zn, Ti, Fe, ... ; not B, Si)."""
    return Element(symbol).is_metal


def is_transition_metal(symbol: str) -> bool:
    """Open-d-shell metals (Zn, Cd, Hg count as main group here)."""
    e = Element(symbol)
    return e.is_transition_metal and symbol not in ("Zn", "Cd", "Hg")


def cation_states(symbol: str) -> tuple[int, ...]:
    """Positive oxidation states of a metal (ICSD), or a nonmetal cation's."""
    if symbol in NCATION_STATES:
        return NCATION_STATES[symbol]
    states = tuple(s for s in Element(symbol).icsd_oxidation_states if s > 0)
    return states or tuple(s for s in Element(symbol).common_oxidation_states if s > 0) or (2,)


def balance(counts: dict[str, float], roles: dict[str, str]) -> dict[str, int] | None:
    """Oxidation states that make ``counts`` (element -> amount) neutral, or None.

    Anions take :data:`ANION_STATES`; cations each one of :func:`cation_states`; metals in a
    ``metal`` role count as 0. The first neutral choice in the order of the states is kept.
    """
    els = sorted(counts)
    options = []
    for el in els:
        role = roles[el]
        if role == "anion":
            options.append((ANION_STATES.get(el, -2),))
        elif role in ("cation", "ncation"):
            options.append(cation_states(el))
        else:
            options.append((0,))
    for combo in itertools.product(*options):
        if abs(sum(counts[e] * q for e, q in zip(els, combo))) < 1e-6:
            if all(q == 0 for q in combo):
                return None
            return dict(zip(els, combo))
    return None


def radius(symbol: str, kind: str = "cov") -> float:
    """Version-1 radii extended to F, P, S, Cl."""
    if not is_metal(symbol):
        table = INTERSTITIAL if kind == "int" else COVALENT
        if symbol in table:
            return table[symbol]
    return P.radius(symbol, kind)


def bond(a: str, b: str, oxi: dict[str, int] | None = None) -> float:
    """Expected nearest-neighbour distance (Å) of elements ``a`` and ``b``."""
    oxi = oxi or {}
    qa, qb = oxi.get(a, 0), oxi.get(b, 0)
    if qa * qb < 0 and (is_metal(a) or is_metal(b)):
        try:
            with warnings.catch_warnings():  # "no default ionic radius for Mn4+, using ls data"
                warnings.simplefilter("ignore", UserWarning)
                ra = Species(a, qa).ionic_radius
                rb = Species(b, qb).ionic_radius
        except (ValueError, KeyError):
            ra = rb = None
        if ra and rb:
            return float(ra) + float(rb)
    return P.bond(a, b, radius_of=radius)


@dataclass(frozen=True)
class CrystalType:
    """One prototype: primitive example cell, AFLOW label and mineral, roles per species."""

    label: str
    mineral: str
    structure: Structure
    roles: tuple[tuple[str, str], ...]  # (example element, role)

    @property
    def n_atoms(self) -> int:
        return len(self.structure)

    @property
    def role_of(self) -> dict[str, str]:
        return dict(self.roles)

    @property
    def has_anion(self) -> bool:
        return any(r == "anion" for _, r in self.roles)


def _library_path() -> Path:
    """pymatgen's AFLOW file, found without importing ``pymatgen.analysis.prototypes`` (its
    structure matcher imports take seconds of CPU)."""
    import importlib.util

    spec = importlib.util.find_spec("pymatgen.analysis")
    return Path(spec.submodule_search_locations[0]) / "prototypes" / "aflow_prototypes.json.gz"


@lru_cache(maxsize=1)
def library_digest() -> str:
    """sha256 (12 hex) of pymatgen's AFLOW prototype file: a resumed generation checks it."""
    return hashlib.sha256(_library_path().read_bytes()).hexdigest()[:12]


def _roles(example: Structure) -> tuple[tuple[str, str], ...] | None:
    comp = example.composition
    els = sorted(e.symbol for e in comp)
    try:
        guesses = comp.oxi_state_guesses(max_sites=-50)
    except ValueError:
        guesses = ()
    guess = guesses[0] if guesses else None
    roles = []
    for el in els:
        q = guess.get(el, 0) if guess else 0
        if q < 0:
            roles.append((el, "anion"))
        elif q > 0:
            roles.append((el, "cation" if is_metal(el) else "ncation"))
        else:
            roles.append((el, "metal" if is_metal(el) else "anion"))
    if not any(r in ("metal", "cation") for _, r in roles) and len(els) > 1 and not any(
            r == "ncation" for _, r in roles):
        return None  # only nonmetals and no cation: a molecular crystal
    return tuple(roles)


@lru_cache(maxsize=4)
def aflow_types(max_atoms: int) -> tuple[CrystalType, ...]:
    """The AFLOW prototypes whose primitive cell has at most ``max_atoms`` atoms, in library order."""
    with gzip.open(_library_path(), "rt") as fh:  # plain JSON: no StructureNL (and no BibTeX
        library = json.load(fh)                    # parsing of its references, ~60 s of CPU)
    out = []
    for entry in library:
        tags = entry["tags"]
        s = Structure.from_dict(entry["snl"])
        if not s.is_ordered or s.composition.reduced_formula in MOLECULAR:
            continue
        if any(Element(e.symbol).is_noble_gas for e in s.composition):
            continue
        s = s.get_primitive_structure()
        if len(s) > max_atoms:
            continue
        roles = _roles(s)
        if roles is None:
            continue
        s.remove_oxidation_states()
        out.append(CrystalType(tags["aflow"], tags.get("mineral") or "", s, roles))
    return tuple(out)


def pair_ratios(structure: Structure, oxi: dict[str, int] | None, ionic: bool) -> np.ndarray:
    """``bond / distance`` for every pair (minimum image) and every atom's shortest image.

    For an ionic decoration (``ionic``) pairs of like charge are left out: they do not set
    the lattice constant (Na-Na in Na2O is shorter than in Na metal).
    """
    syms = [site.specie.symbol for site in structure]
    oxi = oxi or {}
    dm = structure.distance_matrix
    out = []
    for i, j in itertools.combinations(range(len(structure)), 2):
        if ionic and oxi.get(syms[i], 0) * oxi.get(syms[j], 0) > 0:
            continue
        out.append(bond(syms[i], syms[j], oxi) / max(dm[i, j], 1e-6))
    shortest = min(np.linalg.norm(v) for v in _lattice_shorts(structure.lattice.matrix))
    for el in set(syms):
        if not (ionic and oxi.get(el, 0) != 0):
            out.append(bond(el, el, oxi) / shortest)
    return np.array(out) if out else np.array([1.0])


def _lattice_shorts(m: np.ndarray) -> list[np.ndarray]:
    return [i * m[0] + j * m[1] + k * m[2]
            for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]


def scale_to_bonds(structure: Structure, oxi: dict[str, int] | None, ionic: bool) -> None:
    """Scale the cell in place so that the largest ``bond / distance`` ratio is 1."""
    s = float(pair_ratios(structure, oxi, ionic).max())
    structure.scale_lattice(structure.volume * s**3)


def distances_ok(structure: Structure, oxi: dict[str, int] | None, factor: float = 0.75,
                 like_factor: float = 0.6, floor: float = 0.6) -> bool:
    """Every pair at least ``factor`` x its expected bond (ions of like charge: ``like_factor``
    x the bond of the neutral elements) and ``floor`` Å apart, periodic images included."""
    syms = [site.specie.symbol for site in structure]
    oxi = oxi or {}

    def need(a: str, b: str) -> float:
        qa, qb = oxi.get(a, 0), oxi.get(b, 0)
        if qa * qb > 0:
            return max(floor, like_factor * bond(a, b))
        return max(floor, factor * bond(a, b, oxi))

    dm = structure.distance_matrix
    for i, j in itertools.combinations(range(len(structure)), 2):
        if dm[i, j] < need(syms[i], syms[j]):
            return False
    shortest = min(np.linalg.norm(v) for v in _lattice_shorts(structure.lattice.matrix))
    return all(shortest >= need(e, e) for e in set(syms))


def isolated_atoms(structure: Structure, oxi: dict[str, int] | None, ionic: bool,
                   limit: float = 1.35) -> int:
    """Atoms whose nearest bonding partner (opposite charge when ``ionic``) is farther than
    ``limit`` x the expected bond: a prototype scaled up by one short pair leaves such atoms."""
    syms = [site.specie.symbol for site in structure]
    oxi = oxi or {}
    nbrs = structure.get_all_neighbors(6.0)
    count = 0
    for i, neigh in enumerate(nbrs):
        best = np.inf
        for nb in neigh:
            b = nb.specie.symbol
            if ionic and oxi.get(syms[i], 0) * oxi.get(b, 0) >= 0:
                continue
            best = min(best, nb.nn_distance / bond(syms[i], b, oxi if ionic else None))
        count += best > limit
    return count
