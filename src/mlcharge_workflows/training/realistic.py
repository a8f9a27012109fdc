"""Generator version 2: crystals that look like the materials users run.

Structure ``i`` of seed ``s`` depends only on ``(s, i)`` and the settings (recorded in the
manifest, with a digest of pymatgen's AFLOW library), like version 1
(:mod:`.structures`), which stays unchanged for the datasets made with it.

A draw picks a kind of cell, then a chemistry class and a structure type:

* **bulk** (default 87 %): an AFLOW prototype (:mod:`.crystal_types`, primitive cells of
  up to ``max_atoms``, drawn with weight ``(4 / max(n, 4)) ** size_exponent``), decorated
  for the class: oxide, nitride, carbide, boride, silicide,
  hydride, halide (F, Cl), sulfide / phosphide, intermetallic or element. The
  prototype's anion sites take the class's anion, its cation and metal sites supported
  metals (nonmetal cations: B, C, N, Si, P, S). Oxides, halides and compounds of
  main-group metals must be charge-balanced; carbides, borides, silicides and
  transition-metal nitrides, hydrides, sulfides and phosphides (metallic) need not be.
  Binary ionic prototypes are also used inverted (anti-fluorite, anti-ReO3, ...).
* **defect supercells** (default 8 %): a bulk cell of up to 8 atoms repeated to
  ``supercell_atoms`` (20-32) atoms, with 1-3 defects: vacancies, substitutions (metal by
  metal, anion by anion) and interstitials of H, B, C, N or O at the emptiest point.
* **slabs** (default 5 %): (100), (110) or (111) slabs of a small bulk cell, at least 5 Å
  thick, with 9-12 Å of vacuum, of up to ``max_atoms`` atoms.

The cell is scaled to tabulated bonds (:func:`.crystal_types.scale_to_bonds`), strained
and rattled as in version 1 (:class:`.perturb.Perturbation`, slightly smaller defaults;
slabs are only rattled), and rejected if atoms come too close.

**Magnetism.** A share ``magnetic_fraction`` of the draws puts at least one of the
``magnetic_elements`` (those the QE protocol runs spin-polarised) on a metal site; the
others use non-magnetic metals only. Of the magnetic cells with two or more magnetic atoms
(a cell with one is doubled when it fits), ``afm_fraction`` get an antiferromagnetic start:
moments alternate between lattice planes (the first direction, in a seeded order, that
splits every magnetic element evenly), else half of each element's atoms point down.
The ``magmom`` site property carries the signed moments; the QE protocol turns both signs
of one element into two species kinds (``engines.qe.sets.antiparallel_signs``).

Ids: ``{prototype}-{formula}-{seed}-{index:05d}`` with the AFLOW label as prototype
(``sc-`` for supercells, ``slab<hkl>-`` for slabs); family = chemical system.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from mlcharge_workflows.training import crystal_types as T
from mlcharge_workflows.training.perturb import Perturbation
from mlcharge_workflows.training.structures import (
    MAGNETIC_MOMENTS,
    GeneratedStructure,
    default_elements,
    first_acceptable,
    generate_range,
)

GENERATOR_VERSION = 2

#: Chemistry classes: (weight, anions).
CLASSES: dict[str, tuple[float, tuple[str, ...]]] = {
    "oxide": (0.22, ("O",)),
    "nitride": (0.10, ("N",)),
    "carbide": (0.08, ("C",)),
    "boride": (0.06, ("B",)),
    "silicide": (0.07, ("Si",)),
    "hydride": (0.08, ("H",)),
    "halide": (0.08, ("F", "Cl")),
    "sulfide_phosphide": (0.07, ("S", "P")),
    "intermetallic": (0.18, ()),
    "element": (0.06, ()),
}
#: Classes whose compounds must be charge-balanced whatever the metal.
ALWAYS_BALANCED = ("oxide", "halide")
INTERSTITIALS = ("H", "B", "C", "N", "O")
SUPERCELLS = [np.diag(d) for d in ((2, 2, 2), (3, 2, 2), (2, 2, 1), (3, 2, 1), (3, 3, 1), (2, 1, 1),
                                   (3, 3, 2), (4, 2, 2), (3, 1, 1), (4, 2, 1), (4, 4, 2))]
SLAB_MILLER = ((1, 0, 0), (1, 1, 0), (1, 1, 1))
#: Strain and rattle of version 2 (slabs are only rattled).
PERTURBATION = Perturbation(strain=0.05, rattle=(0.02, 0.08), strain_probability=0.8)


def default_magnetic_elements() -> list[str]:
    """Elements the default QE protocol runs spin-polarised (with a tabulated moment)."""
    try:
        from mlcharge_workflows.engines.qe.sets import QEProtocol

        spin = QEProtocol().starting_magnetization
    except ImportError:
        spin = {"Fe": 0.4, "Co": 0.35, "Ni": 0.3}
    return sorted(e for e in spin if e in MAGNETIC_MOMENTS)


class RealisticGenerator:
    """Deterministic generator of realistic crystals (version 2).

    Parameters
    ----------
    seed
        Structure ``i`` uses ``numpy.random.default_rng([seed, i, attempt])``.
    elements
        Elements to decorate with (default: every element the QE engine supports).
    max_atoms
        Largest bulk and slab cell.
    supercell_atoms
        ``(min, max)`` atoms of the defect supercells.
    supercell_fraction, slab_fraction
        Shares of defect supercells and slabs (the rest are bulk cells).
    size_exponent
        A prototype of ``n`` atoms is drawn with weight ``(4 / max(n, 4)) ** size_exponent``
        (pw.x's cost grows with the cell: 8 atoms 0.25, 16 atoms 0.06).
    magnetic_fraction, afm_fraction
        Share of draws with a magnetic element; share of the magnetic cells (with two or
        more magnetic atoms) started antiferromagnetic.
    magnetic_elements
        Elements that carry initial moments (default: the QE protocol's spin-polarised ones).
    version, library
        Recorded by :meth:`settings`: must be 2, and the AFLOW library digest of this
        pymatgen (another library makes other structures).
    **perturbation
        ``strain``, ``rattle``, ``rattle_probability``, ``strain_probability``,
        ``shear_probability``: see :class:`~.perturb.Perturbation` (defaults:
        :data:`PERTURBATION`).
    """

    version = GENERATOR_VERSION

    def __init__(
        self,
        seed: int = 0,
        elements: Sequence[str] | None = None,
        max_atoms: int = 16,
        supercell_atoms: tuple[int, int] = (20, 32),
        supercell_fraction: float = 0.08,
        slab_fraction: float = 0.05,
        size_exponent: float = 2.0,
        magnetic_fraction: float = 0.35,
        afm_fraction: float = 0.35,
        magnetic_elements: Sequence[str] | None = None,
        *,
        version: int = GENERATOR_VERSION,
        library: str | None = None,
        **perturbation: Any,
    ) -> None:
        if version != GENERATOR_VERSION:
            raise ValueError(f"RealisticGenerator is generator version {GENERATOR_VERSION}, "
                             f"not {version}")
        elements = list(elements) if elements is not None else default_elements()
        bad = [e for e in elements if not Element.is_valid_symbol(e)]
        if bad or not elements:
            raise ValueError(f"need element symbols, got {list(elements)}")
        if max_atoms < 2:
            raise ValueError(f"max_atoms must be >= 2, got {max_atoms}")
        lo, hi = (int(x) for x in supercell_atoms)
        if not 2 <= lo <= hi:
            raise ValueError(f"supercell_atoms must be (min, max) with 2 <= min <= max, got "
                             f"{supercell_atoms}")
        for name, f in (("supercell_fraction", supercell_fraction), ("slab_fraction", slab_fraction),
                        ("magnetic_fraction", magnetic_fraction), ("afm_fraction", afm_fraction)):
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {f}")
        if supercell_fraction + slab_fraction > 1.0:
            raise ValueError("supercell_fraction + slab_fraction must be <= 1")
        digest = T.library_digest()
        if library is not None and library != digest:
            raise ValueError(f"pymatgen's AFLOW prototype library differs from the recorded one "
                             f"({digest} != {library}): this pymatgen makes other structures")
        self.seed = int(seed)
        self.elements = sorted(set(elements), key=lambda e: Element(e).Z)
        self.max_atoms = int(max_atoms)
        self.supercell_atoms = (lo, hi)
        self.supercell_fraction = float(supercell_fraction)
        self.slab_fraction = float(slab_fraction)
        self.size_exponent = float(size_exponent)
        self.magnetic_fraction = float(magnetic_fraction)
        self.afm_fraction = float(afm_fraction)
        mags = default_magnetic_elements() if magnetic_elements is None else list(magnetic_elements)
        self.magnetic_elements = sorted(e for e in mags if e in self.elements)
        self.perturbation = PERTURBATION.with_options(perturbation)
        self.library = digest
        self.metals = [e for e in self.elements if T.is_metal(e)]
        self.anions = [e for e in self.elements if e in T.ANION_STATES]
        self.ncations = [e for e in self.elements if e in T.NCATION_STATES]
        self.classes = {name: (w, tuple(a for a in anions if a in self.anions))
                        for name, (w, anions) in CLASSES.items()
                        if not anions or any(a in self.anions for a in anions)}
        if not self.metals:
            raise ValueError(f"no metals among {self.elements}: version 2 decorates metal sites")
        self.types = T.aflow_types(self.max_atoms)
        self._small = [t for t in self.types if t.n_atoms <= 8]

    def settings(self) -> dict:
        """JSON-serialisable parameters (recorded in the manifest; a resume must match)."""
        return {
            "version": GENERATOR_VERSION, "seed": self.seed, "elements": self.elements,
            "max_atoms": self.max_atoms, "supercell_atoms": list(self.supercell_atoms),
            "supercell_fraction": self.supercell_fraction, "slab_fraction": self.slab_fraction,
            "size_exponent": self.size_exponent, "magnetic_fraction": self.magnetic_fraction,
            "afm_fraction": self.afm_fraction, "magnetic_elements": self.magnetic_elements,
            **self.perturbation.settings(), "library": self.library,
        }  # fmt: skip

    def __call__(self, index: int) -> GeneratedStructure:
        """Structure number ``index`` (deterministic)."""
        # the kind of cell and whether it is magnetic are drawn once per index, so that
        # redraws (rejected attempts) do not bias the shares towards easy combinations
        pre = np.random.default_rng([self.seed, int(index), 1_000_000])
        u, v = pre.random(2)
        kind = "supercell" if u < self.supercell_fraction else (
            "slab" if u < self.supercell_fraction + self.slab_fraction else "bulk")
        # large cells are magnetic half as often: a spin-polarised 30-atom cell costs most
        share = self.magnetic_fraction * (0.5 if kind == "supercell" else 1.0)
        magnetic = bool(self.magnetic_elements) and v < share
        return first_acceptable(self.seed, index, 300,
                                lambda rng: self._draw(rng, kind, magnetic))

    def generate(self, n: int, start: int = 0) -> list[GeneratedStructure]:
        """Structures ``start .. start + n - 1``."""
        return generate_range(self, n, start)

    # ------------------------------------------------------------------ draws
    def _draw(self, rng: np.random.Generator, kind: str, magnetic: bool):
        if kind == "bulk":
            got = self._bulk(rng, magnetic, self.types)
        elif kind == "supercell":
            got = self._supercell(rng, magnetic)
        else:
            got = self._slab(rng, magnetic)
        if got is None:
            return None
        structure, proto, info, oxi = got
        info["kind"] = kind
        self.perturbation.apply(structure, rng, info, strain=kind != "slab")
        if not T.distances_ok(structure, oxi):
            return None
        structure = self._magnetize(structure, rng, info)
        if structure is None:
            return None
        if magnetic != (info["magnetic_order"] != "none"):
            return None  # a substitution removed the magnetic atom (or added one)
        return structure, proto, info

    def _pick_type(self, rng, pool, anion_class: bool) -> T.CrystalType | None:
        pool = [t for t in pool if t.has_anion == anion_class]
        if not pool:
            return None
        w = np.array([(4.0 / max(t.n_atoms, 4)) ** self.size_exponent for t in pool])
        return pool[rng.choice(len(pool), p=w / w.sum())]

    def _bulk(self, rng, magnetic: bool, pool):
        names = list(self.classes)
        w = np.array([self.classes[c][0] for c in names])
        cls = names[rng.choice(len(names), p=w / w.sum())]
        anions = self.classes[cls][1]
        ctype = self._pick_type(rng, pool, bool(anions))
        if ctype is None:
            return None
        if cls == "element" and len(ctype.roles) != 1:
            return None
        if cls == "intermetallic" and len(ctype.roles) < 2:
            return None
        roles = ctype.role_of
        invert = bool(anions) and len(roles) == 2 and rng.random() < 0.3 and set(
            roles.values()) == {"anion", "cation"}
        if invert:  # anti-structure: cations on the anion sites and vice versa
            roles = {el: ("cation" if r == "anion" else "anion") for el, r in roles.items()}
        pick = self._decorate(rng, roles, anions, magnetic, cls)
        if pick is None:
            return None
        mapping, new_roles = pick
        s = ctype.structure.copy()
        s.replace_species({Element(k): Element(v) for k, v in mapping.items()})
        counts = {el.symbol: amt for el, amt in s.composition.items()}
        oxi = T.balance(counts, new_roles)
        transition = any(T.is_transition_metal(e) for e in counts)
        needs_balance = cls in ALWAYS_BALANCED or (bool(anions) and not transition
                                                   and cls not in ("carbide", "boride", "silicide"))
        if needs_balance and oxi is None:
            return None
        ionic = oxi is not None and needs_balance
        T.scale_to_bonds(s, oxi if ionic else None, ionic)
        if not 4.0 <= s.volume / len(s) <= 40.0 or T.isolated_atoms(s, oxi, ionic):
            return None
        info = {"source": "aflow", "aflow": ctype.label, "mineral": ctype.mineral, "class": cls,
                "inverted": invert, "decoration": mapping,
                "oxidation_states": oxi if needs_balance else None}
        return s, ctype.label, info, oxi if ionic else None

    def _decorate(self, rng, roles: dict[str, str], anions: tuple[str, ...], magnetic: bool,
                  cls: str):
        """Example element -> new element, and the new elements' roles; None if impossible."""
        nonmag = [m for m in self.metals if m not in self.magnetic_elements]
        mapping: dict[str, str] = {}
        new_roles: dict[str, str] = {}
        metal_sites = [el for el, r in roles.items() if r in ("cation", "metal")]
        if magnetic and not metal_sites:
            return None
        need_mag = magnetic
        for el in sorted(roles, key=lambda e: (roles[e] != "anion", e)):
            r = roles[el]
            if r == "anion":
                if not anions:
                    return None
                pool = [a for a in anions if a not in mapping.values()] or [
                    a for a in self.anions if a not in mapping.values()]
            elif r == "ncation":
                pool = [x for x in self.ncations if x not in mapping.values()
                        and x not in anions]
            else:
                if need_mag:
                    pool, need_mag = list(self.magnetic_elements), False
                else:
                    pool = nonmag if not magnetic else self.metals
                pool = [x for x in pool if x not in mapping.values()]
            if not pool:
                return None
            new = pool[int(rng.integers(len(pool)))]
            mapping[el] = new
            new_roles[new] = r
        if cls == "hydride" and not any(T.is_metal(v) for v in mapping.values()):
            return None
        return mapping, new_roles

    def _supercell(self, rng, magnetic: bool):
        got = self._bulk(rng, magnetic, self._small)
        if got is None:
            return None
        base, label, info, oxi = got
        lo, hi = self.supercell_atoms
        ok = [m for m in SUPERCELLS if lo <= len(base) * round(np.linalg.det(m)) <= hi]
        if not ok:
            return None
        m = ok[int(rng.integers(len(ok)))]
        sc = base * m
        n_def = int(rng.integers(1, 4))
        defects = []
        for _ in range(n_def):
            kind = ("vacancy", "substitution", "interstitial")[int(rng.integers(3))]
            d = self._defect(sc, rng, kind, oxi)
            if d is not None:
                defects.append(d)
        if not defects or not lo <= len(sc) <= hi:
            return None
        info.update(supercell=m.tolist(), defects=defects, base_atoms=len(base))
        return sc, f"sc-{label}", info, oxi

    def _defect(self, sc: Structure, rng, kind: str, oxi):
        i = int(rng.integers(len(sc)))
        old = sc[i].specie.symbol
        if kind == "vacancy" and len(sc) > 4:
            sc.remove_sites([i])
            return ["vacancy", i, old]
        if kind == "substitution":
            pool = self.metals if T.is_metal(old) else self.anions
            pool = [e for e in pool if e != old]
            if not pool:
                return None
            new = pool[int(rng.integers(len(pool)))]
            sc.replace(i, new)
            return ["substitution", i, old, new]
        if kind == "interstitial":
            pool = [e for e in INTERSTITIALS if e in self.elements]
            if not pool:
                return None
            new = pool[int(rng.integers(len(pool)))]
            pts = rng.random((200, 3))
            d = sc.lattice.get_all_distances(pts, sc.frac_coords).min(axis=1)
            j = int(np.argmax(d))
            nearest = sc[int(np.argmin(sc.lattice.get_all_distances(pts[j:j + 1],
                                                                     sc.frac_coords)[0]))]
            if d[j] < 0.8 * T.bond(new, nearest.specie.symbol):
                return None
            sc.append(new, pts[j])
            return ["interstitial", len(sc) - 1, new, [round(float(x), 4) for x in pts[j]]]
        return None

    def _slab(self, rng, magnetic: bool):
        from pymatgen.core.surface import SlabGenerator
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        got = self._bulk(rng, magnetic, [t for t in self._small if t.n_atoms <= 4])
        if got is None:
            return None
        base, label, info, oxi = got
        try:
            conv = SpacegroupAnalyzer(base, symprec=0.01).get_conventional_standard_structure()
        except Exception:  # noqa: BLE001 - spglib failure: no slab from this draw
            return None
        miller = SLAB_MILLER[int(rng.integers(len(SLAB_MILLER)))]
        vacuum = float(rng.uniform(9.0, 12.0))
        try:
            gen = SlabGenerator(conv, miller, min_slab_size=5.0, min_vacuum_size=vacuum,
                                center_slab=True, primitive=True, lll_reduce=True)
            slab = gen.get_slab()
        except (ValueError, IndexError):
            return None
        if not 2 <= len(slab) <= self.max_atoms:
            return None
        s = Structure(Lattice(slab.lattice.matrix), slab.species, slab.frac_coords)
        hkl = "".join(str(x) for x in miller)
        info.update(slab={"miller": list(miller), "vacuum_A": round(vacuum, 2),
                          "atoms": len(s)})
        return s, f"slab{hkl}-{label}", info, oxi

    # ------------------------------------------------------------------ magnetism
    def _magnetize(self, s: Structure, rng, info: dict) -> Structure | None:
        mag_sites = [i for i, site in enumerate(s) if site.specie.symbol in self.magnetic_elements]
        if not mag_sites:
            info["magnetic_order"] = "none"
            return s
        afm = rng.random() < self.afm_fraction
        if afm and len(mag_sites) == 1:
            if 2 * len(s) > (self.max_atoms if info["kind"] != "supercell"
                             else self.supercell_atoms[1]):
                afm = False
            else:
                axis = int(np.argmin(s.lattice.abc)) if info["kind"] != "slab" else int(
                    np.argmin(s.lattice.abc[:2]))
                scale = [1, 1, 1]
                scale[axis] = 2
                s = s * scale
                info["afm_doubled_axis"] = axis
                mag_sites = [i for i, site in enumerate(s)
                             if site.specie.symbol in self.magnetic_elements]
        moms = np.array([MAGNETIC_MOMENTS.get(site.specie.symbol, 0.0)
                         if site.specie.symbol in self.magnetic_elements else 0.0 for site in s])
        if afm:
            signs = self._afm_signs(s, mag_sites, rng)
            moms = moms * signs
            info["magnetic_order"] = "afm"
        else:
            info["magnetic_order"] = "fm"
        s.add_site_property("magmom", [float(m) for m in moms])
        return s

    def _afm_signs(self, s: Structure, mag_sites: list[int], rng) -> np.ndarray:
        dirs = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
        order = rng.permutation(len(dirs))
        syms = [s[i].specie.symbol for i in mag_sites]
        f = s.frac_coords[mag_sites]
        for k in order:
            n = np.array(dirs[k], float)
            layer = np.floor(2.0 * ((f @ n) % 1.0) + 1e-6).astype(int)
            signs = np.where(layer % 2 == 0, 1.0, -1.0)
            if all(abs(sum(sg for sg, e in zip(signs, syms) if e == el)) < 1e-9
                   for el in set(syms)):
                out = np.ones(len(s))
                out[mag_sites] = signs
                return out
        out = np.ones(len(s))
        for el in sorted(set(syms)):
            idx = [i for i, e in zip(mag_sites, syms) if e == el]
            down = rng.permutation(idx)[: len(idx) // 2]
            out[down] = -1.0
        if (out[mag_sites] > 0).all():  # one atom of each element: flip one element
            out[mag_sites[-1]] = -1.0
        return out


def generator_from_settings(settings: dict):
    """The generator a manifest's ``definition.generator`` describes (version 1 or 2)."""
    from mlcharge_workflows.training.structures import StructureGenerator

    settings = dict(settings)
    version = settings.get("version", 1)
    if version == GENERATOR_VERSION:
        return RealisticGenerator(**settings)
    if version == 1:
        settings.pop("version", None)
        return StructureGenerator(**settings)
    raise ValueError(f"unknown generator version {version!r} (1 or 2)")
