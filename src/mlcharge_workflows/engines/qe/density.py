"""The predicted density for pw.x: predict on pw.x's grid, keep it, hand it to a run.

The counterpart of :mod:`mlcharge_workflows.engines.vasp.density`. The model (torch) is
imported on first use, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcharge_workflows.common.documents import get_field

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from mlcharge_workflows.density.grid import DensityGrid
    from mlcharge_workflows.engines.qe.sets import QEProtocol


# ---------------------------------------------------------------- grid <-> data-store dict
def grid_to_data(grid: DensityGrid) -> dict[str, Any]:
    """The stored form of a grid: :meth:`DensityGrid.as_dict` (old name, kept for callers)."""
    return grid.as_dict()


def grid_from_data(data: dict[str, Any] | DensityGrid) -> DensityGrid:
    """A :class:`DensityGrid` from its stored form, old float-list documents included."""
    from mlcharge_workflows.density.grid import DensityGrid

    return data if isinstance(data, DensityGrid) else DensityGrid.from_dict(data)


# ---------------------------------------------------------------- the model, lazily
def load_density_model(model_path: str | None) -> Any:
    """The loaded density model (cached per file; torch is imported here, not at import)."""
    from mlcharge_workflows.model import load_model

    return load_model(model_path)


def unsupported_elements(structure: Structure, model_path: str | None = None) -> list[str]:
    """Elements of ``structure`` the model was not trained on (sorted)."""
    known = set(load_density_model(model_path).supported_elements)
    return sorted({site.specie.symbol for site in structure} - known)


def model_version(model_path: str | None = None) -> str:
    """The model's version string, with the weights file name."""
    from mlcharge_workflows.model import model_version as version_of

    return version_of(load_density_model(model_path))


def model_moments(structure: Structure, protocol: QEProtocol, model: Any) -> list[float]:
    """Starting moments (μB) the model is given: the protocol's fraction x the valence of the
    *training* pseudopotential of each element (the moments the model learned from), with
    the signs of an antiferromagnetic ``magmom`` (pw.x's kinds up and down).

    pw.x's own start is fraction x the run's valence, which doubles for a semicore file
    (Fe 3s3p: 16 electrons): fed to the model that would ask for twice the moment (measured:
    bcc Fe predicted 5.7 μB instead of 2.7, 43 iterations instead of 19 from atoms).
    """
    from mlcharge_workflows.engines.qe.sets import antiparallel_signs

    train_z = dict(zip(model.table.elements, (float(z) for z in model.table.z_valence)))
    run = protocol.starting_moments(structure)
    pseudos = protocol.pseudos(structure)
    # an antiferromagnetic start (``magmom``/``spin_sign`` both ways) keeps its signs, as pw.x does
    signs = antiparallel_signs(structure, protocol) or [1] * len(structure)
    return [sign * m * train_z.get(site.specie.symbol, pseudos[site.specie.symbol].z_valence)
            / pseudos[site.specie.symbol].z_valence for m, sign, site in zip(run, signs, structure)]


def predict_grid(
    structure: Structure, shape: tuple[int, int, int], model_path: str | None, protocol: QEProtocol,
    partial: bool = False,
) -> DensityGrid:
    """Predicted density (and magnetisation for spin-polarised runs) on ``shape`` (e/Å³).

    Starting moments follow the protocol (``magmom`` = fraction x valence of the species),
    so the predicted magnetic state is the one pw.x is asked to find. The learned deformation
    is added to the atomic densities (``PP_RHOATOM``) of the run's own pseudopotentials
    (the protocol's, registry or user's), so the density integrates to the run's valence.

    ``partial``: atoms of elements the model does not know get their reference density only
    (``PP_RHOATOM``, with the protocol's starting moment), the others the model's prediction
    for the cell without them (``metadata['partial_start']`` lists the elements);
    ``ValueError`` when no element is known. Without ``partial`` an unknown element is a
    ``ValueError`` from the model.
    """
    from mlcharge_workflows.model import predict_density

    s = structure.copy()
    if protocol.is_spin_polarized(s):
        s.add_site_property("magmom", model_moments(s, protocol, load_density_model(model_path)))
    elif "magmom" in s.site_properties:
        s.remove_site_property("magmom")
    pseudos = protocol.pseudos(structure)
    # each file in the training atomic configuration where its own differs (ld1.x; recorded)
    from mlcharge_workflows.model.configuration import run_references

    reference = run_references(load_density_model(model_path).table,
                               {el: info.source for el, info in pseudos.items()})
    missing = unsupported_elements(structure, model_path) if partial else []
    if not missing:
        return predict_density(s, shape=shape, model=load_density_model(model_path),
                               reference=reference)
    from mlcharge_workflows.density.grid import DensityGrid
    from mlcharge_workflows.density.sad import superposition_density

    known = [i for i, site in enumerate(s) if site.specie.symbol not in missing]
    if not known:
        raise ValueError(f"the model knows none of the elements ({', '.join(missing)})")
    ml = predict_density(s.copy().remove_sites([i for i in range(len(s)) if i not in known]),
                         shape=shape, model=load_density_model(model_path),
                         reference={el: r for el, r in reference.items() if el not in missing})
    rest = s.copy().remove_sites(known)
    spin = protocol.is_spin_polarized(structure)
    mag = {el: protocol.starting_magnetization.get(el, 0.0) for el in missing} if spin else None
    if "magmom" in rest.site_properties:
        rest.remove_site_property("magmom")
    atoms = superposition_density(rest, shape, {el: pseudos[el].source for el in missing}, mag)
    magnetization = None
    if spin:
        known_m = ml.magnetization if ml.magnetization is not None else np.zeros(shape)
        magnetization = known_m + atoms.magnetization
    meta = {**ml.metadata, "partial_start": sorted(missing),
            "n_electrons": ml.metadata["n_electrons"] + atoms.n_electrons}
    return DensityGrid(structure, ml.total + atoms.total, magnetization, metadata=meta)


def prediction_density(prediction: Any) -> str | DensityGrid | None:
    """The start density of a prediction: its file if this worker sees it, else its grid."""
    path = get_field(prediction, "path")
    if path and Path(path).is_file():
        return str(path)
    data = get_field(prediction, "density")
    return None if data is None else grid_from_data(data)
