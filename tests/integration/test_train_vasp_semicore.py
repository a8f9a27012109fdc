"""Users' VASP CHGCARs on semicore POTCARs are ingested and trained on.

Run folders are written by this package: a CHGCAR from a random 'teacher' model on the
atomic reference of a synthetic ``Fe_pv`` POTCAR (the registry's 8-electron Fe density
plus a compact 6-electron shell, ZVAL 14: Materials Project's Fe_pv valence), the POTCAR
itself and a minimal OUTCAR. Training fits each record against its own POTCAR reference,
while the model's saved table stays the 8-electron training one.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp import Poscar

from mlcharge_workflows.density.chgcar import write_chgcar
from mlcharge_workflows.density.grid import DensityGrid, fft_miller
from mlcharge_workflows.density.potcar import read_potcar_atomic_densities
from mlcharge_workflows.engines.vasp.testing import write_synthetic_potcar_library
from mlcharge_workflows.model import DensityModel, ModelConfig, load_weights
from mlcharge_workflows.model.atomic import AtomicReference
from mlcharge_workflows.training.dataset import DensityDataset
from mlcharge_workflows.training.ingest import ingest_vasp_runs
from mlcharge_workflows.training.train import TrainConfig, build_table, train

SMALL = {"cutoff": 3.0, "n_layers": 1, "irreps_hidden": "4x0e", "orbital_muls": [2, 1, 1],
         "magnetization_muls": [1]}
SHAPE = (18, 18, 18)

OUTCAR = """ vasp.6.4.2 18Apr23 (build Apr 18 2023) complex
   NELECT =      {nelect:.4f}    total number of electrons
   NELM   =     60;   NELMIN=  2; NELMDL= -5     # of ELM steps
   dimension x,y,z NGXF=   {n}   NGYF=   {n}   NGZF=   {n}
{iterations}
  free  energy   TOTEN  =       -16.00000000 eV
  energy  without entropy=      -16.00000000  energy(sigma->0) =      -16.00000000
 General timing and accounting informations for this job:
"""


def _structures() -> list[Structure]:
    rng = np.random.default_rng(3)
    return [
        Structure(Lattice.cubic(2.78 + 0.03 * i), ["Fe", "Fe"],
                  [[0, 0, 0], [0.5 + rng.normal(0, 0.01), 0.5, 0.5]])
        for i in range(6)
    ]


@pytest.fixture(scope="module")
def vasp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("semicore")
    lib = write_synthetic_potcar_library(root / "psp", ["Fe_pv"])
    potcar = lib / "POT_GGA_PAW_PBE_54" / "POTCAR.Fe_pv"
    (atom,) = read_potcar_atomic_densities(potcar)
    table, _ = build_table(["Fe"], [], root)  # the 8-electron training table
    torch.manual_seed(2)
    teacher = DensityModel(ModelConfig(elements=["Fe"], ecutrho_ry={"Fe": 80.0}, **SMALL), table)
    teacher = teacher.double()
    reference = table.with_references({"Fe": AtomicReference.from_potcar(atom)})
    mill = fft_miller(SHAPE).reshape(-1, 3)
    mill = mill[np.all(np.abs(mill) <= (np.array(SHAPE) - 1) // 2, axis=1)]
    src = root / "runs"
    for i, s in enumerate(_structures()):
        cell = teacher.prepare(s, spin=False, reference=reference)
        teacher.attach_mill(cell, mill)
        with torch.no_grad():
            tot, _ = teacher.fourier(cell)
        c = np.zeros(SHAPE, dtype=complex)
        c[tuple((mill % np.array(SHAPE)).T)] = tot.numpy()
        rho = np.fft.ifftn(c).real * np.prod(SHAPE)
        folder = src / f"fe{i}"
        folder.mkdir(parents=True)
        write_chgcar(DensityGrid(s, rho), folder / "CHGCAR")
        Poscar(s).write_file(folder / "POSCAR")
        shutil.copy(potcar, folder / "POTCAR")
        its = "\n".join(f" ----------- Iteration      1({k:4d})  -----------" for k in range(1, 13))
        (folder / "OUTCAR").write_text(OUTCAR.format(nelect=28.0, n=SHAPE[0], iterations=its))
    return root, src


def test_semicore_vasp_chgcars_ingest_and_train(vasp_runs, tmp_path):
    root, src = vasp_runs
    ds_root = tmp_path / "ds"
    manifest = ingest_vasp_runs(src, ds_root, progress=False)
    ds = DensityDataset(ds_root)
    ids = ds.ids
    assert len(ids) == 6, manifest
    assert ds[ids[0]].n_electrons == pytest.approx(28.0, rel=1e-6)
    ds.manifest["splits"] = {"train": ids[:4], "val": ids[4:5], "test": ids[5:]}
    ds.save_manifest()
    lines: list[str] = []
    cfg = TrainConfig(datasets=[ds_root], output=tmp_path / "run", epochs=8, batch_size=2,
                      lr=1e-2, seed=0, threads=1, n_extra=64, elements=["Fe"], model=dict(SMALL))
    metrics = train(cfg, log=lines.append)
    assert metrics["n_train"] == 4 and not any("skipping" in ln for ln in lines)
    assert any("4 records fitted against their own pseudopotentials" in ln for ln in lines)
    model = load_weights(tmp_path / "run" / "model.pt")
    assert model.table.z_valence.tolist() == [8.0]  # the saved table is the training one
    row = metrics["test"]["records"][0]
    # the baseline is the record's own POTCAR superposition: the teacher's deformation only
    assert row["sad_nmape"] < 15.0 and row["nmape"] < row["sad_nmape"]


def test_vasp_record_without_potcar_is_skipped_with_the_reason(vasp_runs, tmp_path, monkeypatch):
    import pymatgen.io.vasp.inputs as inputs

    monkeypatch.setitem(inputs.SETTINGS, "PMG_VASP_PSP_DIR", None)
    root, src = vasp_runs
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    for pot in bare.rglob("POTCAR"):
        pot.unlink()
    ds_root = tmp_path / "ds"
    ingest_vasp_runs(bare, ds_root, progress=False)
    ds = DensityDataset(ds_root)
    ids = ds.ids
    ds.manifest["splits"] = {"train": ids[:4], "val": ids[4:5], "test": ids[5:]}
    ds.save_manifest()
    lines: list[str] = []
    cfg = TrainConfig(datasets=[ds_root], output=tmp_path / "run", epochs=1, batch_size=2,
                      seed=0, threads=1, n_extra=16, elements=["Fe"], model=dict(SMALL))
    with pytest.raises(ValueError):
        train(cfg, log=lines.append)
    assert any("no POTCAR in its run folder" in ln for ln in lines)
