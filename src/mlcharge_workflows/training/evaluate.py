"""Model quality on records: the quick validation scores of the training loop and the test
metrics through the public prediction API (``predict_density``)."""

from __future__ import annotations

import time

import numpy as np
import torch

from mlcharge_workflows.model.atomic import AtomicDensityTable
from mlcharge_workflows.model.core import DensityModel
from mlcharge_workflows.model.predict import predict_density
from mlcharge_workflows.training.dataset import DensityRecord
from mlcharge_workflows.training.metrics import hartree_metric, nmape, summarize
from mlcharge_workflows.training.references import record_reference
from mlcharge_workflows.training.samples import Sample, half_to_grid


def quick_nmape(model: DensityModel, s: Sample) -> float:
    """NMAPE (%) on the record's grid from the record's G sphere, clipped and renormalised."""
    with torch.no_grad():
        tot, _ = model.fourier(s.cell)
        rho = half_to_grid(tot, s.cell.mill, s.grid_shape).double().cpu().numpy()
    rho = np.maximum(rho, 0.0)
    rho *= s.cell.n_electrons / (rho.mean() * s.cell.volume)
    return nmape(rho, s.true_grid.double().cpu().numpy())


def sad_grid(
    model: DensityModel, rec: DensityRecord, reference: AtomicDensityTable | None = None
) -> np.ndarray:
    """The atomic superposition alone (the baseline the model corrects) on the record's grid."""
    from mlcharge_workflows.model.atomic import sad_coefficients

    cell = model.prepare(rec.structure, spin=False, reference=reference)
    table = model.table if reference is None else reference
    tot, _ = sad_coefficients(table, cell.species, cell.frac, cell.lattice, rec.mill)
    zero = np.flatnonzero((rec.mill == 0).all(axis=1))
    tot[zero] = cell.n_electrons / cell.volume
    from mlcharge_workflows.density.grid import grid_from_coefficients

    return grid_from_coefficients(tot, rec.mill, rec.grid_shape)


def sad_nmape(model: DensityModel, rec: DensityRecord) -> float:
    """NMAPE (%) of the model's atomic superposition alone."""
    return nmape(sad_grid(model, rec), rec.to_grid().total)


def evaluate(model: DensityModel, records: list[DensityRecord]) -> dict:
    """Test metrics through the public API: ``predict_density`` on each record's own grid,
    on the record's own atomic reference."""
    rows = []
    refs: dict = {}
    for rec in records:
        true = rec.to_grid()
        ref = record_reference(model.table, rec, refs)
        t0 = time.perf_counter()
        pred = predict_density(rec.structure, rec.grid_shape, model, spin="model", reference=ref,
                               device=str(model.log_alpha.device))
        seconds = time.perf_counter() - t0
        sad = sad_grid(model, rec, ref)
        lattice = rec.structure.lattice.matrix
        row = {
            "id": rec.id,
            "dataset": (rec.metadata or {}).get("_dataset"),
            "formula": rec.structure.composition.reduced_formula,
            "n_atoms": len(rec.structure),
            "nmape": nmape(pred.total, true.total),
            "sad_nmape": nmape(sad, true.total),
            "hartree": hartree_metric(pred.total - true.total, lattice),
            "sad_hartree": hartree_metric(sad - true.total, lattice),
            "clipped_electrons": pred.metadata["clipped_electrons"],
            "seconds": seconds,
        }
        row["hartree_ratio"] = row["hartree"] / row["sad_hartree"] if row["sad_hartree"] > 0 else None
        if true.magnetization is not None:
            m = pred.magnetization if pred.magnetization is not None else np.zeros(true.shape)
            row["magnetization_true"] = true.total_magnetization
            row["magnetization_pred"] = float(m.mean() * true.volume)
            row["magnetization_nmape"] = nmape(m, true.magnetization)
        rows.append(row)
    by_dataset = {}
    for name in sorted({str(r["dataset"]) for r in rows}):
        sub = [r for r in rows if str(r["dataset"]) == name]
        by_dataset[name] = {
            "nmape": summarize([r["nmape"] for r in sub]),
            "sad_nmape": summarize([r["sad_nmape"] for r in sub]),
        }
    return {
        "nmape": summarize([r["nmape"] for r in rows]),
        "sad_nmape": summarize([r["sad_nmape"] for r in rows]),
        "hartree_ratio": summarize([r["hartree_ratio"] for r in rows if r["hartree_ratio"] is not None]),
        "magnetization_nmape": summarize([r["magnetization_nmape"] for r in rows if "magnetization_nmape" in r]),
        "by_dataset": by_dataset,
        "records": rows,
    }
