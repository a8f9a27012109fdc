"""Model quality on records: the quick validation scores of the training loop and the test
metrics through the public prediction API (``predict_density``).

Two scores per record: NMAPE (%) and pw.x's SCF error (:func:`~mlcharge_workflows.training.
metrics.scf_error`: the functional behind pw.x's "estimated scf accuracy", here of the ML start
minus the converged density, i.e. the distance to the solution in pw.x's own norm, not the
accuracy pw.x prints at iteration 1) per atom, in Ry, over the smooth sphere of the run that made the record
(``4 * ecutwfc``; every stored G for a record without ``ecutwfc_ry``, e.g. an ingested VASP run).
Both are taken on the density as it is written for an engine: clipped at zero, renormalised to
the electron count, ``|m| <= rho``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mlcharge_workflows.model.atomic import AtomicDensityTable
from mlcharge_workflows.model.core import DensityModel
from mlcharge_workflows.model.predict import predict_density
from mlcharge_workflows.training.dataset import DensityRecord
from mlcharge_workflows.training.metrics import (
    geometric_mean,
    hartree_metric,
    nmape,
    scf_error,
    scf_error_coefficients,
    summarize,
)
from mlcharge_workflows.training.references import record_reference
from mlcharge_workflows.training.samples import Sample, half_to_grid


def pwx_ecut_ry(rec: DensityRecord) -> float | None:
    """pw.x's smooth-sphere cutoff ``4 * ecutwfc`` (Ry) of the run that made ``rec``; None: unknown."""
    ecutwfc = (rec.metadata or {}).get("ecutwfc_ry")
    return 4.0 * float(ecutwfc) if ecutwfc else None


def _written_density(model: DensityModel, s: Sample, spin: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's total (and magnetisation) on the record's grid, as written for an engine."""
    with torch.no_grad():
        tot, mag = model.fourier(s.cell)
        rho = half_to_grid(tot, s.cell.mill, s.grid_shape).double().cpu().numpy()
        m = None if not spin or mag is None else half_to_grid(mag, s.cell.mill, s.grid_shape).double().cpu().numpy()
    rho = np.maximum(rho, 0.0)
    rho *= s.cell.n_electrons / (rho.mean() * s.cell.volume)
    if m is not None:
        m = np.clip(m, -rho, rho)
    return rho, m


def quick_nmape(model: DensityModel, s: Sample) -> float:
    """NMAPE (%) on the record's grid from the record's G sphere, clipped and renormalised."""
    rho, _ = _written_density(model, s, spin=False)
    return nmape(rho, s.true_grid.double().cpu().numpy())


def _half_coefficients(values: np.ndarray, mill: np.ndarray) -> np.ndarray:
    """``fftn(values) / N`` at Miller indices with ``m3 >= 0`` (from the real FFT)."""
    c = np.fft.rfftn(values) / values.size
    n = values.shape
    return c[mill[:, 0] % n[0], mill[:, 1] % n[1], mill[:, 2]]


def validation_scores(model: DensityModel, s: Sample) -> dict:
    """NMAPE (%) and pw.x's SCF error per atom (Ry; its charge and magnetisation terms) of one
    sample, from one evaluation of the model."""
    spin = s.target_mag is not None
    rho, m = _written_density(model, s, spin)
    mill = s.cell.mill
    weights = s.weight.double().cpu().numpy()
    d_tot = _half_coefficients(rho, mill) - s.target.cpu().numpy().astype(complex)
    d_mag = None
    if spin:
        target_mag = s.target_mag.cpu().numpy().astype(complex)
        d_mag = (_half_coefficients(m, mill) if m is not None else 0.0) - target_mag
    lattice = s.record.structure.lattice.matrix
    charge, mag = scf_error_coefficients(d_tot, d_mag, mill, lattice, pwx_ecut_ry(s.record), weights)
    n_atoms = len(s.record.structure)
    return {
        "nmape": nmape(rho, s.true_grid.double().cpu().numpy()),
        "scf_error": (charge + mag) / n_atoms,
        "scf_error_charge": charge / n_atoms,
        "scf_error_magnetization": mag / n_atoms,
    }


def aggregate_validation(rows: list[dict]) -> dict:
    """The validation split's scores: mean NMAPE (%), and the SCF error per atom (Ry) as the
    geometric mean (what selects checkpoints: SCF iterations grow with its logarithm, so each
    record counts by its factor of improvement) with its median and arithmetic mean beside it."""
    errors = [r["scf_error"] for r in rows]
    return {
        "val_nmape": float(np.mean([r["nmape"] for r in rows])),
        "val_scf_error": geometric_mean(errors),
        "val_scf_error_median": float(np.median(errors)),
        "val_scf_error_mean": float(np.mean(errors)),
    }


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
            "scf_error": scf_error(pred, true, pwx_ecut_ry(rec)) / len(rec.structure),
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
        "scf_error": summarize([r["scf_error"] for r in rows]),
        "scf_error_geometric_mean": geometric_mean([r["scf_error"] for r in rows]) if rows else None,
        "hartree_ratio": summarize([r["hartree_ratio"] for r in rows if r["hartree_ratio"] is not None]),
        "magnetization_nmape": summarize([r["magnetization_nmape"] for r in rows if "magnetization_nmape" in r]),
        "by_dataset": by_dataset,
        "records": rows,
    }
