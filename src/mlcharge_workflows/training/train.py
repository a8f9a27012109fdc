"""Training of the density model: ``mlcharge train CONFIG.yaml``.

Loss per structure (weights in the config), with ``N`` the electron count:

* ``loss_g2``: ``V * sum_G |c_pred - c_true|² / N`` over the record's G sphere, which by
  Parseval is ``∫ |rho_pred - rho_true|² dr / N`` (``m3 >= 0`` half, doubled weights);
* ``loss_r1``: ``sum |rho_pred - rho_true| / sum |rho_true|`` on the engine's grid (NMAPE/100);
* ``loss_hartree``: ``4π V * sum_{G≠0, |G| <= q_core} w |c_pred - c_true|² / |G|² / N``, the
  Hartree energy of the error (what pw.x's "estimated scf accuracy" measures, and what the
  first SCF iterations must remove); the magnetisation has no Hartree term;
* magnetisation terms alike, scaled by ``magnetization_weight``.

Each record is fitted against its own atomic reference: the atomic densities of the
pseudopotentials it was computed with (:func:`record_reference`: a QE record's UPF files,
an ingested VASP record's POTCAR), so the network learns only the deformation
``rho - reference`` and records of any valence (Fe 8 e from QE, Fe_pv 14 e from VASP) train
one model. The table saved with the weights is the training reference (the QE registry's
files, or those the QE records name); a record on other files gets its own.

Splits come from the dataset manifest when it has them, else from a hash of each record's
composition family (stable while a dataset grows; a family never straddles splits). Shuffling uses ``default_rng([seed, epoch])``, so a resumed
run repeats the epochs it would have run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from mlcharge_workflows.model.atomic import AtomicDensityTable, AtomicReference
from mlcharge_workflows.model.core import Cell, DensityModel, ModelConfig
from mlcharge_workflows.model.io import save_model
from mlcharge_workflows.model.predict import predict_density
from mlcharge_workflows.training.dataset import DensityRecord
from mlcharge_workflows.training.metrics import hartree_metric, nmape, summarize
from mlcharge_workflows.training.shards import open_dataset


class TrainConfig(BaseModel):
    """Settings of one training run (YAML keys of ``mlcharge train``)."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[Path] = Field(..., description="Dataset folders (from data generate / data ingest).")
    output: Path = Field(Path("model_training"), description="Checkpoints, model.pt, metrics.json.")
    seed: int = 0
    epochs: int = 300
    batch_size: int = Field(4, ge=1, description="Structures per optimiser step.")
    lr: float = 5e-3
    lr_min: float = 1e-5
    lr_schedule: Literal["plateau", "cosine"] = Field(
        "plateau",
        description="plateau: halve the lr when validation stalls (patience/4 epochs); cosine: anneal "
        "from lr to lr_min over the run, i.e. over `epochs`, or with max_minutes over the number of "
        "epochs the first epoch's time says fit (recorded, so a resumed run keeps it).",
    )
    weight_decay: float = 0.0
    patience: int = Field(40, ge=1, description="Early stopping: epochs without validation gain.")
    loss_mode: Literal["sampled", "quadratic"] = Field(
        "sampled",
        description="sampled: the G-space terms on the core rows plus n_extra random others, the "
        "density evaluated at every step; quadratic: the exact loss_g2 over every G as a quadratic "
        "form in the network's coefficients, precomputed once per record (needs fixed exponents, "
        "model: {learn_exponents: false}; no loss_r1 / loss_hartree), so a step costs the network only.",
    )
    quadratic_cache: Path | None = Field(
        None, description="Folder keeping the precomputed quadratic forms between runs (None: OUTPUT/quadratic)."
    )
    val_every: int = Field(1, ge=1, description="Validation NMAPE (and early stopping) every this many epochs.")
    loss_g2: float = 1.0
    loss_r1: float = 0.0
    loss_hartree: float = Field(
        0.0, ge=0.0, description="Weight of the Hartree (1/G²-weighted) error term over |G| <= q_core."
    )
    q_core: float = Field(
        10.0, description="|G| (Å⁻¹) below which every G enters the G-space loss at every step."
    )
    n_extra: int = Field(
        1024, ge=0, description="G vectors beyond q_core sampled per structure and step (reweighted)."
    )
    magnetization_weight: float = 1.0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_minutes: float | None = Field(None, description="Stop (and keep the best model) after this.")
    max_atoms: int | None = Field(None, description="Skip records with more atoms.")
    device: str = Field("auto", description="auto (cuda when present), cpu or cuda.")
    threads: int | None = Field(None, description="torch CPU threads (None: torch default).")
    resume: bool = True
    train_on_val: bool = Field(
        False,
        description="Also fit the validation split (for the final model, once the epoch budget is "
        "known): no early stopping, the last epoch is kept, the test split stays held out.",
    )
    record_magmom: bool = Field(
        False,
        description="Feed each record's magmom site property (the initial moments the generator "
        "gave it) to the model as its input. Off (default): records are stripped of magmom and the "
        "model learns from the QE protocol's per-element starting moments, the ones pw.x and the "
        "workflows start from, so training and use see the same input.",
    )
    elements: list[str] | None = Field(None, description="Elements of the model; None: those in the data.")
    model: dict = Field(default_factory=dict, description="ModelConfig overrides.")
    init_weights: str | None = Field(
        None,
        description="Fine-tune: start from these weights ('default': the shipped model; or a "
        "weights file) instead of random ones. The architecture, elements, exponents and atomic "
        "densities are the weights' (no `model` overrides); the data may hold only their elements.",
    )

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"training config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:  # malformed YAML: the line and column, no traceback
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config is a YAML mapping")
        from mlcharge_workflows.validation import check_known_fields

        check_known_fields(data, cls.model_fields, f"training config ({path})")
        base = path.parent
        data["datasets"] = [str(base / d) if not Path(d).is_absolute() else d for d in data.get("datasets", [])]
        if "output" in data and not Path(data["output"]).is_absolute():
            data["output"] = str(base / data["output"])
        return cls(**data)


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


def hash_split(key: str, seed: int, val: float, test: float) -> str:
    """``train``/``val``/``test`` from a hash of ``key`` (a family): stable as the dataset grows."""
    u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12
    return "test" if u < test else "val" if u < test + val else "train"


def family(rec: DensityRecord) -> str:
    """Composition family of a record (metadata ``family``, else its chemical system)."""
    fam = (rec.metadata or {}).get("family")
    return str(fam) if fam else "-".join(sorted({s.specie.symbol for s in rec.structure}))


def load_records(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, list[DensityRecord]]:
    """All usable records of the configured datasets, by split.

    A record listed in its manifest's ``splits`` keeps that split; another record joins
    the split of its family when the family is listed, else a split drawn from a hash of
    the family name: a family never straddles splits, and splits stay put as data grows.
    """
    out: dict[str, list[DensityRecord]] = {"train": [], "val": [], "test": []}
    records, by_id = [], {}
    for root in cfg.datasets:
        ds = open_dataset(root)  # records/ folder or repository shards; ValueError if neither
        manifest_splits = (ds.manifest.get("splits") or {}) if isinstance(ds.manifest, dict) else {}
        for name in ("train", "val", "test"):
            by_id.update({(str(root), rid): name for rid in manifest_splits.get(name, [])})
        for rid in ds.ids:
            try:
                rec = ds[rid]
            except ValueError as exc:
                log(f"skipping {rid}: {exc}")
                continue
            if cfg.max_atoms and len(rec.structure) > cfg.max_atoms:
                continue
            rec.metadata = {**(rec.metadata or {}), "_dataset": str(root)}
            records.append(rec)
    key = lambda r: (r.metadata["_dataset"], r.id)  # noqa: E731
    by_family: dict[str, str] = {}
    for rec in records:  # families listed in a manifest keep their split, in every dataset
        if key(rec) in by_id:
            by_family.setdefault(family(rec), by_id[key(rec)])
    for rec in records:
        fam = family(rec)
        split = by_id.get(key(rec)) or by_family.get(fam)
        if split is None:
            split = by_family[fam] = hash_split(fam, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        out[split].append(rec)
    if not out["train"]:
        raise ValueError(f"no training records in {[str(d) for d in cfg.datasets]}")
    return out


def _pseudo_names(records: list[DensityRecord]) -> dict[str, str]:
    """Element -> UPF file name from the records' metadata (``{el: name}`` or ``{el: {"file": name}}``)."""
    names: dict[str, str] = {}
    for rec in records:
        meta = rec.metadata or {}
        for key in ("pseudopotentials", "pseudos"):
            if isinstance(meta.get(key), dict):
                for el, entry in meta[key].items():
                    name = entry.get("file") if isinstance(entry, dict) else entry
                    if name:
                        names.setdefault(el, Path(str(name)).name)
    return names


def build_table(elements: list[str], records: list[DensityRecord], workdir: Path) -> tuple[AtomicDensityTable, dict]:
    """Atomic density tables of ``elements`` from the UPF files the data was made with.

    A record's ``metadata['pseudopotentials']`` names the file; otherwise the QE registry's.
    Returns the table and the per-element ``ecutrho`` (Ry) of the QE protocol.
    """
    from mlcharge_workflows.units import BOHR_TO_ANGSTROM as QE_BOHR_TO_ANGSTROM
    from mlcharge_workflows.density.sad import read_upf_atomic_density
    from mlcharge_workflows.pseudo import get_pseudo, stage_pseudos
    from mlcharge_workflows.settings import get_settings

    names = _pseudo_names(records)
    staged = workdir / "pseudo"
    atoms, ecut = {}, {}
    for el in elements:
        info = get_pseudo(el)
        ecut[el] = max(info.ecutrho_ry, 4 * info.ecutwfc_ry)
        path = Path(get_settings().pseudo_dir) / names.get(el, "")
        if el not in names or not path.is_file():
            path = stage_pseudos([el], staged) / info.filename
        atoms[el] = read_upf_atomic_density(path)
    table = AtomicDensityTable.from_transforms(
        elements,
        [atoms[el].z_valence for el in elements],
        lambda el, q: atoms[el].radial_transform(q * QE_BOHR_TO_ANGSTROM),
        q_max=60.0,
    )
    return table, ecut


def _starting_magnetization(records: list[DensityRecord], table: AtomicDensityTable) -> dict[str, float]:
    """Per element, the median ``magmom / z_valence`` of the training structures (the default
    starting moment for structures without a ``magmom`` property); QE protocol values otherwise."""
    seen: dict[str, list[float]] = {}
    for rec in records:
        magmom = rec.structure.site_properties.get("magmom")
        if magmom is None:
            continue
        for site, m in zip(rec.structure, magmom):
            el = site.specie.symbol
            if el in table.elements and m:
                z = table.z_valence[table.elements.index(el)]
                seen.setdefault(el, []).append(float(np.clip(abs(float(np.sum(m))) / z, 0.0, 1.0)))
    result = dict(ModelConfig(elements=table.elements).starting_magnetization)
    result.update({el: round(float(np.median(v)), 4) for el, v in seen.items()})
    return {el: v for el, v in result.items() if el in table.elements}


def _record_potcars(rec: DensityRecord) -> dict:
    """Element -> POTCAR atomic density of an ingested VASP record.

    Looked for as ``metadata['potcar']`` (a file), ``POTCAR`` in the run folder
    (``metadata['source_folder']``), else pymatgen's ``Potcar`` of the record's POTCAR
    symbols from ``PMG_VASP_PSP_DIR`` (the titles must match the run's).
    """
    import warnings

    from monty.os.path import zpath

    from mlcharge_workflows.density.potcar import (
        potcar_atomic_density,
        read_potcar_atomic_densities,
    )

    meta = rec.metadata or {}
    order = list(dict.fromkeys(s.specie.symbol for s in rec.structure))
    candidates = [meta.get("potcar")]
    if meta.get("source_folder"):
        candidates.append(zpath(str(Path(meta["source_folder"]) / "POTCAR")))
    atoms = None
    for path in candidates:
        if path and Path(path).is_file():
            atoms = read_potcar_atomic_densities(path)
            break
    titles = [str(t) for t in meta.get("potcar_symbols") or []]
    if atoms is None and titles:
        from pymatgen.io.vasp import Potcar

        symbols = [t.split()[1] if len(t.split()) > 1 else t for t in titles]
        for functional in (meta.get("potcar_functional"), "PBE_54", "PBE_64", "PBE"):
            if not functional:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    potcar = Potcar(symbols, functional=functional)
            except Exception:  # noqa: BLE001 - no library or no such functional
                continue
            found = [potcar_atomic_density(p) for p in potcar]
            if all(a.title.split()[:2] == t.split()[:2] for a, t in zip(found, titles)):
                atoms = found
                break
    if atoms is None:
        raise ValueError(
            f"record {rec.id} (VASP): no POTCAR in its run folder or in PMG_VASP_PSP_DIR, so "
            "its atomic reference (the POTCAR densities) cannot be built"
        )
    by_element = {a.element: a for a in atoms}
    missing = [el for el in order if el not in by_element]
    if missing:
        raise ValueError(f"record {rec.id}: the POTCAR has no dataset for {missing}")
    return by_element


def record_pseudopotentials(rec: DensityRecord) -> dict[str, dict]:
    """Identity of a record's pseudopotentials per element (what its reference is built on).

    QE records: ``metadata['pseudopotentials']`` (``{el: file}`` or ``{el: {"file": ...}}``)
    resolved in the pseudo folder; absent: ``{}`` (the registry's, i.e. the training files).
    VASP records: their POTCARs (:func:`_record_potcars`).
    """
    meta = rec.metadata or {}
    if meta.get("engine") == "vasp":
        return {el: a.identity() for el, a in _record_potcars(rec).items()}
    out = {}
    for key in ("pseudopotentials", "pseudos"):
        if isinstance(meta.get(key), dict):
            for el, entry in meta[key].items():
                name = entry.get("file") if isinstance(entry, dict) else entry
                if name:
                    out.setdefault(el, {"kind": "UPF", "file": Path(str(name)).name})
    return out


def record_reference(
    table: AtomicDensityTable, rec: DensityRecord, cache: dict | None = None
) -> AtomicDensityTable | None:
    """The atomic reference a record is fitted against: None when it is the training table.

    Raises ``ValueError`` when a record's pseudopotentials cannot be found or are PAW.
    """
    from mlcharge_workflows.settings import get_settings

    meta = rec.metadata or {}
    elements = sorted({s.specie.symbol for s in rec.structure})
    cache = {} if cache is None else cache
    refs: dict[str, AtomicReference] = {}
    if meta.get("engine") == "vasp":
        atoms = _record_potcars(rec)
        refs = {el: AtomicReference.from_potcar(atoms[el]) for el in elements}
    else:
        for el, ident in record_pseudopotentials(rec).items():
            if el not in elements:
                continue
            path = Path(get_settings().pseudo_dir) / ident["file"]
            if not path.is_file():
                from mlcharge_workflows.pseudo import get_pseudo

                info = get_pseudo(el)
                if info.filename != ident["file"]:
                    raise ValueError(f"record {rec.id}: pseudopotential {ident['file']} not found")
                path = info.source
            if ("upf", str(path)) not in cache:
                cache[("upf", str(path))] = AtomicReference.from_upf(path)
            refs[el] = cache[("upf", str(path))]
    if not refs:
        return None
    key = tuple(sorted((el, r.identity.get("sha256")) for el, r in refs.items()))
    if key not in cache:
        ref_table = table.with_references(refs)
        differs = any(v["differs_from_training"] for v in ref_table.compare(table, sorted(refs)).values())
        cache[key] = ref_table if differs else None
    return cache[key]


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


def _usable(model: DensityModel, rec: DensityRecord, refs: dict, log) -> bool:
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


def _errors(model, s: Sample, coeffs, cfg: TrainConfig, rows: np.ndarray, cache: bool, hartree: bool):
    """``(V sum_rows w |Δc|² / N`` with the magnetisation, ``4π V sum_rows,G≠0 w |Δc|²/|G|² / N``)."""
    tot, mag = model.fourier(s.cell, coeffs, cache=cache, rows=rows)
    rows_t = torch.as_tensor(rows, device=s.weight.device)
    w = s.weight[rows_t]
    d2 = (tot - s.target[rows_t]).abs() ** 2
    err = (w * d2).sum()
    if mag is not None and s.target_mag is not None:
        err = err + cfg.magnetization_weight * (w * (mag - s.target_mag[rows_t]).abs() ** 2).sum()
    scale = s.cell.volume / s.cell.n_electrons
    if not hartree:
        return scale * err, None
    q = torch.as_tensor(s.cell.geom.q_np[rows], dtype=w.dtype, device=w.device)
    inv_q2 = torch.where(q > 1e-8, 1.0 / q.clamp_min(1e-8) ** 2, torch.zeros_like(q))
    return scale * err, 4 * math.pi * scale * (w * inv_q2 * d2).sum()


def sample_loss(
    model: DensityModel, s: Sample, coeffs, cfg: TrainConfig, cache: bool, rng: np.random.Generator
) -> torch.Tensor:
    """The configured loss of one sample.

    The G-space terms take every G with ``|G| <= q_core`` (where nearly all the correction
    lives); the L2 term adds ``n_extra`` random others, reweighted so the estimate stays
    unbiased. The Hartree term stays on the core rows (its 1/G² weight makes the rest negligible).
    """
    loss = torch.zeros((), dtype=s.weight.dtype, device=s.weight.device)
    if cfg.loss_g2 or cfg.loss_hartree:
        g2, hartree = _errors(model, s, coeffs, cfg, s.core, cache, bool(cfg.loss_hartree))
        loss = loss + cfg.loss_g2 * g2
        if hartree is not None:
            loss = loss + cfg.loss_hartree * hartree
    if cfg.loss_g2 and len(s.rest) and cfg.n_extra:
        pick = np.sort(rng.choice(s.rest, size=min(cfg.n_extra, len(s.rest)), replace=False))
        g2, _ = _errors(model, s, coeffs, cfg, pick, False, False)
        loss = loss + cfg.loss_g2 * g2 * (len(s.rest) / len(pick))
    if cfg.loss_r1:
        tot, _ = model.fourier(s.cell, coeffs)
        rho = half_to_grid(tot, s.cell.mill, s.grid_shape)
        loss = loss + cfg.loss_r1 * (rho - s.true_grid).abs().sum() / s.true_abs
    return loss


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


def _initial_model(cfg: TrainConfig, records: list[DensityRecord]) -> DensityModel:
    """The weights named by ``cfg.init_weights``, in training mode, checked against the data."""
    from mlcharge_workflows.model.io import DEFAULT_WEIGHTS, load_weights

    if cfg.model:
        raise ValueError(
            f"init_weights fine-tunes an existing model, whose architecture is fixed: remove the "
            f"`model` overrides {sorted(cfg.model)}"
        )
    path = DEFAULT_WEIGHTS if cfg.init_weights == "default" else Path(cfg.init_weights)
    model = load_weights(path)
    have = set(model.config.elements)
    if cfg.elements and set(cfg.elements) != have:
        raise ValueError(f"elements {sorted(cfg.elements)} differ from those of {path}: {sorted(have)}")
    missing = sorted({s.specie.symbol for r in records for s in r.structure} - have)
    if missing:
        raise ValueError(
            f"the data holds elements {missing} that the weights {path} do not cover (they cover "
            f"{', '.join(sorted(have))}); train from scratch with init_weights unset to add elements"
        )
    model.metadata = {"init_weights": str(path), "init_version": model.metadata.get("version")}
    return model.float().train()


def _quadratic_losses(model: DensityModel, fit: list[Sample], cfg: TrainConfig, device, log) -> dict:
    """The exact per-record losses of ``loss_mode: quadratic`` (cached on disk)."""
    from mlcharge_workflows.training.quadratic import cached_quadratic_loss, check_model, float64_copy

    check_model(model)
    if cfg.loss_r1 or cfg.loss_hartree:
        raise ValueError("loss_mode 'quadratic' is the exact loss_g2: set loss_r1 and loss_hartree to 0")
    m64 = float64_copy(model)  # once: copying the network costs ~1 s
    cache = Path(cfg.quadratic_cache) if cfg.quadratic_cache else Path(cfg.output) / "quadratic"
    t0 = time.perf_counter()
    out = {}
    for i, s in enumerate(fit):
        rec = s.record
        half = rec.mill[:, 2] >= 0
        mag = None if rec.magnetization is None else rec.magnetization[half]
        out[s.id] = cached_quadratic_loss(m64, rec, rec.mill[half], rec.total[half], mag, cache).to(device)
        if (i + 1) % 100 == 0 or i + 1 == len(fit):
            log(f"quadratic loss forms: {i + 1}/{len(fit)} records ({time.perf_counter() - t0:.0f} s)")
    return out


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no GPU is available")
    return torch.device(cfg.device)


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) as configured; returns the final metrics. Writes into ``cfg.output``.

    Files: ``checkpoint.pt`` (every epoch, for resume), ``model.pt`` (best validation
    weights, loadable with ``load_model``), ``metrics.json`` and ``history.json``.
    """
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    splits = load_records(cfg, log)
    all_recs = splits["train"] + splits["val"] + splits["test"]
    if not cfg.record_magmom:
        for rec in all_recs:  # the protocol's moments, in training and test, as in the workflows
            if "magmom" in rec.structure.site_properties:
                rec.structure = rec.structure.copy()
                rec.structure.remove_site_property("magmom")
    if cfg.init_weights:
        model = _initial_model(cfg, all_recs).to(device)
        elements = list(model.config.elements)
        log(f"fine-tuning from {cfg.init_weights} (version {model.metadata.get('init_version')})")
    else:
        elements = cfg.elements or sorted({s.specie.symbol for r in all_recs for s in r.structure})
        table, ecut = build_table(elements, all_recs, out)
        overrides = dict(cfg.model)
        if cfg.record_magmom:
            overrides.setdefault("starting_magnetization", _starting_magnetization(all_recs, table))
        else:
            from mlcharge_workflows.engines.qe.sets import QEProtocol

            start = QEProtocol().starting_magnetization
            overrides.setdefault("starting_magnetization", {el: v for el, v in start.items() if el in elements})
        model_cfg = ModelConfig(elements=elements, ecutrho_ry=ecut, **overrides)
        model = DensityModel(model_cfg, table).to(device)
    log(
        f"data: {len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test "
        f"records; elements {', '.join(elements)}; {sum(p.numel() for p in model.parameters())} "
        f"parameters; device {device}"
    )
    samples: dict[str, list[Sample]] = {}
    refs: dict = {}
    for name in ("train", "val"):
        samples[name] = []
        for rec in splits[name]:
            try:
                ref = record_reference(model.table, rec, refs)
                samples[name].append(prepare_sample(model, rec, cfg.q_core, ref))
            except ValueError as exc:
                log(f"skipping {rec.id}: {exc}")
    splits["test"] = [r for r in splits["test"] if _usable(model, r, refs, log)]
    fit = samples["train"] + (samples["val"] if cfg.train_on_val else [])
    own = sorted(s.id for s in fit if s.cell.table is not None)
    if own:
        log(f"{len(own)} records fitted against their own pseudopotentials' atomic densities")
    quad = {}
    if cfg.loss_mode == "quadratic":
        if own:
            raise ValueError(
                f"loss_mode 'quadratic' fits against the training table only; records {own[:3]} "
                "use other pseudopotentials: use loss_mode 'sampled'"
            )
        quad = _quadratic_losses(model, fit, cfg, device, log)
    budget = 1.5e9  # bytes of cached phases
    cache_ok = {}
    for s in fit:
        need = len(s.core) * len(s.cell.species) * 8 * 2
        cache_ok[s.id] = need <= budget
        budget -= need if cache_ok[s.id] else 0
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(cfg.patience // 4, 2), min_lr=cfg.lr_min)
    state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "history": []}
    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = json.loads(saved["state"])
        log(f"resumed from {ckpt} at epoch {state['epoch']}")
    best_path = out / "model.pt"
    stop_reason = "epochs"
    if cfg.lr_schedule == "cosine" and not cfg.max_minutes:
        state.setdefault("cosine_epochs", cfg.epochs)
    t_loop, first_epoch = time.perf_counter(), state["epoch"]
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        if cfg.lr_schedule == "cosine":
            n_cos = state.get("cosine_epochs") or cfg.epochs
            lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(epoch / max(n_cos - 1, 1), 1.0)))
            for group in opt.param_groups:
                group["lr"] = lr
        model.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(fit))
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            batch = [fit[i] for i in order[start : start + cfg.batch_size]]
            coeffs = model.orbital_coefficients([s.cell for s in batch])
            rng = np.random.default_rng([cfg.seed, epoch, start])
            if quad:
                loss = sum(cfg.loss_g2 * quad[s.id](c, cfg.magnetization_weight) for s, c in zip(batch, coeffs)) / len(batch)
            else:
                loss = sum(
                    sample_loss(model, s, c, cfg, cache_ok[s.id], rng) for s, c in zip(batch, coeffs)
                ) / len(batch)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite training loss at epoch {epoch} ({[s.id for s in batch]})")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        improved = False
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:  # else: no early-stopping decision
            val = [quick_nmape(model, s) for s in samples["val"]] or [float(np.mean(losses))]
            val_nmape = entry["val_nmape"] = float(np.mean(val))
            if cfg.lr_schedule == "plateau":
                sched.step(float(np.mean(losses)) if cfg.train_on_val else val_nmape)
            elif "cosine_epochs" not in state:  # first validated epoch of a timed run: how many fit the budget
                per_epoch = (time.perf_counter() - t_loop) / (epoch + 1 - first_epoch)
                left = cfg.max_minutes * 60 - (time.perf_counter() - t_start)
                fit_epochs = epoch + 1 + int(0.95 * left / max(per_epoch, 1e-3))
                state["cosine_epochs"] = max(2, min(cfg.epochs, fit_epochs))
                log(f"cosine schedule over {state['cosine_epochs']} epochs ({per_epoch:.1f} s per epoch with validation)")
            improved = val_nmape < state["best_val"] - 1e-6
            if cfg.train_on_val:  # the validation split is fitted: keep the last epoch
                state["best_val"], state["bad_epochs"] = min(val_nmape, state["best_val"]), 0
                save_model(model, best_path, {"epoch": epoch, "val_nmape_in_training_set": val_nmape})
            elif improved:
                state["best_val"], state["bad_epochs"] = val_nmape, 0
                save_model(model, best_path, {"epoch": epoch, "val_nmape": val_nmape})
            else:
                state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        entry.update(lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        state["history"].append(entry)
        torch.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "state": json.dumps(state)},
            ckpt.with_suffix(".tmp"),
        )
        ckpt.with_suffix(".tmp").replace(ckpt)
        val_text = f"val_NMAPE {entry['val_nmape']:.3f}%{' *' if improved else ''}  " if "val_nmape" in entry else ""
        log(
            f"epoch {epoch + 1:4d}/{cfg.epochs}  train_loss {np.mean(losses):.4e}  {val_text}"
            f"lr {opt.param_groups[0]['lr']:.1e}  {time.perf_counter() - t0:.1f}s"
        )
        n_cos = state.get("cosine_epochs", cfg.epochs)
        if cfg.lr_schedule == "cosine" and state["epoch"] >= n_cos:
            stop_reason = f"cosine schedule complete ({n_cos} epochs)"
            break
        if state["bad_epochs"] >= cfg.patience:
            stop_reason = f"early stopping ({cfg.patience} epochs without improvement)"
            break
        if cfg.max_minutes and (time.perf_counter() - t_start) / 60 > cfg.max_minutes:
            stop_reason = f"time budget of {cfg.max_minutes} min"
            break
    log(f"stopped: {stop_reason}; best validation NMAPE {state['best_val']:.3f}%")
    from mlcharge_workflows.model.io import load_weights

    best = load_weights(best_path)
    test = evaluate(best, splits["test"]) if splits["test"] else {"nmape": {"count": 0}}
    metrics = {
        "best_val_nmape": state["best_val"],
        "epochs_run": state["epoch"],
        "stop_reason": stop_reason,
        "test": test,
        "n_train": len(fit),
        "n_val": len(samples["val"]),
        "train_on_val": cfg.train_on_val,
        "record_ids": {name: sorted(f"{Path(r.metadata['_dataset']).name}/{r.id}" for r in recs)
                       for name, recs in splits.items()},
        "n_test": len(splits["test"]),
        "elements": elements,
        "train_config": json.loads(cfg.model_dump_json()),
        "cosine_epochs": state.get("cosine_epochs"),
        "minutes": (time.perf_counter() - t_start) / 60,
    }
    init = {k: v for k, v in model.metadata.items() if k.startswith("init_")}
    save_model(best, best_path, {**best.metadata, **init, "training": {k: v for k, v in metrics.items() if k != "test"},
                                 "test_nmape": test["nmape"], "test_sad_nmape": test.get("sad_nmape")})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "history.json").write_text(json.dumps(state["history"], indent=1))
    if test["nmape"].get("count"):
        log(f"test NMAPE: mean {test['nmape']['mean']:.3f}%  median {test['nmape']['median']:.3f}%  "
            f"(SAD alone: mean {test['sad_nmape']['mean']:.3f}%) on {test['nmape']['count']} structures")
    return metrics
