"""The structure generators make the same structures and record the same settings as
when the shipped datasets were made (data/qe/main: version 1, seed 0; data/qe/real:
version 2, seed 1), so a resumed or extended dataset continues the same sequence.

The pinned digests were computed with the code of commit f4e960a (before the strain /
rattle options of both generators became one :class:`Perturbation`), numpy 2.4 and
pymatgen's AFLOW library ``a1b349b062f1``, by :func:`_digest` below on the first 20
structures of each generator.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mlcharge_workflows.training.realistic import RealisticGenerator, generator_from_settings
from mlcharge_workflows.training.structures import StructureGenerator

DATA = Path(__file__).resolve().parents[2] / "data" / "qe"

#: ``definition.generator`` of data/qe/main and data/qe/real (their manifests).
V1 = {"elements": ["H", "B", "C", "N", "O", "Si", "Fe", "Co", "Ni", "Cu"], "max_atoms": 6,
      "min_distance_factor": 0.7, "rattle": [0.02, 0.1], "rattle_probability": 0.5, "seed": 0,
      "shear_probability": 0.35, "small_fraction": 0.75, "strain": 0.06,
      "strain_probability": 0.85}
V2 = {"afm_fraction": 0.35, "elements": ["H", "Li", "B", "C", "N", "O", "F", "Mg", "Al", "Si",
                                         "P", "S", "Cl", "K", "Ca", "Ti", "Fe", "Co", "Ni",
                                         "Cu", "Zn"],
      "library": "a1b349b062f1", "magnetic_elements": ["Co", "Fe", "Ni"],
      "magnetic_fraction": 0.35, "max_atoms": 16, "rattle": [0.02, 0.08],
      "rattle_probability": 0.5, "seed": 1, "shear_probability": 0.35, "size_exponent": 2.0,
      "slab_fraction": 0.05, "strain": 0.05, "strain_probability": 0.8,
      "supercell_atoms": [20, 32], "supercell_fraction": 0.08, "version": 2}
#: Every perturbation option away from its default.
PERTURBED = {"strain": 0.1, "rattle": [0.05, 0.2], "rattle_probability": 1.0,
             "strain_probability": 1.0, "shear_probability": 1.0}

#: ``json.dumps(generator.settings())`` at f4e960a (the manifest's key order included).
SETTINGS_V1 = (
    '{"seed": 0, "elements": ["H", "B", "C", "N", "O", "Si", "Fe", "Co", "Ni", "Cu"], '
    '"max_atoms": 6, "small_fraction": 0.75, "strain": 0.06, "rattle": [0.02, 0.1], '
    '"rattle_probability": 0.5, "strain_probability": 0.85, "shear_probability": 0.35, '
    '"min_distance_factor": 0.7}'
)
SETTINGS_V2 = (
    '{"version": 2, "seed": 1, "elements": ["H", "Li", "B", "C", "N", "O", "F", "Mg", "Al", '
    '"Si", "P", "S", "Cl", "K", "Ca", "Ti", "Fe", "Co", "Ni", "Cu", "Zn"], "max_atoms": 16, '
    '"supercell_atoms": [20, 32], "supercell_fraction": 0.08, "slab_fraction": 0.05, '
    '"size_exponent": 2.0, "magnetic_fraction": 0.35, "afm_fraction": 0.35, '
    '"magnetic_elements": ["Co", "Fe", "Ni"], "strain": 0.05, "rattle": [0.02, 0.08], '
    '"rattle_probability": 0.5, "strain_probability": 0.8, "shear_probability": 0.35, '
    '"library": "a1b349b062f1"}'
)
SETTINGS_V1_DEFAULT = (
    '{"seed": 0, "elements": ["H", "B", "C", "N", "O", "Si", "Fe", "Co", "Ni", "Cu"], '
    '"max_atoms": 16, "small_fraction": 0.6, "strain": 0.06, "rattle": [0.02, 0.1], '
    '"rattle_probability": 0.5, "strain_probability": 0.85, "shear_probability": 0.35, '
    '"min_distance_factor": 0.7}'
)


def _digest(generator, n: int = 20) -> str:
    """sha256 (16 hex digits) of ids, compositions, cells, fractional coordinates (rounded
    to 1e-6), moments and the recorded ``info`` of the first ``n`` structures."""
    h = hashlib.sha256()
    for g in generator.generate(n):
        s = g.structure
        h.update(json.dumps([g.id, g.family, g.prototype, s.composition.formula,
                             s.lattice.matrix.round(6).tolist(), s.frac_coords.round(6).tolist(),
                             s.site_properties.get("magmom"), g.info],
                            sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    ("settings", "digest"),
    [
        (V1, "7c3759b1a3b5cb88"),
        (V2, "a52e642efb88be10"),
        ({**V1, **PERTURBED}, "b3ae133a4bfaa54e"),
        ({**V2, **PERTURBED}, "59bfe156c6e71502"),
    ],
    ids=["v1-seed0", "v2-seed1", "v1-perturbed", "v2-perturbed"],
)
def test_the_same_settings_make_the_same_structures(settings, digest) -> None:
    assert _digest(generator_from_settings(settings)) == digest


def test_default_generators_make_the_pinned_structures() -> None:
    """The defaults of both generators (v2's are the recorded data/qe/real settings)."""
    v1 = StructureGenerator()
    assert json.dumps(v1.settings()) == SETTINGS_V1_DEFAULT
    assert _digest(v1) == "619b99c30b647eec"
    v2 = RealisticGenerator(seed=1, elements=V2["elements"])
    assert json.dumps(v2.settings()) == SETTINGS_V2
    assert _digest(v2) == "a52e642efb88be10"


def test_recorded_settings_round_trip_byte_for_byte() -> None:
    for recorded, pinned in ((V1, SETTINGS_V1), (V2, SETTINGS_V2)):
        gen = generator_from_settings(recorded)
        assert json.dumps(gen.settings()) == pinned
        again = generator_from_settings(gen.settings())
        assert type(again) is type(gen) and again.settings() == gen.settings()


def test_non_default_perturbations_are_recorded() -> None:
    for recorded in (V1, V2):
        settings = generator_from_settings({**recorded, **PERTURBED}).settings()
        assert {k: settings[k] for k in PERTURBED} == PERTURBED


@pytest.mark.parametrize("dataset", ["main", "real"])
def test_shipped_records_are_the_generated_structures(dataset) -> None:
    """The first shard's records (index < 20) are what their recorded generator makes now."""
    shard = json.loads((DATA / dataset / "shards" / "shard-00000.json").read_text())
    gen = generator_from_settings(shard["definition"]["generator"])
    records = [r for r in shard["records"] if r["generator"]["index"] < 20]
    assert records
    for r in records:
        made = gen(r["generator"]["index"])
        assert (made.id, made.info["attempt"], len(made.structure)) == (
            r["id"], r["generator"]["attempt"], r["n_atoms"])


def test_an_unknown_or_positional_option_is_refused() -> None:
    with pytest.raises(TypeError, match=r"\['strian'\].*strain, rattle"):
        StructureGenerator(strian=0.1)
    with pytest.raises(TypeError, match=r"\['small_fraction'\]"):
        RealisticGenerator(elements=V2["elements"], small_fraction=0.5)
    with pytest.raises(TypeError):  # the 5th argument was ``strain``: keyword-only now
        StructureGenerator(0, None, 16, 0.6, 0.06)
