"""Repository shards: packing the sample, measured storage error, append-only growth,
checks that keep bad records out of training, and training's loader reading shards."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlcharge_workflows.training.dataset import SAMPLE_DIR, DensityDataset, sample_dataset
from mlcharge_workflows.training.pack import check_record, pack_dataset, parse_generated_id
from mlcharge_workflows.training.shards import (
    LIMIT_PERCENT,
    ShardDataset,
    mill_from_runs,
    mill_runs,
    open_dataset,
)
from mlcharge_workflows.training.splits import check_disjoint
from mlcharge_workflows.training.storage import nmape, sphere_mill

REPO = Path(__file__).resolve().parents[2]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _partial_copy(dst: Path, ids: list[str]) -> Path:
    (dst / "records").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_DIR / "manifest.json", dst / "manifest.json")
    for rid in ids:
        shutil.copy(SAMPLE_DIR / "records" / f"{rid}.npz", dst / "records" / f"{rid}.npz")
    return dst


def test_mill_runs_round_trip_and_refuse_holes():
    lat = np.array([[3.1, 0.0, 0.0], [0.4, 2.9, 0.0], [0.2, -0.3, 4.2]])
    mill = sphere_mill(lat, 120.0)
    mill = mill[np.lexsort((mill[:, 2], mill[:, 1], mill[:, 0]))]
    runs = mill_runs(mill)
    assert runs is not None and len(runs) < len(mill) / 3
    assert np.array_equal(mill_from_runs(runs), mill)
    holed = np.delete(mill, len(mill) // 2, axis=0)  # not contiguous in m3 any more
    runs_h = mill_runs(holed)
    assert runs_h is None or not np.array_equal(mill_from_runs(runs_h), mill)


def test_pack_sample_measured_error_size_and_provenance(tmp_path):
    into = tmp_path / "qe" / "sample"
    res = pack_dataset(SAMPLE_DIR, into, shard_size=8, log=lambda s: None)
    ds = ShardDataset(into)
    src = sample_dataset()
    assert res["new_records"] == len(src) == len(ds) and len(res["shards"]) == 3
    stored = sum(p.stat().st_size for p in (into / "shards").glob("*.npz"))
    source = sum(p.stat().st_size for p in (SAMPLE_DIR / "records").glob("*.npz"))
    assert stored < 0.3 * source  # measured: 0.33 MB against 2.2 MB
    for rid in src.ids:
        a, b = src[rid], ds[rid]
        ga, gb = a.to_grid(), b.to_grid(a.grid_shape)
        err = nmape(gb.total, ga.total)
        assert 0 < err <= LIMIT_PERCENT
        assert err == pytest.approx(ds.entries[rid]["storage"]["nmape_total_percent"], rel=1e-3)
        assert b.n_electrons == pytest.approx(a.n_electrons, rel=1e-4)
        assert (b.magnetization is None) == (a.magnetization is None)
        if a.magnetization is not None:
            assert nmape(gb.magnetization, ga.magnetization) <= LIMIT_PERCENT
        assert b.metadata == a.metadata and b.energy_eV == a.energy_eV
        e = ds.entries[rid]
        gen = parse_generated_id(rid)
        assert e["generator"] == {"version": 1, "seed": 0, "index": gen["index"],
                                  "attempt": a.metadata["generator_info"]["attempt"]}
        assert set(e["pseudopotentials"]) == set(e["elements"])
        assert all(len(p["md5"]) == 32 for p in e["pseudopotentials"].values())
    doc = json.loads((into / "shards" / "shard-00000.json").read_text())
    assert doc["definition"]["generator"]["seed"] == 0 and doc["protocols"]
    assert doc["definition"]["protocol"]["kspacing"] == 0.6
    fams = {rid: e["family"] for rid, e in ds.entries.items()}
    check_disjoint(ds.manifest["splits"], fams)
    assert sorted(i for ids in ds.manifest["splits"].values() for i in ids) == ds.ids


def test_pack_appends_without_rewriting_and_keeps_family_splits(tmp_path):
    src = tmp_path / "src"
    ids = sample_dataset().ids
    _partial_copy(src, ids[:9])
    into = tmp_path / "qe"
    pack_dataset(src, into, log=lambda s: None)
    first = {p.name: _sha(p) for p in (into / "shards").iterdir()}
    split1 = {rid: e["split"] for rid, e in ShardDataset(into).entries.items()}
    fam1 = {e["family"]: e["split"] for e in ShardDataset(into).entries.values()}
    _partial_copy(src, ids)  # the generation went on
    (src / "failures").mkdir()
    (src / "failures" / "fcc-Ni-0-00099.json").write_text(
        json.dumps({"kind": "not_converged", "reason": "electron_maxstep reached"}))
    res = pack_dataset(src, into, log=lambda s: None)
    assert res["new_records"] == len(ids) - 9 and res["new_failures"] == 1
    for name, digest in first.items():
        assert _sha(into / "shards" / name) == digest  # old shards untouched
    ds = ShardDataset(into)
    assert len(ds) == len(ids) and ds.manifest["failures"]["fcc-Ni-0-00099"]["kind"] == "not_converged"
    assert all(ds.entries[r]["split"] == s for r, s in split1.items())
    for e in ds.entries.values():
        if e["family"] in fam1:
            assert e["split"] == fam1[e["family"]]
    again = pack_dataset(src, into, log=lambda s: None)
    assert again["new_records"] == 0 and len(list((into / "shards").iterdir())) == 4


def test_incomplete_shard_is_ignored_and_replaced(tmp_path):
    into = tmp_path / "qe"
    src = _partial_copy(tmp_path / "src", sample_dataset().ids[:3])
    pack_dataset(src, into, log=lambda s: None)
    (into / "shards" / "shard-00001.npz").write_bytes(b"killed while writing")
    assert len(ShardDataset(into)) == 3
    _partial_copy(src, sample_dataset().ids[:5])
    pack_dataset(src, into, log=lambda s: None)
    assert len(ShardDataset(into)) == 5 and (into / "shards" / "shard-00002.json").is_file()


def test_unexpected_magnetic_state_and_bad_electron_count_are_excluded():
    ds = sample_dataset()
    rid = next(r for r in ds.ids if ds[r].magnetization is not None
               and ds[r].metadata["absolute_magnetization"] > 1 and len(ds[r].structure) >= 2)
    rec = ds[rid]
    facts, why = check_record(rec)
    assert why is None and facts["magnetic_start"] == "fm"
    moms = [(abs(m) or 1.0) * (1 if i % 2 == 0 else -1)
            for i, m in enumerate(rec.structure.site_properties["magmom"])]
    rec.structure.add_site_property("magmom", moms)
    facts, why = check_record(rec)
    assert facts["magnetic_start"] == "afm" and "converged ferromagnetic" in why
    rec = ds[rid]
    rec.metadata["total_magnetization"] = 0.0
    assert "converged compensated" in check_record(rec)[1]
    rec = ds[rid]
    rec.total = rec.total * 1.05
    assert "electron count" in check_record(rec)[1]


def test_training_loader_reads_shards(tmp_path):
    from mlcharge_workflows.training.train import TrainConfig, load_records

    into = tmp_path / "qe"
    pack_dataset(SAMPLE_DIR, into, log=lambda s: None)
    ds = open_dataset(into)
    assert isinstance(ds, ShardDataset) and isinstance(open_dataset(SAMPLE_DIR), DensityDataset)
    with pytest.raises(ValueError, match="not a dataset folder"):
        open_dataset(tmp_path / "empty")
    got = load_records(TrainConfig(datasets=[into]), log=lambda s: None)
    for name in ("train", "val", "test"):
        assert sorted(r.id for r in got[name]) == ds.split(name)


def test_repository_data_opens_through_the_documented_config():
    """data/train.yaml names the committed shards; every listed dataset opens and reads."""
    from mlcharge_workflows.training.train import TrainConfig

    cfg = TrainConfig.from_yaml(REPO / "data" / "train.yaml")
    assert cfg.datasets
    size = sum(p.stat().st_size for p in (REPO / "data").rglob("*") if p.is_file())
    assert size < 200e6  # the repository's data budget (docs/dataset.md)
    for root in cfg.datasets:
        ds = open_dataset(root)
        assert isinstance(ds, ShardDataset) and len(ds) > 0
        for e in list(ds.entries.values())[:: max(1, len(ds.entries) // 3)]:
            assert e["storage"]["nmape_total_percent"] <= LIMIT_PERCENT
            if e.get("n_electrons_expected"):
                assert ds[e["id"]].n_electrons == pytest.approx(e["n_electrons_expected"], rel=1e-3)


def test_splits_from_are_kept_by_later_packs(tmp_path):
    """Families a --splits-from file names keep its split in every later pack (the shipped
    weights' test families stay unseen), even when their records arrive later."""
    ids = sample_dataset().ids
    late = sample_dataset()[ids[-1]]
    fam = late.metadata["family"]
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"splits": {"test": ["x"]}, "records": {"x": {"family": fam}}}))
    src = _partial_copy(tmp_path / "src", [i for i in ids[:6] if
                                            sample_dataset()[i].metadata["family"] != fam])
    into = tmp_path / "qe"
    pack_dataset(src, into, splits_from=ref, log=lambda s: None)
    _partial_copy(src, ids)
    pack_dataset(src, into, log=lambda s: None)
    assert ShardDataset(into).entries[late.id]["split"] == "test"


def test_cli_pack_reports_and_refuses_bad_input(tmp_path):
    from typer.testing import CliRunner

    from mlcharge_workflows.cli.main import app

    res = CliRunner().invoke(app, ["data", "pack", str(SAMPLE_DIR), "--into", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    assert "packed 20 new records" in res.output and "holds 20" in res.output
    res = CliRunner().invoke(app, ["data", "pack", str(tmp_path / "nothing"), "--into",
                                   str(tmp_path / "q")])
    assert res.exit_code == 1 and "not a dataset folder" in res.output
