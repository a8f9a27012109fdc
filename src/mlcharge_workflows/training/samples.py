"""A record prepared for training: its cell, targets and G-space weights.

A sample holds the ``m3 >= 0`` half of the record's G sphere (Hermitian symmetry gives the
rest; ``weight`` is 2 for ``m3 > 0`` and 1 for ``m3 = 0``, so sums over the half are sums
over the full sphere), and the true total density on the record's grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mlcharge_workflows.model.atomic import AtomicDensityTable
from mlcharge_workflows.model.core import Cell, DensityModel
from mlcharge_workflows.training.dataset import DensityRecord
from mlcharge_workflows.training.references import record_reference


@dataclass
class Sample:
    """A record prepared for training: a cell on the record's ``m3 >= 0`` G half-sphere."""

    id: str
    cell: Cell
    target: torch.Tensor  # (N,) complex | total coefficients, e/Å³
    target_mag: torch.Tensor | None  # (N,) complex | magnetisation coefficients
    weight: torch.Tensor  # (N,) | 2 for m3 > 0, 1 for m3 = 0 (Parseval over the full sphere)
    core: np.ndarray  # rows with |G| <= q_core
    rest: np.ndarray  # the other rows
    grid_shape: tuple[int, int, int]
    true_grid: torch.Tensor  # grid_shape | true total density, e/Å³
    true_abs: float  # sum |rho_true|
    record: DensityRecord


def prepare_sample(
    model: DensityModel, rec: DensityRecord, q_core: float = 10.0,
    reference: AtomicDensityTable | None = None,
) -> Sample:
    """Cell, targets and weights of one record (the ``m3 >= 0`` half of its G sphere).

    ``reference``: the record's own atomic table (:func:`record_reference`); the record's
    electron count must be that reference's valence count.
    """
    half = rec.mill[:, 2] >= 0
    mill = rec.mill[half]
    spin = rec.magnetization is not None
    cell = model.prepare(rec.structure, spin=spin, reference=reference)
    if abs(cell.n_electrons - rec.n_electrons) > 1e-3 * max(cell.n_electrons, 1.0):
        raise ValueError(
            f"record {rec.id} holds {rec.n_electrons:.4f} electrons, the valences of its "
            f"pseudopotentials give {cell.n_electrons:.4f}"
        )
    model.attach_mill(cell, mill)
    dev = model.log_alpha.device
    cdtype = torch.complex64 if model.log_alpha.dtype == torch.float32 else torch.complex128
    grid = rec.to_grid().total
    q = cell.geom.q_np
    return Sample(
        id=rec.id,
        cell=cell,
        target=torch.as_tensor(rec.total[half], dtype=cdtype, device=dev),
        target_mag=None if not spin else torch.as_tensor(rec.magnetization[half], dtype=cdtype, device=dev),
        weight=torch.as_tensor(np.where(mill[:, 2] > 0, 2.0, 1.0), dtype=model.log_alpha.dtype, device=dev),
        core=np.flatnonzero(q <= q_core),
        rest=np.flatnonzero(q > q_core),
        grid_shape=tuple(rec.grid_shape),
        true_grid=torch.as_tensor(grid, dtype=model.log_alpha.dtype, device=dev),
        true_abs=float(np.abs(grid).sum()),
        record=rec,
    )


def usable(model: DensityModel, rec: DensityRecord, refs: dict, log) -> bool:
    """Whether a test record's reference can be built (else it is skipped and logged)."""
    try:
        record_reference(model.table, rec, refs)
    except ValueError as exc:
        log(f"skipping {rec.id}: {exc}")
        return False
    return True


def half_to_grid(coeffs: torch.Tensor, mill: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """Real-space grid (differentiable) from coefficients on an ``m3 >= 0`` half set."""
    f = torch.zeros((shape[0], shape[1], shape[2] // 2 + 1), dtype=coeffs.dtype, device=coeffs.device)
    idx = (
        torch.as_tensor(mill[:, 0] % shape[0], device=coeffs.device),
        torch.as_tensor(mill[:, 1] % shape[1], device=coeffs.device),
        torch.as_tensor(mill[:, 2], device=coeffs.device),
    )
    f = f.index_put(idx, coeffs)
    return torch.fft.irfftn(f, s=shape) * float(np.prod(shape))
