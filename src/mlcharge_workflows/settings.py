"""Package settings, overridable with ``MLCHARGE_*`` environment variables.

Examples
--------
>>> from mlcharge_workflows.settings import get_settings
>>> get_settings().qe_nprocs >= 1
True
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class MLChargeSettings(BaseSettings):
    """Settings for engines, model and stores (environment prefix ``MLCHARGE_``)."""

    model_config = SettingsConfigDict(env_prefix="MLCHARGE_", extra="ignore")

    pw_cmd: str = Field("pw.x", description="Quantum ESPRESSO pw.x executable.")
    mpi_cmd: str = Field(
        "mpirun --allow-run-as-root --bind-to none -np {nprocs}",
        description="MPI launcher template; '{nprocs}' is replaced. Empty string: run serially. "
        "'--bind-to none' matters: Open MPI pins the ranks of every separate mpirun to the "
        "same first cores, so concurrent pw.x runs (workers, --jobs) would share one core.",
    )
    qe_nprocs: int = Field(2, description="MPI processes for one pw.x run.")
    pseudo_dir: Path = Field(
        Path("/usr/share/espresso/pseudo"), description="Folder with the UPF pseudopotentials."
    )
    model_path: Path | None = Field(
        None, description="Weights file of the density model; None uses the shipped model."
    )
    project_dir: Path = Field(
        Path("mlcharge_project"),
        description="Folder of the embedded default: file-backed stores and LaunchPad.",
    )

    @field_validator("model_path", mode="before")
    @classmethod
    def _empty_means_shipped(cls, value):
        """``MLCHARGE_MODEL_PATH=`` (empty) is unset, not the current folder."""
        return None if isinstance(value, str) and not value.strip() else value


@lru_cache
def get_settings() -> MLChargeSettings:
    """Return the (cached) settings, read once from the environment."""
    return MLChargeSettings()
