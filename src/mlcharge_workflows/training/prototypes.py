"""Crystal prototypes, element roles and bond lengths for :mod:`.structures`.

Bond lengths: metal-metal from metallic radii (CN 12), metal-nonmetal from the
metal radius plus an "interstitial" radius of the nonmetal (fits NiO, FeO, NiH,
Fe4N, Cu3N, FeSi, CoSi2 within about 5 %), nonmetal-nonmetal from covalent radii
with a Schomaker-Stevenson electronegativity correction (SiC, SiO2, BN within ~5 %).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Element, Lattice, Structure

COVALENT = {"H": 0.31, "B": 0.84, "C": 0.76, "N": 0.71, "O": 0.66, "Si": 1.17}
INTERSTITIAL = {"H": 0.55, "B": 0.85, "C": 0.75, "N": 0.70, "O": 0.80, "Si": 1.15}

#: Role name -> predicate on an element.
ROLE_TESTS: dict[str, Callable[[Element], bool]] = {
    "M": lambda e: e.is_metal,  # metals (transition metals, ...)
    "MS": lambda e: e.is_metal or e.symbol == "Si",  # metals and silicide-forming Si
    "X": lambda e: not e.is_metal and not e.is_noble_gas and e.row <= 2,  # H B C N O F
    "XS": lambda e: not e.is_metal and not e.is_noble_gas and e.row <= 3,  # + Si P S Cl
    "T14": lambda e: e.group == 14 and not e.is_metal,  # diamond formers: C, Si, Ge
    "TA": lambda e: e.symbol in ("B", "C", "Si") or e.is_metal,  # zincblende cation
    "TB": lambda e: e.symbol in ("N", "C", "O", "Si", "H"),  # zincblende anion
    "L": lambda e: e.symbol in ("B", "C", "N"),  # sp2 layer formers
    "O": lambda e: e.symbol in ("O", "N", "H"),  # rutile / cristobalite anions
    "SiB": lambda e: e.symbol in ("Si", "B", "C") or e.is_metal,  # rutile cation
}


def is_metal(symbol: str) -> bool:
    """Whether ``symbol`` is treated as a metal."""
    return Element(symbol).is_metal


def radius(symbol: str, kind: str = "cov") -> float:
    """Bonding radius in Å: ``"cov"`` (metallic radius for metals), ``"int"`` (in a metal)."""
    el = Element(symbol)
    if el.is_metal:
        r = el.metallic_radius
        return float(r) if r else float(el.atomic_radius)
    table = INTERSTITIAL if kind == "int" else COVALENT
    return table.get(symbol, float(el.atomic_radius or 1.0))


def bond(a: str, b: str, radius_of=None) -> float:
    """Estimated nearest-neighbour distance (Å) between elements ``a`` and ``b``.

    Metal-metal: summed metallic radii; metal-nonmetal: metal + interstitial radius;
    nonmetals: covalent radii with a Schomaker-Stevenson correction. ``radius_of``
    (default :func:`radius`) supplies the radii, so a generator with a larger element
    table reuses the same rules.
    """
    radius_of = radius_of or radius
    ma, mb = is_metal(a), is_metal(b)
    if ma and mb:
        return radius_of(a) + radius_of(b)
    if ma or mb:
        metal, other = (a, b) if ma else (b, a)
        return radius_of(metal) + radius_of(other, "int")
    chi = abs(Element(a).X - Element(b).X)
    return radius_of(a) + radius_of(b) - 0.06 * chi


def classify(elements: list[str]) -> dict[str, list[str]]:
    """Role name -> elements of ``elements`` that can play it."""
    els = [Element(e) for e in elements]
    return {role: [e.symbol for e in els if test(e)] for role, test in ROLE_TESTS.items()}


@dataclass(frozen=True)
class Prototype:
    """A prototype: roles of its distinct species, primitive-cell size, and builder."""

    name: str
    roles: tuple[str, ...]
    n_atoms: int
    builder: Callable[..., Structure]
    distinct: bool = True  # species must differ


def _fcc(a: float) -> Lattice:
    return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


def _b_fcc(A: str) -> Structure:
    return Structure(_fcc(bond(A, A) * np.sqrt(2)), [A], [[0, 0, 0]])


def _b_bcc(A: str) -> Structure:
    a = 2 * bond(A, A) / np.sqrt(3)
    lat = Lattice([[-a / 2, a / 2, a / 2], [a / 2, -a / 2, a / 2], [a / 2, a / 2, -a / 2]])
    return Structure(lat, [A], [[0, 0, 0]])


def _b_hcp(A: str) -> Structure:
    d = bond(A, A)
    return Structure(
        Lattice.hexagonal(d, 1.633 * d), [A, A], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
    )


def _b_zincblende(A: str, B: str) -> Structure:
    return Structure(_fcc(4 * bond(A, B) / np.sqrt(3)), [A, B], [[0, 0, 0], [0.25] * 3])


def _b_wurtzite(A: str, B: str) -> Structure:
    a = bond(A, B) * np.sqrt(8 / 3)
    u = 3 / 8
    return Structure(
        Lattice.hexagonal(a, a * np.sqrt(8 / 3)),
        [A, A, B, B],
        [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, u], [2 / 3, 1 / 3, 0.5 + u]],
    )


def _b_rocksalt(A: str, B: str) -> Structure:
    return Structure(_fcc(2 * bond(A, B)), [A, B], [[0, 0, 0], [0.5] * 3])


def _b_cscl(A: str, B: str) -> Structure:
    return Structure(Lattice.cubic(2 * bond(A, B) / np.sqrt(3)), [A, B], [[0, 0, 0], [0.5] * 3])


def _b_l10(A: str, B: str) -> Structure:
    d = bond(A, B)
    return Structure(Lattice.tetragonal(d, d * np.sqrt(2)), [A, B], [[0, 0, 0], [0.5] * 3])


def _b_fluorite(A: str, B: str) -> Structure:
    return Structure(
        _fcc(4 * bond(A, B) / np.sqrt(3)), [A, B, B], [[0, 0, 0], [0.25] * 3, [0.75] * 3]
    )


def _b_antifluorite(A: str, B: str) -> Structure:
    return Structure(
        _fcc(4 * bond(A, B) / np.sqrt(3)), [B, A, A], [[0, 0, 0], [0.25] * 3, [0.75] * 3]
    )


def _b_l12(A: str, B: str) -> Structure:
    a = np.sqrt(2) * 0.5 * (bond(A, A) + bond(A, B))
    return Structure(
        Lattice.cubic(a), [B, A, A, A], [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    )


def _b_antireo3(A: str, X: str) -> Structure:
    return Structure(
        Lattice.cubic(2 * bond(A, X)),
        [X, A, A, A],
        [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
    )


def _b_hexlayer(A: str, B: str) -> Structure:
    a = np.sqrt(3) * 0.95 * bond(A, B)
    lat = Lattice.hexagonal(a, 6.6)
    if A == B:  # Bernal (graphite-like) stacking
        frac = [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25], [0, 0, 0.75], [2 / 3, 1 / 3, 0.75]]
        return Structure(lat, [A] * 4, frac)
    frac = [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.75]]
    return Structure(lat, [A, B, B, A], frac)  # AA' (h-BN-like) stacking


def _b_cdi2(M: str, X: str) -> Structure:
    a = np.sqrt(2) * bond(M, X)
    h = a / np.sqrt(6)
    c = 2 * h + 2.2
    return Structure(
        Lattice.hexagonal(a, c),
        [M, X, X],
        [[0, 0, 0], [1 / 3, 2 / 3, h / c], [2 / 3, 1 / 3, -h / c]],
    )


def _b_nias(M: str, X: str) -> Structure:
    a = bond(M, X) / np.sqrt(1 / 3 + (1.39 / 4) ** 2)
    return Structure(
        Lattice.hexagonal(a, 1.39 * a),
        [M, M, X, X],
        [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    )


def _b_perovskite(A: str, B: str, X: str) -> Structure:
    a = max(2 * bond(B, X), np.sqrt(2) * bond(A, X))
    frac = [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), [A, B, X, X, X], frac)


def _b_antiperovskite(A: str, B: str, X: str) -> Structure:
    a = max(2 * bond(B, X), np.sqrt(2) * bond(A, B))
    frac = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.5] * 3]
    return Structure(Lattice.cubic(a), [A, B, B, B, X], frac)


def _b_rutile(M: str, X: str) -> Structure:
    u = 0.305
    a = bond(M, X) / (u * np.sqrt(2))
    frac = [
        [0, 0, 0], [0.5, 0.5, 0.5],
        [u, u, 0], [1 - u, 1 - u, 0], [0.5 + u, 0.5 - u, 0.5], [0.5 - u, 0.5 + u, 0.5],
    ]  # fmt: skip
    return Structure(Lattice.tetragonal(a, 0.64 * a), [M, M, X, X, X, X], frac)


def _b_cristobalite(T: str, X: str) -> Structure:
    a = 8 * bond(T, X) / np.sqrt(3)
    e = a / 8
    cart = [[0, 0, 0], [2 * e, 2 * e, 2 * e], [e, e, e], [e, -e, -e], [-e, e, -e], [-e, -e, e]]
    return Structure(_fcc(a), [T, T, X, X, X, X], cart, coords_are_cartesian=True)


PROTOTYPES: tuple[Prototype, ...] = (
    Prototype("fcc", ("MS",), 1, _b_fcc),
    Prototype("bcc", ("M",), 1, _b_bcc),
    Prototype("hcp", ("M",), 2, _b_hcp),
    Prototype("diamond", ("T14",), 2, lambda A: _b_zincblende(A, A)),
    Prototype("zincblende", ("TA", "TB"), 2, _b_zincblende),
    Prototype("wurtzite", ("TA", "TB"), 4, _b_wurtzite),
    Prototype("rocksalt", ("M", "X"), 2, _b_rocksalt),
    Prototype("cscl", ("M", "X"), 2, _b_cscl),
    Prototype("b2", ("M", "MS"), 2, _b_cscl),
    Prototype("l10", ("M", "M"), 2, _b_l10),
    Prototype("fluorite", ("M", "XS"), 3, _b_fluorite),
    Prototype("antifluorite", ("M", "X"), 3, _b_antifluorite),
    Prototype("l12", ("M", "MS"), 4, _b_l12),
    Prototype("antireo3", ("M", "X"), 4, _b_antireo3),
    Prototype("hexlayer", ("L", "L"), 4, _b_hexlayer, distinct=False),
    Prototype("cdi2", ("M", "X"), 3, _b_cdi2),
    Prototype("nias", ("M", "XS"), 4, _b_nias),
    Prototype("perovskite", ("MS", "M", "X"), 5, _b_perovskite, distinct=False),
    Prototype("antiperovskite", ("M", "M", "X"), 5, _b_antiperovskite, distinct=False),
    Prototype("rutile", ("SiB", "O"), 6, _b_rutile),
    Prototype("cristobalite", ("T14", "O"), 6, _b_cristobalite),
)


def _choices(proto: Prototype, roles: dict[str, list[str]]) -> list[list[str]]:
    return [roles.get(r, []) for r in proto.roles]


def can_build(proto: Prototype, roles: dict[str, list[str]]) -> bool:
    """Whether ``roles`` (from :func:`classify`) can fill every role of ``proto``."""
    choices = _choices(proto, roles)
    if any(not c for c in choices):
        return False
    if proto.distinct and len(choices) > 1:
        return len(set().union(*choices)) >= len(choices) and not (
            len(choices) == 2 and choices[0] == choices[1] and len(choices[0]) < 2
        )
    return True


def build(proto: Prototype, roles: dict[str, list[str]], rng: np.random.Generator) -> Structure:
    """Build ``proto`` with elements drawn from ``roles`` (distinct species when required)."""
    choices = _choices(proto, roles)
    for _ in range(100):
        picked = [c[rng.integers(len(c))] for c in choices]
        if proto.distinct and len(set(picked)) < len(picked):
            continue
        if "H" in picked and not any(is_metal(e) for e in picked) and len(picked) > 1:
            continue  # hydrogen only in metal hydrides: no B-H or Si-H "crystals"
        return proto.builder(*picked)
    raise ValueError(f"cannot pick distinct elements for {proto.name} from {choices}")


#: Supercell matrices tried for defect cells.
SUPERCELLS = (
    np.diag([2, 1, 1]), np.diag([1, 1, 2]), np.diag([2, 2, 1]), np.diag([2, 2, 2]),
    np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 1]]),
    np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]]),
    np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 2]]),
)  # fmt: skip


def make_defect_supercell(
    structure: Structure, roles: dict[str, list[str]], rng: np.random.Generator, max_atoms: int
) -> tuple[Structure, dict] | None:
    """A supercell (4..max_atoms atoms) of ``structure`` with substitutions and/or a vacancy.

    Returns None when no supercell size fits. Metals are substituted by metals and
    nonmetals by nonmetals of ``roles``.
    """
    n0 = len(structure)
    sizes = [(m, n0 * round(abs(np.linalg.det(m)))) for m in SUPERCELLS]
    ok = [(m, n) for m, n in sizes if 4 <= n <= max_atoms]
    if not ok:
        return None
    w = np.array([1.0 / n for _, n in ok])
    m, n = ok[rng.choice(len(ok), p=w / w.sum())]
    sc = structure * m
    metals = roles.get("M", [])
    nonmetals = sorted(set(roles.get("XS", [])) | set(roles.get("T14", [])))
    info: dict = {"supercell": m.tolist(), "substitutions": [], "vacancy": None}
    n_sub = int(rng.integers(0, 3))
    vacancy = rng.random() < 0.4 or n_sub == 0
    for i in rng.choice(len(sc), size=min(n_sub, len(sc)), replace=False):
        old = sc[int(i)].specie.symbol
        pool = [e for e in (metals if is_metal(old) else nonmetals) if e != old]
        if pool:
            new = pool[rng.integers(len(pool))]
            sc.replace(int(i), new)
            info["substitutions"].append([int(i), old, new])
    substituted = {s[0] for s in info["substitutions"]}
    free = [i for i in range(len(sc)) if i not in substituted]
    if vacancy and len(sc) > 3 and free:
        i = free[int(rng.integers(len(free)))]
        info["vacancy"] = [i, sc[i].specie.symbol]
        sc.remove_sites([i])
    if not info["substitutions"] and info["vacancy"] is None:
        return None
    return sc, info
