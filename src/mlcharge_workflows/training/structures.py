"""Seeded, deterministic generator of small periodic structures for density datasets.

Structure ``i`` of seed ``s`` depends only on ``(s, i)`` and the element list, so a
dataset of 1000 structures starts with the same 20 as a sample of 20, and a resumed
generation re-creates exactly the structures it planned.

Each structure is a prototype (diamond, zincblende, wurtzite, rocksalt, CsCl/B2,
fluorite, anti-fluorite, perovskite, anti-perovskite, anti-ReO3, L1_2, L1_0, fcc,
bcc, hcp, layered hexagonal, CdI2, rutile, NiAs, cristobalite) decorated with the
supported elements, optionally expanded to a small supercell with substitutions and a
vacancy, then strained (about ±6 %) and rattled (0.02-0.1 Å). Nearest-neighbour
distances come from tabulated bonding radii; structures with atoms closer than
``min_distance_factor`` times the summed radii are rejected and redrawn.

Examples
--------
>>> from mlcharge_workflows.training.structures import generate_structures
>>> [g.id for g in generate_structures(2, seed=0, elements=["Si", "C", "Ni"])]  # doctest: +SKIP
['zincblende-SiC-0-00000', 'fcc-Ni-0-00001']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from mlcharge_workflows.training import prototypes as P
from mlcharge_workflows.training.perturb import (  # noqa: F401 - old import paths
    Perturbation,
    rattle_structure,
    strain_structure,
)

#: Initial magnetic moments (μB) for spin-polarised starts.
MAGNETIC_MOMENTS = {"Fe": 3.0, "Co": 2.0, "Ni": 1.0, "Mn": 3.0, "Cr": 2.0}

#: Elements of generator version 1 (its default; the QE engine's registry when it was made).
DEFAULT_ELEMENTS = ("H", "B", "C", "N", "O", "Si", "Fe", "Co", "Ni", "Cu")
#: Strain and rattle of version 1 (:class:`~.perturb.Perturbation`'s defaults).
PERTURBATION = Perturbation()


@dataclass
class GeneratedStructure:
    """One generated structure.

    Attributes
    ----------
    id
        ``{prototype}-{reduced formula}-{seed}-{index:05d}``; stable for a given seed,
        index and element list.
    structure
        The cell (Å); site property ``magmom`` holds initial moments when magnetic.
    family
        Composition family for splits: the chemical system, e.g. ``"Fe-N-O"``.
    prototype
        Prototype name (supercells: ``sc-<base prototype>``).
    info
        How it was made: strain, rattle amplitude, substitutions, vacancy, supercell.
    """

    id: str
    structure: Structure
    family: str
    prototype: str
    info: dict = field(default_factory=dict)

    @property
    def magnetic(self) -> bool:
        """Whether any site carries a nonzero initial moment."""
        return any(abs(m) > 0 for m in self.structure.site_properties.get("magmom", []))


def default_elements() -> list[str]:
    """Supported elements of the QE engine (falls back to :data:`DEFAULT_ELEMENTS`)."""
    try:
        from mlcharge_workflows.pseudo import supported_elements
    except ImportError:
        return list(DEFAULT_ELEMENTS)
    return sorted(str(e) for e in supported_elements())


def family_of(structure: Structure) -> str:
    """Composition family key: the sorted chemical system (``"Fe-O"``)."""
    return structure.composition.chemical_system


def formula_key(structure: Structure) -> str:
    """Reduced formula without groupings, filesystem-safe (``Fe5Cu2Si8``, ``NiO``)."""
    formula = structure.composition.reduced_composition.formula
    return re.sub(r"(?<=[A-Za-z])1(?![0-9])", "", formula).replace(" ", "")


def min_distance_ok(structure: Structure, factor: float = 0.7, floor: float = 0.5) -> bool:
    """Whether every pair of atoms is at least ``factor * (r_A + r_B)`` and ``floor`` Å apart."""
    if len(structure) == 1:
        a = structure.lattice.abc
        return min(a) >= max(floor, factor * 2 * P.radius(structure[0].specie.symbol, "metal"))
    dm = structure.distance_matrix.copy()
    np.fill_diagonal(dm, np.inf)
    syms = [s.specie.symbol for s in structure]
    r = np.array([P.radius(s, "cov") for s in syms])
    need = np.maximum(floor, factor * (r[:, None] + r[None, :]))
    # an atom and its own periodic image: the shortest lattice vector
    self_img = min(np.linalg.norm(v) for v in _short_vectors(structure.lattice))
    return bool(np.all(dm >= need) and self_img >= max(floor, factor * 2 * r.max()))


def _short_vectors(lattice: Lattice) -> list[np.ndarray]:
    m = lattice.matrix
    out = []
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            for k in (-1, 0, 1):
                if (i, j, k) != (0, 0, 0):
                    out.append(i * m[0] + j * m[1] + k * m[2])
    return out


def _add_magmoms(structure: Structure) -> None:
    moms = [MAGNETIC_MOMENTS.get(s.specie.symbol, 0.0) for s in structure]
    if any(moms):
        structure.add_site_property("magmom", moms)


def first_acceptable(seed: int, index: int, attempts: int, draw) -> GeneratedStructure:
    """The first accepted draw of structure ``index``: attempt ``k`` uses the generator
    ``default_rng([seed, index, k])``, so structure ``index`` depends only on ``(seed, index)``.

    ``draw(rng)`` returns ``(structure, prototype name, info)`` or None (rejected).
    """
    for attempt in range(attempts):
        rng = np.random.default_rng([seed, int(index), attempt])
        got = draw(rng)
        if got is not None:
            structure, proto, info = got
            info["attempt"] = attempt
            sid = f"{proto}-{formula_key(structure)}-{seed}-{index:05d}"
            return GeneratedStructure(sid, structure, family_of(structure), proto, info)
    raise RuntimeError(f"no acceptable structure for index {index} after {attempts} attempts")


def generate_range(generator, n: int, start: int = 0) -> list[GeneratedStructure]:
    """Structures ``start .. start + n - 1`` of ``generator`` (called with an index)."""
    if n < 0:
        raise ValueError(f"number of structures must be >= 0, got {n}")
    return [generator(i) for i in range(start, start + n)]


class StructureGenerator:
    """Deterministic structure generator.

    Parameters
    ----------
    seed
        Base seed; structure ``i`` uses ``numpy.random.default_rng([seed, i, attempt])``.
    elements
        Element symbols (default: :data:`DEFAULT_ELEMENTS`, the ten of version 1; the
        realistic generator, :mod:`.realistic`, defaults to every supported element).
    max_atoms
        Largest cell (supercells are drawn up to this size).
    small_fraction
        Fraction of structures drawn from primitive prototypes of <= 4 atoms.
    min_distance_factor
        Draws with two atoms closer than this times their summed radii are redrawn.
    **perturbation
        ``strain``, ``rattle``, ``rattle_probability``, ``strain_probability``,
        ``shear_probability``: see :class:`~.perturb.Perturbation` (defaults:
        :data:`PERTURBATION`).
    """

    def __init__(
        self,
        seed: int = 0,
        elements: Sequence[str] | None = None,
        max_atoms: int = 16,
        small_fraction: float = 0.6,
        *,
        min_distance_factor: float = 0.7,
        **perturbation: Any,
    ) -> None:
        # version 1 is frozen: its default is the ten elements it was made with, so the
        # recorded seed-0 command makes the same structures as the supported set grows
        elements = list(elements) if elements is not None else list(DEFAULT_ELEMENTS)
        bad = [e for e in elements if not Element.is_valid_symbol(e)]
        if bad:
            raise ValueError(f"not element symbols: {bad}")
        if not elements:
            raise ValueError("no elements to build structures from")
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        if not 0.0 <= small_fraction <= 1.0:
            raise ValueError(f"small_fraction must be in [0, 1], got {small_fraction}")
        self.seed = int(seed)
        self.elements = sorted(set(elements), key=lambda e: Element(e).Z)
        self.max_atoms = int(max_atoms)
        self.small_fraction = float(small_fraction)
        self.perturbation = PERTURBATION.with_options(perturbation)
        self.min_distance_factor = float(min_distance_factor)
        self.roles = P.classify(self.elements)
        self.prototypes = [p for p in P.PROTOTYPES if P.can_build(p, self.roles)]
        if not self.prototypes:
            raise ValueError(f"no prototype can be built from elements {self.elements}")

    def settings(self) -> dict:
        """JSON-serialisable parameters (recorded in the dataset manifest)."""
        return {
            "seed": self.seed,
            "elements": self.elements,
            "max_atoms": self.max_atoms,
            "small_fraction": self.small_fraction,
            **self.perturbation.settings(),
            "min_distance_factor": self.min_distance_factor,
        }

    def __call__(self, index: int) -> GeneratedStructure:
        """Structure number ``index`` (deterministic)."""
        return first_acceptable(self.seed, index, 200, self._draw)

    def generate(self, n: int, start: int = 0) -> list[GeneratedStructure]:
        """Structures ``start .. start + n - 1``."""
        return generate_range(self, n, start)

    # ------------------------------------------------------------------ internals
    def _draw(self, rng: np.random.Generator) -> tuple[Structure, str, dict] | None:
        try:
            return self._draw_unchecked(rng)
        except ValueError:  # no acceptable element combination on this draw
            return None

    def _draw_unchecked(self, rng: np.random.Generator) -> tuple[Structure, str, dict] | None:
        small = [p for p in self.prototypes if p.n_atoms <= min(4, self.max_atoms)]
        large = [p for p in self.prototypes if 4 < p.n_atoms <= self.max_atoms]
        want_small = rng.random() < self.small_fraction or self.max_atoms < 4
        info: dict = {}
        if want_small and small:
            proto = small[rng.integers(len(small))]
            structure = P.build(proto, self.roles, rng)
            name = proto.name
        else:
            use_super = not large or rng.random() < 0.6
            if use_super and small:
                base = small[rng.integers(len(small))]
                structure = P.build(base, self.roles, rng)
                got = P.make_defect_supercell(structure, self.roles, rng, self.max_atoms)
                if got is None:
                    return None
                structure, info = got
                name = f"sc-{base.name}"
            elif large:
                proto = large[rng.integers(len(large))]
                structure = P.build(proto, self.roles, rng)
                name = proto.name
            else:
                return None
        self.perturbation.apply(structure, rng, info)
        if not min_distance_ok(structure, self.min_distance_factor):
            return None
        symbols = {e.symbol for e in structure.composition}
        if "H" in symbols and not any(P.is_metal(e) for e in symbols):
            return None  # hydrogen only in metal hydrides
        _add_magmoms(structure)
        return structure, name, info


def generate_structures(
    n: int, seed: int = 0, elements: Sequence[str] | None = None, **kwargs
) -> list[GeneratedStructure]:
    """``n`` structures from :class:`StructureGenerator` (``kwargs`` are its options)."""
    return StructureGenerator(seed, elements, **kwargs).generate(n)
