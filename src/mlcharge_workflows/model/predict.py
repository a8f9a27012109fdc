"""Inference: a structure in, its predicted density on any grid (or at QE's G vectors) out.

The density is evaluated analytically at every G vector of the grid (skipping those where
the atomic densities and orbitals vanish), brought to real space with one inverse FFT,
kept above a floor (half the atomic superposition) and renormalised to the electron count
(the charge the floor added is recorded in ``clipped_electrons``).

The atomic reference is the training table unless ``reference`` names the run's own
pseudopotentials (UPF files or POTCAR densities): the prediction is then that reference
plus the learned deformation and integrates to the reference's valence count; its
metadata says which pseudopotentials the reference came from and whether they differ
from the training ones (``metadata["reference"]``).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.model.atomic import AtomicDensityTable, AtomicReference
from mlcharge_workflows.model.core import DensityModel
from mlcharge_workflows.model.io import DEFAULT_WEIGHTS, load_weights

if TYPE_CHECKING:
    from pymatgen.core import Structure

_cache: dict[str, DensityModel] = {}
_lock = threading.Lock()


def _default_threads() -> int:
    """torch threads for a prediction: ``MLCHARGE_MODEL_THREADS``, else 1.

    One thread is the default on purpose: next to running pw.x processes (the normal case
    on a worker) two torch threads were 8x slower than one on the 2-core test machine,
    because OpenMP threads spin while waiting for a core (docs/benchmarks.md).
    """
    value = os.environ.get("MLCHARGE_MODEL_THREADS", "1")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"MLCHARGE_MODEL_THREADS must be an integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"MLCHARGE_MODEL_THREADS must be >= 1, got {n}")
    return n


@contextmanager
def _torch_threads(n: int | None):
    previous = torch.get_num_threads()
    n = _default_threads() if n is None else int(n)
    if n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != previous:
            torch.set_num_threads(previous)


def load_model(path: str | Path | None = None) -> DensityModel:
    """Load a density model (cached per file).

    ``path`` None: ``MLCHARGE_MODEL_PATH`` if set, else the weights shipped in the package.
    Raises ``ValueError`` for a missing, corrupt or mismatched file.
    """
    if path is None:
        from mlcharge_workflows.settings import get_settings

        path = get_settings().model_path or DEFAULT_WEIGHTS
    key = str(Path(path).resolve())
    with _lock:
        if key not in _cache:
            _cache[key] = load_weights(path)
        return _cache[key]


def default_grid(structure: Structure, model: DensityModel, ecutrho_ry: float | None = None) -> tuple[int, int, int]:
    """pw.x's FFT grid for the structure at ``ecutrho_ry`` (default: the training protocol's cutoff)."""
    from mlcharge_workflows.density.qe_gvectors import qe_fft_grid

    if ecutrho_ry is None:
        table = model.config.ecutrho_ry
        symbols = {s.specie.symbol for s in structure}
        if not table or not symbols <= set(table):
            raise ValueError(
                "the model stores no default ecutrho for "
                f"{sorted(symbols - set(table))}; pass a grid shape or ecutrho_ry"
            )
        ecutrho_ry = max(table[s] for s in symbols)
    return qe_fft_grid(structure.lattice.matrix, float(ecutrho_ry))


def _half_miller(shape: tuple[int, int, int]) -> np.ndarray:
    """Miller indices with ``m3 >= 0`` of a grid without its Nyquist planes.

    The density is real, so ``c(-m) = conj(c(m))``: this half (what ``irfftn`` takes) suffices.
    """
    lim = (np.asarray(shape) - 1) // 2
    axes = [np.arange(-lim[0], lim[0] + 1), np.arange(-lim[1], lim[1] + 1), np.arange(0, lim[2] + 1)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _q_needed(model: DensityModel, species: np.ndarray) -> float:
    """|G| (Å⁻¹) of the model's density sphere for these species: the largest species cutoff.

    The model was trained on pw.x densities, which hold nothing beyond the ``ecutrho``
    sphere; evaluating the same sphere keeps the prediction consistent on any grid.
    """
    return float(model.species_qmax()[np.unique(species)].max())


def resolve_device(device: str | None = None) -> str:
    """The torch device of a prediction: the argument, else ``MLCHARGE_MODEL_DEVICE``, else
    ``"auto"``; ``"auto"`` is ``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    value = device or os.environ.get("MLCHARGE_MODEL_DEVICE") or "auto"
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {value!r}")
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {value!r} requested but torch sees no CUDA GPU")
    return value


def reference_table(
    model: DensityModel,
    reference: AtomicDensityTable | dict[str, AtomicReference | str | Path] | None,
) -> AtomicDensityTable | None:
    """The atomic reference table of a prediction (None: the training table).

    ``reference`` is a table in the model's element order, or ``{element: AtomicReference
    or UPF path}``; elements not in it keep their training rows.
    """
    if reference is None or isinstance(reference, AtomicDensityTable):
        return reference
    refs = {
        el: ref if isinstance(ref, AtomicReference) else AtomicReference.from_upf(ref)
        for el, ref in reference.items()
    }
    return model.table.with_references(refs)


def reference_metadata(model: DensityModel, table: AtomicDensityTable | None, structure) -> dict:
    """Which pseudopotentials the atomic reference of ``structure`` came from (per element)."""
    elements = sorted({s.specie.symbol for s in structure})
    if table is None:
        return {
            "source": "training",
            "elements": {el: {"source": "training"} for el in elements},
            "differs_from_training": False,
        }
    cmp = table.compare(model.table, elements)
    per = {}
    for el in elements:
        per[el] = {"source": table.sources.get(el, {"kind": "training"}), **cmp[el]}
    kinds = {table.sources[el]["kind"] for el in elements if el in table.sources}
    return {
        "source": "+".join(sorted(kinds)) if kinds else "training",
        "elements": per,
        "differs_from_training": any(v["differs_from_training"] for v in cmp.values()),
    }


def predict_fourier(
    structure: Structure,
    shape: tuple[int, int, int],
    model: DensityModel,
    reference: AtomicDensityTable | None = None,
    moments_start: bool = False,
) -> dict:
    """Unclipped coefficients on half of a grid's G box.

    Keys: ``mill``, ``total``, ``magnetization`` (None for non-magnetic cells), ``sad_total``,
    ``sad_magnetization`` (the atomic superposition alone, None without SAD), ``n_electrons``,
    ``site_moments`` (μB per atom of the learned magnetisation; None for non-magnetic cells),
    and with ``moments_start`` ``moments_magnetization``: the atomic magnetisation with those
    moments as the starting moments (spin start ``"moments"``).
    ``reference``: the atomic table (see :func:`reference_table`; None: the training one).
    The G vectors evaluated are the model's density sphere, and up to a reference's own
    range where it is larger (VASP superposes its POTCAR tables on the whole grid).
    """
    cell = model.prepare(structure, reference=reference)
    mill = _half_miller(shape)
    recip = 2 * np.pi * np.linalg.inv(cell.lattice).T
    q = np.linalg.norm(mill @ recip, axis=1)
    q_needed = _q_needed(model, cell.species)
    if reference is not None:
        present = {model.config.elements[s] for s in np.unique(cell.species)}
        q_needed = max([q_needed] + [reference.sources[el]["q_max"] for el in present
                                     if reference.sources.get(el, {}).get("kind") == "POTCAR"])
    mill = mill[q <= q_needed]
    model.attach_mill(cell, mill)
    sad: list = []
    with torch.no_grad():
        coeffs = model.orbital_coefficients([cell])[0]
        tot, mag = model.fourier(cell, coeffs=coeffs, sad_out=sad)
        moments = model.site_moments(cell, coeffs) if cell.spin else None
        scaled = model.atomic_magnetization(cell, moments) if moments_start and cell.spin else None
    out = {"mill": mill, "n_electrons": cell.n_electrons, "site_moments": moments}
    zero = np.flatnonzero((mill == 0).all(axis=1))
    names = ("total", "magnetization", "sad_total", "sad_magnetization", "moments_magnetization")
    for name, value in zip(names, [tot, mag] + (sad or [None, None]) + [scaled]):
        arr = None if value is None else value.detach().cpu().numpy().astype(np.complex128)
        if arr is not None and not np.all(np.isfinite(arr)):
            raise RuntimeError(
                f"the density model produced non-finite values for {structure.composition.formula}"
            )
        if arr is not None and name.endswith("total"):
            arr[zero] = cell.n_electrons / cell.volume  # exact in float64 whatever the model dtype
        out[name] = arr
    return out


#: ``model``: the learned rho and m; ``atomic``: pw.x's own start for both (the atomic
#: superposition with the starting moments); ``charge``: the learned rho with the atomic m;
#: ``moments``: the learned rho with the atomic m scaled to each atom's learned moment (the
#: learned m's per-atom integrals, without its orbital shape).
SPIN_STARTS = ("model", "atomic", "charge", "moments")


def _spin_start(value: str | None, model: DensityModel | None = None) -> str:
    """The spin start: the argument, else ``MLCHARGE_MODEL_SPIN``, else the weights' own
    default (``metadata['spin_start_default']``, set when they were shipped from measurements),
    else ``"atomic"``."""
    meta = getattr(model, "metadata", None) or {}
    value = value or os.environ.get("MLCHARGE_MODEL_SPIN") or meta.get("spin_start_default") or "atomic"
    if value not in SPIN_STARTS:
        raise ValueError(f"spin start must be one of {', '.join(map(repr, SPIN_STARTS))}, got {value!r}")
    return value


def _good_fft_size(n: int) -> int:
    """Smallest ``m >= n`` with no prime factor above 5."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _to_grid(coeffs: np.ndarray, mill: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Real-space grid from coefficients on the half box of :func:`_half_miller`."""
    f = np.zeros((shape[0], shape[1], shape[2] // 2 + 1), dtype=complex)
    f[mill[:, 0] % shape[0], mill[:, 1] % shape[1], mill[:, 2]] = coeffs
    return np.fft.irfftn(f, s=shape, axes=(0, 1, 2)) * float(np.prod(shape))


def predict_density(
    structure: Structure,
    shape: tuple[int, int, int] | None = None,
    model: DensityModel | None = None,
    *,
    ecutrho_ry: float | None = None,
    clip: bool = True,
    floor: float = 0.5,
    spin: str | None = None,
    threads: int | None = None,
    reference: AtomicDensityTable | dict | None = None,
    device: str | None = None,
) -> DensityGrid:
    """Predicted valence density (and magnetisation for magnetic cells) on a real-space grid.

    Parameters
    ----------
    structure
        pymatgen Structure; elements must be in ``model.supported_elements``. A ``magmom``
        site property sets the starting moments (μB), else the model's per-element defaults.
    shape
        Grid ``(n1, n2, n3)``; None: pw.x's FFT grid at ``ecutrho_ry`` (default: the cutoff
        of the QE protocol the model was trained with).
    model
        A loaded model; None loads the shipped one.
    clip
        Keep the density at least ``floor`` times the atomic superposition (0 without one)
        and renormalise to the electron count (the charge added is recorded in
        ``metadata['clipped_electrons']``); ``|m|`` is clipped to rho.
    floor
        See ``clip``. The correction's tight orbitals can dip below zero right at a nucleus,
        where pw.x's GGA potential is most sensitive; the floor keeps the core atomic-like.
    spin
        For a cell with a magnetisation: ``"model"`` predicts rho and m with the model;
        ``"atomic"`` returns the starting-moment superposition of atomic densities for both,
        i.e. pw.x's own start; ``"charge"`` the learned rho with that atomic m; ``"moments"``
        the learned rho with the atomic m scaled to each atom's learned moment
        (``metadata['site_moments']``). None: ``MLCHARGE_MODEL_SPIN``, else the default recorded in
        the weights (``metadata['spin_start_default']``; the shipped weights say which their
        SCF benchmark favoured, docs/model-card.md), else ``"atomic"``.
    threads
        torch threads for this call (default ``MLCHARGE_MODEL_THREADS`` or 1).
    reference
        The atomic densities the learned deformation is added to: ``{element: UPF path or
        AtomicReference}`` (the run's own pseudopotentials; PAW UPF files are refused) or a
        table from :func:`reference_table`; None: the training pseudopotentials. The
        result integrates to the reference's valence count, with no rescaling.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:N]"``; None:
        ``MLCHARGE_MODEL_DEVICE``, else ``"auto"``. The model is moved there.
    """
    t0 = time.perf_counter()
    model = model or load_model()
    spin_start = _spin_start(spin, model)
    shape = tuple(int(n) for n in (shape or default_grid(structure, model, ecutrho_ry)))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"grid shape must be three positive integers, got {shape}")
    table = reference_table(model, reference)
    dev = resolve_device(device)
    with _lock:
        if str(model.log_alpha.device) != dev and not (
            dev == "cuda" and model.log_alpha.device.type == "cuda"
        ):
            model.to(dev)
    with _torch_threads(threads):
        f = predict_fourier(structure, shape, model, table, moments_start=spin_start == "moments")
    mill, nelec = f["mill"], f["n_electrons"]
    atomic = f["magnetization"] is not None and spin_start == "atomic" and f["sad_total"] is not None
    atomic_m = f["magnetization"] is not None and spin_start in ("atomic", "charge")
    if f["magnetization"] is not None and spin_start in ("charge", "moments") and f["sad_magnetization"] is None:
        raise ValueError(f"spin start {spin_start!r} needs the atomic magnetisation of the reference densities")
    tot = f["sad_total"] if atomic else f["total"]
    mag = f["sad_magnetization"] if atomic_m else f["magnetization"]
    if f["magnetization"] is not None and spin_start == "moments":
        mag = f["moments_magnetization"]
    if f["magnetization"] is not None and mag is None:
        mag = np.zeros_like(tot)
    total = _to_grid(tot, mill, shape)
    magnetization = None if mag is None else _to_grid(mag, mill, shape)
    clipped = 0.0
    if clip:
        volume = structure.lattice.volume
        low = 0.0 if f["sad_total"] is None else floor * _to_grid(f["sad_total"], mill, shape)
        low = np.maximum(low, 0.0)
        clipped = float(np.maximum(low - total, 0.0).mean() * volume)
        total = np.maximum(total, low)
        total *= nelec / (total.mean() * volume)
        if magnetization is not None:
            magnetization = np.clip(magnetization, -total, total)
    meta = {
        "source_format": "mlcharge-model",
        "model": getattr(model, "weights_path", None),
        "model_version": model.metadata.get("version"),
        "n_electrons": nelec,
        "clipped_electrons": clipped,
        "spin_start": None if f["magnetization"] is None else spin_start,
        "site_moments": None if f["site_moments"] is None else [float(m) for m in f["site_moments"]],
        "reference": reference_metadata(model, table, structure),
        "device": dev,
        "seconds": time.perf_counter() - t0,
    }
    return DensityGrid(structure, total, magnetization, metadata=meta)


def predict_qe_coefficients(
    structure: Structure, mill: np.ndarray, model: DensityModel | None = None, **kwargs
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted coefficients (e/Å³, convention of ``density.grid``) at QE's Miller indices.

    The density is made on the smallest FFT grid holding ``mill`` (clipped at zero and
    renormalised there), so the ``G = 0`` coefficient is ``N_valence / V`` exactly.
    ``kwargs`` go to :func:`predict_density`. Returns ``(total, magnetization or None)``.
    """
    mill = np.asarray(mill, dtype=np.int64).reshape(-1, 3)
    shape = tuple(_good_fft_size(int(n)) for n in 2 * np.abs(mill).max(axis=0) + 1)
    grid = predict_density(structure, shape, model, **kwargs)
    return grid.fourier(mill)
