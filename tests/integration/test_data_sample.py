"""The committed sample dataset: readable, physical, reproducible from its manifest; the
record format's half-sphere storage round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.density.grid import DensityGrid, fft_miller
from mlcharge_workflows.training.dataset import (
    SAMPLE_DIR,
    DensityDataset,
    DensityRecord,
    hermitian_half,
    sample_dataset,
)
from mlcharge_workflows.training.splits import check_disjoint
from mlcharge_workflows.training.structures import StructureGenerator


def test_sample_is_small_complete_and_physical():
    ds = sample_dataset()
    assert 10 <= len(ds) <= 20
    size = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert size <= 5_000_000
    from mlcharge_workflows.pseudo import n_valence_electrons

    spin = 0
    for rec in ds.records():
        assert rec.metadata["converged"] and rec.scf_iterations > 0
        assert rec.n_electrons == pytest.approx(n_valence_electrons(rec.structure), rel=1e-5)
        assert rec.metadata["storage"]["truncation_nmape_total_percent"] < 1e-6  # full sphere
        assert rec.metadata["pseudopotentials"] and rec.metadata["pw_version"]
        grid = rec.to_grid()
        assert np.isfinite(grid.total).all()
        assert grid.total.min() > -0.05 * grid.total.max()  # US augmentation can dip slightly
        if rec.magnetization is not None:
            spin += 1
            assert rec.metadata["nspin"] == 2
            assert grid.total_magnetization == pytest.approx(
                rec.metadata["total_magnetization"], abs=0.05)  # fmt: skip
    assert spin > 0
    man = ds.manifest
    check_disjoint(man["splits"], {i: r["family"] for i, r in man["records"].items()})
    assert sorted(sum(man["splits"].values(), [])) == ds.ids


def test_sample_structures_are_reproducible_from_the_manifest():
    """The recorded generator settings regenerate exactly the sample's structures."""
    ds = sample_dataset()
    gen = StructureGenerator(**ds.manifest["definition"]["generator"])
    for i in range(ds.manifest["planned"]):
        g = gen(i)
        assert g.id in ds, g.id
        rec = ds[g.id]
        assert np.allclose(rec.structure.lattice.matrix, g.structure.lattice.matrix, atol=1e-8)
        assert np.allclose(rec.structure.frac_coords, g.structure.frac_coords, atol=1e-8)


def test_half_sphere_storage_round_trip(tmp_path):
    s = Structure(Lattice.hexagonal(2.5, 4.0), ["C", "C"], [[0, 0, 0], [1 / 3, 2 / 3, 0.5]])
    rng = np.random.default_rng(1)
    grid = DensityGrid(s, rng.random((9, 9, 12)), rng.random((9, 9, 12)) - 0.5)
    m = fft_miller(grid.shape).reshape(-1, 3)
    m = m[(np.abs(m) <= 3).all(axis=1)]
    tot, mag = grid.fourier(m)
    rec = DensityRecord("c", s, grid.shape, m, tot, mag, energy_eV=-1.0, scf_iterations=3)
    ds = DensityDataset(tmp_path)
    path = ds.add(rec)
    with np.load(path) as z:
        assert bool(z["hermitian_half"]) and len(z["mill"]) == (len(m) + 1) // 2
    back = ds["c"]
    assert len(back.mill) == len(m)
    assert np.abs(back.to_grid().total - rec.to_grid().total).max() < 1e-6
    assert np.abs(back.to_grid().magnetization - rec.to_grid().magnetization).max() < 1e-6
    assert ds.info("c")["scf_iterations"] == 3 and ds.info("c")["spin_polarized"]
    # a set that is not closed under -m, or complex (non-real) data, is stored in full
    assert hermitian_half(m[:10], tot[:10]) is None
    assert hermitian_half(m, tot * 1j) is None
    with pytest.raises(ValueError, match="non-finite"):
        DensityRecord("bad", s, grid.shape, m, np.full(len(m), np.nan))


def test_finalize_keeps_recorded_splits(tmp_path):
    """`data finalize` on a grown dataset keeps each placed family's split; --resplit redeals."""
    import shutil

    from mlcharge_workflows.training.storage import finalize_manifest

    root = tmp_path / "ds"
    shutil.copytree(SAMPLE_DIR, root)
    man = DensityDataset(root).manifest
    fam = {i: r["family"] for i, r in man["records"].items()}
    # pretend an earlier snapshot put every family in test (not what a fresh split gives)
    man["splits"] = {"train": [], "val": [], "test": sorted(fam)}
    (root / "manifest.json").write_text(json.dumps(man))
    kept = finalize_manifest(root)
    assert kept["splits"]["test"] == sorted(fam) and not kept["splits"]["train"]
    assert kept["split"]["families_kept"] == len(set(fam.values()))
    fresh = finalize_manifest(root, resplit=True)
    assert fresh["splits"]["train"] and fresh["split"]["families_kept"] == 0
    check_disjoint(fresh["splits"], fam)
