"""Generator version 2 (realistic crystals): determinism, sizes, chemistry, magnetic orders,
slabs and defect supercells, and that version 1 stays as it was."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from mlcharge_workflows.engines.qe.sets import QEProtocol, antiparallel_signs
from mlcharge_workflows.training import crystal_types as T
from mlcharge_workflows.training.realistic import RealisticGenerator, generator_from_settings
from mlcharge_workflows.training.splits import check_disjoint, split_by_family
from mlcharge_workflows.training.structures import DEFAULT_ELEMENTS, StructureGenerator

ELEMENTS = ["H", "Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ti",
            "Mn", "Fe", "Co", "Ni", "Cu", "Zn"]


@pytest.fixture(scope="module")
def gen():
    return RealisticGenerator(seed=5, elements=ELEMENTS)


@pytest.fixture(scope="module")
def batch(gen):
    return gen.generate(300)


def test_deterministic_prefix_stable_and_recorded(gen, batch):
    again = generator_from_settings(gen.settings())
    for i in (299, 0, 57):
        a, b = batch[i], again(i)
        assert a.id == b.id and np.allclose(a.structure.cart_coords, b.structure.cart_coords)
        assert a.structure.site_properties == b.structure.site_properties
    other = RealisticGenerator(seed=6, elements=ELEMENTS)
    assert [other(i).id for i in range(5)] != [g.id for g in batch[:5]]
    ids = [g.id for g in batch]
    assert len(set(ids)) == len(ids)
    for g in batch:
        assert re.fullmatch(r"[A-Za-z0-9_-]+-[A-Za-z0-9]+-5-\d{5}", g.id), g.id
        assert g.family == g.structure.composition.chemical_system


def test_version_1_is_unchanged():
    """Version 1's default is still its ten elements (the recorded seed-0 command)."""
    g = StructureGenerator(seed=0)
    assert g.elements == sorted(DEFAULT_ELEMENTS, key=lambda e: __import__(
        "pymatgen.core", fromlist=["Element"]).Element(e).Z)
    assert "version" not in g.settings()
    assert generator_from_settings(g.settings())(3).id == g(3).id


def test_sizes_kinds_and_sources(batch):
    kinds = Counter(g.info["kind"] for g in batch)
    assert kinds["bulk"] > 200 and kinds["supercell"] >= 15 and kinds["slab"] >= 8
    for g in batch:
        n = len(g.structure)
        if g.info["kind"] == "supercell":
            assert 20 <= n <= 32 and g.info["defects"]
        else:
            assert n <= 16
    n = np.array([len(g.structure) for g in batch])
    assert 0.15 < (n >= 8).mean() < 0.45 and np.median(n) <= 6
    assert len({g.info["aflow"] for g in batch}) >= 60
    for g in batch:
        if g.info["kind"] == "slab":  # vacuum: a gap of >= 8 Å along c between periodic images
            z = np.sort(g.structure.cart_coords @ (g.structure.lattice.matrix[2] / np.linalg.norm(
                g.structure.lattice.matrix[2])))
            c = abs(np.dot(g.structure.lattice.matrix[2], np.cross(
                *g.structure.lattice.matrix[:2]))) / np.linalg.norm(np.cross(
                    *g.structure.lattice.matrix[:2]))
            gaps = np.diff(np.append(z, z[0] + c))
            assert gaps.max() >= 8.0, g.id


def test_chemistry_covers_the_elements_and_balances_charge(batch):
    seen = Counter(e.symbol for g in batch for e in g.structure.composition)
    assert set(seen) == set(ELEMENTS)
    classes = Counter(g.info["class"] for g in batch)
    for cls in ("oxide", "nitride", "carbide", "boride", "silicide", "hydride", "halide",
                "intermetallic"):
        assert classes[cls] >= 5, classes
    for g in batch:
        oxi = g.info.get("oxidation_states")
        if g.info["class"] in ("oxide", "halide") and g.info["kind"] == "bulk":
            comp = g.structure.composition
            assert oxi and abs(sum(oxi[e.symbol] * amt for e, amt in comp.items())) < 1e-6, g.id
        assert T.distances_ok(g.structure, None, factor=0.5, like_factor=0.5), g.id
        if g.info["kind"] != "slab":
            assert 4.0 <= g.structure.volume / len(g.structure) <= 45.0, g.id


def test_magnetic_orders_reach_pw_x(batch):
    p = QEProtocol()
    orders = Counter(g.info["magnetic_order"] for g in batch)
    assert orders["afm"] >= 20 and orders["fm"] >= 30 and 0.25 < 1 - orders["none"] / 300 < 0.6
    for g in batch:
        moms = g.structure.site_properties.get("magmom")
        mag = {"Fe", "Co", "Ni"} & {e.symbol for e in g.structure.composition}
        if g.info["magnetic_order"] == "none":
            assert moms is None and not mag
            continue
        signs = antiparallel_signs(g.structure, p)
        if g.info["magnetic_order"] == "afm":
            assert min(moms) < 0 < max(moms) and signs is not None, g.id
        else:
            assert min(moms) >= 0 and signs is None, g.id


def test_families_split_disjoint(batch):
    fams = {g.id: g.family for g in batch}
    splits = split_by_family(fams, (0.8, 0.1, 0.1), seed=0)
    check_disjoint(splits, fams)
    assert all(len(v) > 0 for v in splits.values())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="version"):
        RealisticGenerator(version=3, elements=ELEMENTS)
    with pytest.raises(ValueError, match="afm_fraction"):
        RealisticGenerator(afm_fraction=1.5, elements=ELEMENTS)
    with pytest.raises(ValueError, match="AFLOW prototype library differs"):
        RealisticGenerator(library="000000000000", elements=ELEMENTS)
    with pytest.raises(ValueError, match="no metals"):
        RealisticGenerator(elements=["C", "N", "O"])
