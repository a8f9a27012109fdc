"""Weights files of the density model: one ``torch.save`` dict, checked on load.

Layout::

    format        "mlcharge-density-model"
    version       FORMAT_VERSION
    config        ModelConfig as a dict
    table         atomic density table (elements, z_valence, q, values)
    state_dict    network parameters (float32)
    metadata      training provenance (dataset, metrics, command, date)
    checksum      sha256 over config, table and parameters

Loading uses ``torch.load(weights_only=True)`` (no pickled code runs) and raises
``ValueError`` naming the file for anything unreadable, corrupt or mismatched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlcharge_workflows.model.atomic import AtomicDensityTable
from mlcharge_workflows.model.core import DensityModel, ModelConfig

FORMAT = "mlcharge-density-model"
FORMAT_VERSION = 1
#: The weights shipped with the package.
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.pt"


def _checksum(config: dict, table: dict, state: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True).encode())
    h.update(json.dumps(table["elements"]).encode())
    for key in ("z_valence", "q", "values"):
        h.update(np.ascontiguousarray(torch.as_tensor(table[key]).numpy()).tobytes())
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key].detach().cpu().numpy()).tobytes())
    return h.hexdigest()


def save_model(model: DensityModel, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``model`` to ``path`` (float32 parameters, atomic replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["orbital_muls"] = list(config["orbital_muls"])
    config["magnetization_muls"] = list(config["magnetization_muls"])
    tstate = model.table.state()
    table = {
        "elements": tstate["elements"],
        "z_valence": torch.as_tensor(tstate["z_valence"], dtype=torch.float64),
        "q": torch.as_tensor(tstate["q"], dtype=torch.float32),
        "values": torch.as_tensor(tstate["values"], dtype=torch.float32),
    }
    state = {k: v.detach().cpu().to(torch.float32) for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config,
        "table": table,
        "state_dict": state,
        "metadata": dict(metadata or {}),
        "checksum": _checksum(config, table, state),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_weights(path: str | Path, dtype: torch.dtype = torch.float32) -> DensityModel:
    """Read a weights file written by :func:`save_model` into an eval-mode model."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"density model weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ValueError(f"cannot read density model weights {path}: not a weights file written "
                         f"by mlcharge, or a corrupt one ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a mlcharge density model weights file")
    if payload.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has weights format version {payload.get('version')}, this code reads "
            f"{FORMAT_VERSION}"
        )
    try:
        config, table, state = payload["config"], payload["table"], payload["state_dict"]
        if _checksum(config, table, state) != payload["checksum"]:
            raise ValueError("checksum mismatch")
        cfg = ModelConfig(**config)
        tab = AtomicDensityTable(
            list(table["elements"]),
            table["z_valence"].numpy(),
            table["q"].numpy().astype(float),
            table["values"].numpy().astype(float),
        )
        model = DensityModel(cfg, tab)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"density model weights {path} are corrupt or mismatched: {exc}") from exc
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.all(torch.isfinite(value)):
            raise ValueError(f"density model weights {path}: non-finite values in {name}")
    model.metadata = dict(payload.get("metadata") or {})
    model.weights_path = str(path)
    return model.to(dtype).eval()


def model_version(model: Any) -> str:
    """``<weights file name>:<version>`` (metadata ``version``), else the file name.

    The one version string both engines record (``PredictionDocument.model_version``).
    """
    version = (getattr(model, "metadata", None) or {}).get("version")
    path = getattr(model, "weights_path", None)
    name = Path(path).name if path else "shipped"
    return f"{name}:{version}" if version else name
