"""Structure generator and composition-family splits: determinism, physics sanity, bad input."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from mlcharge_workflows.training.prototypes import PROTOTYPES, bond, build, classify
from mlcharge_workflows.training.splits import check_disjoint, split_by_family, split_summary
from mlcharge_workflows.training.structures import (
    DEFAULT_ELEMENTS,
    StructureGenerator,
    formula_key,
    generate_structures,
    min_distance_ok,
)

ELEMENTS = list(DEFAULT_ELEMENTS)


@pytest.fixture(scope="module")
def batch():
    return StructureGenerator(seed=3, elements=ELEMENTS).generate(300)


def test_same_seed_same_structures_and_prefix_stable():
    a = generate_structures(30, seed=7, elements=ELEMENTS)
    b = StructureGenerator(7, ELEMENTS)
    # structure i does not depend on how many are generated, nor on the order of the calls
    for i in (29, 0, 13):
        assert b(i).id == a[i].id
        assert np.allclose(b(i).structure.cart_coords, a[i].structure.cart_coords)
        assert np.allclose(b(i).structure.lattice.matrix, a[i].structure.lattice.matrix)
    c = generate_structures(30, seed=8, elements=ELEMENTS)
    assert [g.id for g in a] != [g.id for g in c]


def test_ids_unique_and_well_formed(batch):
    ids = [g.id for g in batch]
    assert len(set(ids)) == len(ids)
    for g in batch:
        assert re.fullmatch(r"[a-z0-9-]+-[A-Za-z0-9]+-3-\d{5}", g.id), g.id
        assert g.family == g.structure.composition.chemical_system
        assert g.id.split("-")[-3] == formula_key(g.structure)


def test_sizes_favour_small_cells(batch):
    n = np.array([len(g.structure) for g in batch])
    assert n.max() <= 16
    assert (n <= 4).mean() >= 0.55
    assert len(set(g.prototype for g in batch)) >= 25  # prototypes and their supercells


def test_element_coverage_and_magnetism(batch):
    seen = Counter(e.symbol for g in batch for e in g.structure.composition)
    assert set(seen) == set(ELEMENTS)
    for g in batch:
        symbols = {e.symbol for e in g.structure.composition}
        if symbols & {"Fe", "Co", "Ni"}:
            assert g.magnetic, g.id
            symbols_per_site = [s.specie.symbol for s in g.structure]
            moms = dict(zip(symbols_per_site, g.structure.site_properties["magmom"]))
            assert moms.get("Fe", 3.0) > 0 and moms.get("Cu", 0.0) == 0
        else:
            assert not g.magnetic
        if "H" in symbols:  # hydrogen only in metal hydrides
            assert symbols & {"Fe", "Co", "Ni", "Cu"}, g.id


def test_distances_are_physical(batch):
    for g in batch:
        s = g.structure
        assert min_distance_ok(s), g.id
        # densities are sensible: 4 to 40 Å^3 per atom except layered cells with vacuum gaps
        vpa = s.volume / len(s)
        assert 2.5 < vpa < 60, (g.id, vpa)


def test_strain_and_rattle_ranges(batch):
    strained = [g for g in batch if "strain_voigt" in g.info]
    rattled = [g for g in batch if "rattle_A" in g.info]
    assert len(strained) > 0.6 * len(batch) and len(rattled) > 0.3 * len(batch)
    assert all(max(abs(x) for x in g.info["strain_voigt"]) <= 0.06 for g in strained)
    assert all(0.02 <= g.info["rattle_A"] <= 0.1 for g in rattled)
    supercells = [g for g in batch if g.prototype.startswith("sc-")]
    assert supercells and all(g.info["substitutions"] or g.info["vacancy"] for g in supercells)


def test_known_lattice_constants():
    # rocksalt NiO a = 4.17 Å, diamond Si 5.43, zincblende SiC 4.36, bcc Fe 2.87, fcc Cu 3.61
    rng = np.random.default_rng(0)
    roles = classify(ELEMENTS)
    proto = {p.name: p for p in PROTOTYPES}
    assert abs(2 * bond("Ni", "O") - 4.17) / 4.17 < 0.06
    assert abs(4 * bond("Si", "Si") / np.sqrt(3) - 5.43) / 5.43 < 0.03
    assert abs(4 * bond("Si", "C") / np.sqrt(3) - 4.36) / 4.36 < 0.05
    assert abs(2 * bond("Fe", "Fe") / np.sqrt(3) - 2.87) / 2.87 < 0.03
    assert abs(np.sqrt(2) * bond("Cu", "Cu") - 3.61) / 3.61 < 0.03
    s = build(proto["rocksalt"], {"M": ["Ni"], "X": ["O"]}, rng)
    assert s.composition.reduced_formula == "NiO" and len(s) == 2
    assert roles["M"] == ["Fe", "Co", "Ni", "Cu"]


def test_bad_input():
    with pytest.raises(ValueError, match="Xx"):
        StructureGenerator(0, elements=["Si", "Xx"])
    with pytest.raises(ValueError, match="no prototype"):
        StructureGenerator(0, elements=["He"])
    with pytest.raises(ValueError, match="max_atoms"):
        StructureGenerator(0, elements=ELEMENTS, max_atoms=0)
    with pytest.raises(ValueError, match=">= 0"):
        StructureGenerator(0, elements=ELEMENTS).generate(-1)


def test_max_atoms_respected():
    gen = StructureGenerator(1, elements=ELEMENTS, max_atoms=4, small_fraction=0.0)
    assert all(len(g.structure) <= 4 for g in gen.generate(60))


# ------------------------------------------------------------------ splits
def test_splits_deterministic_and_family_disjoint(batch):
    fam = {g.id: g.family for g in batch}
    s1 = split_by_family(fam, seed=0)
    s2 = split_by_family(dict(reversed(list(fam.items()))), seed=0)  # input order is irrelevant
    assert s1 == s2
    check_disjoint(s1, fam)
    assert sorted(sum(s1.values(), [])) == sorted(fam)
    summary = split_summary(s1, fam)
    assert summary["train"]["structures"] > summary["test"]["structures"] > 0
    assert summary["val"]["structures"] > 0
    assert abs(summary["test"]["structures"] / len(fam) - 0.1) < 0.06
    train_fams = {fam[i] for i in s1["train"]}
    assert not train_fams & {fam[i] for i in s1["test"]}
    assert split_by_family(fam, seed=1) != s1  # the seed matters


def test_splits_keep_the_families_already_placed(batch):
    """A grown dataset: old families stay in their split, new ones are dealt out."""
    fam = {g.id: g.family for g in batch}
    families = sorted(set(fam.values()))
    old_ids = [i for i in fam if fam[i] in families[: len(families) // 2]]
    old = split_by_family({i: fam[i] for i in old_ids}, seed=0)
    keep = {fam[i]: name for name, ids in old.items() for i in ids}
    grown = split_by_family(fam, seed=0, keep=keep)
    check_disjoint(grown, fam)
    assert sorted(sum(grown.values(), [])) == sorted(fam)
    for name, ids in old.items():
        assert set(ids) <= set(grown[name])
    # without keep, the same seed deals the grown set differently (the reason keep exists)
    assert any(not set(ids) <= set(split_by_family(fam, seed=0)[name]) for name, ids in old.items())
    # a kept family that moved to test takes all its structures along
    moved = {**keep, families[-1]: "test"}
    assert {i for i in fam if fam[i] == families[-1]} <= set(split_by_family(fam, keep=moved)["test"])
    with pytest.raises(ValueError, match="unknown split names"):
        split_by_family(fam, keep={families[0]: "holdout"})


def test_split_checks():
    fam = {"a": "Fe", "b": "Fe", "c": "Ni"}
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_family(fam, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="empty family"):
        split_by_family({"a": ""})
    with pytest.raises(ValueError, match="family 'Fe'"):
        check_disjoint({"train": ["a"], "val": [], "test": ["b"]}, fam)
