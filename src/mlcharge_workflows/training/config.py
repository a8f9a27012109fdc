"""Settings of one training run: the YAML keys of ``mlcharge train`` (docs/training.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


SELECT_BY_HELP = (
    "The validation score that picks the kept model (model.pt) and drives early stopping and the "
    "plateau schedule. scf_error: pw.x's own SCF error functional (the one behind its 'estimated "
    "scf accuracy': Hartree-weighted charge plus magnetisation term) of the written ML density "
    "minus the converged one, Ry per atom, geometric mean over the validation records; nmape: "
    "their mean NMAPE. Both are computed and kept in history.json either way."
)


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
    val_every: int = Field(1, ge=1, description="Validation scores (and early stopping) every this many epochs.")
    select_by: Literal["scf_error", "nmape"] = Field("scf_error", description=SELECT_BY_HELP)
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
    exclude_prototypes: list[str] = Field(
        default_factory=list,
        description="Leave out every record whose generated id names one of these prototypes "
        "(e.g. AB_cF8_225_a_b): structures held out for a benchmark stay unseen in every split.",
    )
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
