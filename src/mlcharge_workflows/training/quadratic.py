"""The exact training loss as a quadratic form in the orbital coefficients.

With fixed exponents the model's Fourier coefficients are *linear* in the orbital
coefficients ``x`` the network predicts: ``c(G) = SAD(G) + A(G) x``. The G-space L2 loss
of a record, ``V sum_G w |c_pred - c_true|² / N`` over its whole G sphere (what
``loss_g2`` estimates from the core rows plus a random sample of the others), is then

    loss(x) = (V / N) (x^T P x - 2 q^T x + r)

with ``P = Re(A^H W A)``, ``q = Re(A^H W (c_true - SAD))`` and ``r = sum w |c_true - SAD|²``,
computed once per record (the magnetisation alike). A training step then costs a small
matrix-vector product per structure instead of the orbitals at every G vector, so the
network, not the density evaluation, sets the pace, and every G counts at every step.

Hand-written: the design matrix ``A`` (the orbital formula of
:func:`mlcharge_workflows.model.basis.species_fourier`, which only evaluates sums with
given coefficients); its agreement with the model is tested to float64 precision.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlcharge_workflows.model.basis import q_cutoff, radial_factors
from mlcharge_workflows.model.core import DensityModel

#: G vectors per block while accumulating ``A^H W A`` (bounds memory: block x columns x 16 bytes).
CHUNK = 4096
#: An orbital whose |value| stays below DROP (times weight / V) on a whole block of G is left out there.
DROP = 1e-8


@dataclass
class QuadraticBlock:
    """``x^T P x - 2 q^T x + r`` for one density (total or magnetisation) of one record."""

    P: torch.Tensor  # (n, n) float64
    q: torch.Tensor  # (n,) float64
    r: float

    def value(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.P.dtype)
        return x @ (self.P @ x) - 2.0 * (self.q @ x) + self.r


@dataclass
class QuadraticLoss:
    """The exact G-space L2 loss of one record as a function of the network's coefficients."""

    species_order: list[np.ndarray]  # atoms of each species, in the column order
    total: QuadraticBlock
    magnetization: QuadraticBlock | None
    scale: float  # V / N

    def flatten(self, coeffs: torch.Tensor) -> torch.Tensor:
        """The coefficient vector in column order: species by species, atom by atom."""
        return torch.cat([coeffs[torch.as_tensor(sel, device=coeffs.device)].reshape(-1) for sel in self.species_order])

    def __call__(self, coeffs: tuple[torch.Tensor, torch.Tensor], magnetization_weight: float = 1.0) -> torch.Tensor:
        loss = self.total.value(self.flatten(coeffs[0]))
        if self.magnetization is not None:
            loss = loss + magnetization_weight * self.magnetization.value(self.flatten(coeffs[1]))
        return self.scale * loss

    def to(self, device) -> QuadraticLoss:
        move = lambda b: None if b is None else QuadraticBlock(b.P.to(device), b.q.to(device), b.r)
        return QuadraticLoss(self.species_order, move(self.total), move(self.magnetization), self.scale)


def check_model(model: DensityModel) -> None:
    """``ValueError`` unless the model's coefficients enter its density linearly."""
    if model.log_alpha.requires_grad or model.log_alpha_mag.requires_grad:
        raise ValueError(
            "loss_mode 'quadratic' needs fixed orbital exponents: set model: {learn_exponents: false} "
            "(learned exponents make the density non-linear in the parameters)"
        )
    if model.config.learn_moments:
        raise ValueError("loss_mode 'quadratic' does not support model: {learn_moments: true}")


def design_columns(geom, atoms: np.ndarray, rows: np.ndarray, layout, alpha: torch.Tensor, q_max: float):
    """Real and imaginary parts ``(len(rows), len(atoms) * layout.dim)`` of ``phi_o(G) exp(-iG·R_a) / V``:
    the column of orbital ``o`` of atom ``a`` (atom-major), at the G vectors ``rows`` of ``geom``;
    ``alpha`` the exponents, orbitals cut at ``|G| > q_max`` (as :func:`~mlcharge_workflows.model.basis.species_fourier`)."""
    rows_t = torch.as_tensor(rows)
    q = geom.q[rows_t]
    radial = radial_factors(q, alpha.to(q.dtype), layout.radial_l()) * (q <= q_max).to(q.dtype)[:, None]
    rad, ls, ys = layout.columns()
    sign = torch.as_tensor([1.0, -1.0, -1.0, 1.0], dtype=q.dtype)[torch.as_tensor(ls % 4)]
    basis = radial[:, torch.as_tensor(rad)] * geom.ylm[rows_t][:, torch.as_tensor(ys)] * sign
    cos, sin = geom.phases(atoms, rows)  # (B, n_atoms)
    odd = torch.as_tensor(ls % 2 == 1)
    # even l: b (cos - i sin); odd l: i b (cos - i sin) = b (sin + i cos)
    re = torch.where(odd[None, None, :], sin[:, :, None], cos[:, :, None]) * basis[:, None, :]
    im = torch.where(odd[None, None, :], cos[:, :, None], -sin[:, :, None]) * basis[:, None, :]
    return re.reshape(len(rows), -1) / geom.volume, im.reshape(len(rows), -1) / geom.volume


def quadratic_loss(model: DensityModel, structure, mill: np.ndarray, total: np.ndarray,
                   magnetization: np.ndarray | None) -> QuadraticLoss:
    """The exact loss of one record (``mill``: its ``m3 >= 0`` half sphere; ``total`` and
    ``magnetization``: its coefficients there, e/Å³), evaluated in float64."""
    check_model(model)
    m64 = model if model.log_alpha.dtype == torch.float64 and model.log_alpha.device.type == "cpu" else float64_copy(model)
    spin = magnetization is not None
    cell = m64.prepare(structure, spin=spin)
    m64.attach_mill(cell, mill)
    geom = cell.geom
    weight = np.where(mill[:, 2] > 0, 2.0, 1.0)
    zero = (torch.zeros(len(cell.species), m64.layout.dim, dtype=torch.float64),
            torch.zeros(len(cell.species), m64.mag_layout.dim, dtype=torch.float64))
    with torch.no_grad():
        sad_tot, sad_mag = m64.fourier(cell, zero)
    order = [np.flatnonzero(cell.species == s) for s in np.unique(cell.species)]
    blocks = []
    for key, target, sad in (("tot", total, sad_tot), ("mag", magnetization, sad_mag)):
        if target is None or (key == "mag" and not m64.mag_layout.n_radial):
            blocks.append(None)
            continue
        mag = key == "mag"
        rows = np.arange(len(mill)) if mag else np.flatnonzero(np.any(mill != 0, axis=1))  # G = 0 is fixed to N/V
        rows = rows[np.argsort(geom.q_np[rows], kind="stable")]  # by |G|: diffuse orbitals drop out of late blocks
        resid = torch.as_tensor(np.asarray(target)[rows], dtype=torch.complex128) - sad.detach()[torch.as_tensor(rows)]
        w = torch.as_tensor(weight[rows])
        layout = m64.mag_layout if mag else m64.layout
        n = len(cell.species) * layout.dim
        P = torch.zeros(n, n, dtype=torch.float64)
        q = torch.zeros(n, dtype=torch.float64)
        alphas = m64.alphas(mag).detach()
        per_species = [  # (atoms, exponents, |G| cut) in column order
            (sel, alphas[s], min(q_cutoff(float(alphas[s].max()), layout.lmax), float(m64.species_qmax()[s])))
            for s, sel in zip(np.unique(cell.species), order)
        ]
        for start in range(0, len(rows), CHUNK):
            idx = rows[start : start + CHUNK]
            part = slice(start, start + CHUNK)
            sw = torch.sqrt(w[part])[:, None]
            res = resid[part]
            cols_re, cols_im = [], []
            for sel, alpha, q_max in per_species:
                re, im = design_columns(geom, sel, idx, layout, alpha, q_max)
                cols_re.append(re)
                cols_im.append(im)
            a_re = torch.cat(cols_re, 1) * sw
            a_im = torch.cat(cols_im, 1) * sw
            # columns that vanish on this whole block (an orbital far beyond its |G| range) are
            # skipped: most G lie at large |G|, where only the tightest orbitals remain
            act = torch.nonzero((a_re.abs().amax(0) + a_im.abs().amax(0)) > DROP * float(sw.max()) / geom.volume)[:, 0]
            if len(act) == 0:
                continue
            a_re, a_im = a_re[:, act], a_im[:, act]
            P[act[:, None], act[None, :]] += a_re.T @ a_re + a_im.T @ a_im
            q[act] += a_re.T @ (sw[:, 0] * res.real) + a_im.T @ (sw[:, 0] * res.imag)
        blocks.append(QuadraticBlock(P, q, float((w * resid.abs() ** 2).sum())))
    return QuadraticLoss(order, blocks[0], blocks[1], cell.volume / cell.n_electrons)


def float64_copy(model: DensityModel) -> DensityModel:
    """A float64 CPU copy of ``model`` (make it once for many records: copying costs ~1 s)."""
    return copy.deepcopy(model).double().cpu()


def model_key(model: DensityModel) -> str:
    """A hash of everything the quadratic loss depends on besides the record."""
    cfg = model.config.to_dict()
    h = hashlib.sha256()
    h.update(json.dumps({"muls": [list(cfg["orbital_muls"]), list(cfg["magnetization_muls"])],
                         "elements": cfg["elements"], "use_sad": cfg["use_sad"],
                         "start": cfg["starting_magnetization"]}, sort_keys=True).encode())
    # float32 bytes: weights files keep the atomic-density table and the parameters in float32,
    # so a model saved and loaded again (fine-tuning) finds the forms of the model it came from
    arrays = [model.alphas(False), model.alphas(True), model.species_qmax()]
    if cfg["use_sad"]:
        arrays += [model.table.q, model.table.values, model.table.z_valence]
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def cached_quadratic_loss(model: DensityModel, rec, mill, total, magnetization, cache_dir: Path | None) -> QuadraticLoss:
    """:func:`quadratic_loss`, kept in ``cache_dir/<model key>/<record id>.pt`` for later runs."""
    path = None
    if cache_dir is not None:
        ds = hashlib.sha256(str((rec.metadata or {}).get("_dataset", "")).encode()).hexdigest()[:8]
        path = Path(cache_dir) / model_key(model) / f"{ds}-{rec.id}.pt"
        if path.is_file():
            try:
                d = torch.load(path, weights_only=False)
                mag = QuadraticBlock(*d["mag"]) if d["mag"] is not None else None
                return QuadraticLoss(d["order"], QuadraticBlock(*d["tot"]), mag, d["scale"])
            except Exception:  # a truncated file: recompute
                path.unlink(missing_ok=True)
    loss = quadratic_loss(model, rec.structure, mill, total, magnetization)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pack = lambda b: None if b is None else (b.P, b.q, b.r)
        tmp = path.with_suffix(".tmp")
        torch.save({"order": loss.species_order, "tot": pack(loss.total), "mag": pack(loss.magnetization),
                    "scale": loss.scale}, tmp)
        tmp.replace(path)
    return loss


__all__ = ["QuadraticBlock", "QuadraticLoss", "cached_quadratic_loss", "check_model", "quadratic_loss", "model_key", "float64_copy", "design_columns"]
