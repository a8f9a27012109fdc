"""Atomic references: the densities each record is fitted against.

Each record is fitted against its own atomic reference: the atomic densities of the
pseudopotentials it was computed with (:func:`record_reference`: a QE record's UPF files,
an ingested VASP record's POTCAR), so the network learns only the deformation
``rho - reference`` and records of any valence (Fe 8 e from QE, Fe_pv 14 e from VASP) train
one model. The table saved with the weights is the training reference (:func:`build_table`:
the QE registry's files, or those the QE records name); a record on other files gets its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcharge_workflows.model.atomic import AtomicDensityTable, AtomicReference
from mlcharge_workflows.model.core import ModelConfig
from mlcharge_workflows.training.dataset import DensityRecord


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


def median_starting_magnetization(records: list[DensityRecord], table: AtomicDensityTable) -> dict[str, float]:
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
