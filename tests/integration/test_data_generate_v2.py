"""Generator version 2 end to end: a generated antiferromagnetic start through pw.x into a
record, then into a shard with its magnetic start and outcome; resuming checks the settings."""

from __future__ import annotations

import json

import pytest

from mlcharge_workflows.training.generate import (
    GenerationSettings,
    _gen_dict,
    _prepare_manifest,
    compute_density_record,
)
from mlcharge_workflows.training.pack import pack_dataset
from mlcharge_workflows.training.shards import ShardDataset
from mlcharge_workflows.training.structures import DEFAULT_ELEMENTS

ELEMENTS = list(DEFAULT_ELEMENTS)  # validated pseudopotentials for all of them


def test_v2_afm_structure_to_record_to_shard(tmp_path):
    settings = GenerationSettings(seed=5, elements=ELEMENTS, protocol={"kspacing": 0.6},
                                  generator_version=2)
    gen = settings.generator()
    # the first small antiferromagnetic start of seed 5 (2 atoms: a cheap pw.x run)
    g = next(x for x in map(gen, range(400))
             if x.info["magnetic_order"] == "afm" and len(x.structure) == 2)
    index = int(g.id.rsplit("-", 1)[1])
    out = tmp_path / "real"
    _prepare_manifest(out, settings, index + 1, gen, settings.qe_protocol())
    res = compute_density_record(g.structure, _gen_dict(g), str(out), settings.protocol, None)
    assert res["status"] == "ok", res
    pack_dataset(out, tmp_path / "shards", log=lambda s: None)
    ds = ShardDataset(tmp_path / "shards")
    e = ds.entries[g.id]
    assert e["generator"]["version"] == 2 and e["generator"]["index"] == index
    assert e["magnetic_start"] == "afm"
    assert e["magnetic_outcome"] in ("compensated", "nonmagnetic")  # a small moment may collapse
    rec = ds[g.id]
    assert min(rec.structure.site_properties["magmom"]) < 0
    assert rec.metadata["generator_info"]["aflow"] == g.info["aflow"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["definition"]["generator"]["version"] == 2
    other = GenerationSettings(seed=5, elements=ELEMENTS, protocol={"kspacing": 0.6},
                               generator_version=2, generator_options={"afm_fraction": 0.1})
    with pytest.raises(ValueError, match="other settings"):
        _prepare_manifest(out, other, index + 1, other.generator(), other.qe_protocol())
