"""``mlcharge data ingest``: VASP run folders (CHGCAR + vasprun.xml or OUTCAR) -> density records.

Every folder under the source that holds a ``CHGCAR`` (also ``.gz``/``.bz2``/``.xz``)
becomes one record of the same format as ``data generate``: the structure, the CHGCAR
grid as ``grid_shape``, Fourier coefficients by FFT of the CHGCAR grid (inside the
whole grid but its Nyquist planes, or a sphere of ``store_ecut_ry``), the energy and SCF steps from
``vasprun.xml`` (else OSZICAR and OUTCAR), and the run's settings.

Checks (a failing folder is listed in ``failures/`` with the reason, others go on; so is
a folder whose ``vasprun.xml`` or OUTCAR cannot be read, e.g. a killed run): the run's
structure and the CHGCAR's pass :func:`mlcharge_workflows.validation.validate_structure`,
the CHGCAR parses, its cell and atoms are the run's final structure, its grid is the
run's fine grid (NGXF, NGYF, NGZF), it integrates to NELECT, it is finite, and the
electronic SCF converged.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

from mlcharge_workflows.training.dataset import DensityDataset, DensityRecord
from mlcharge_workflows.training.storage import (
    code_provenance,
    command_line,
    finalize_manifest,
    inscribed_ecut_ry,
    now,
    stored_coefficients,
    write_json_atomic,
)

CHGCAR_NAMES = ("CHGCAR", "CHGCAR.gz", "CHGCAR.bz2", "CHGCAR.xz")
_INCAR_KEYS = ("ENCUT", "PREC", "ISPIN", "EDIFF", "NELM", "ISMEAR", "SIGMA", "GGA", "METAGGA",
               "LASPH", "ISTART", "ICHARG", "ALGO", "LDAU", "KSPACING")  # fmt: skip


class IngestError(ValueError):
    """A VASP folder cannot become a record; ``kind`` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def find_runs(src: str | Path) -> list[Path]:
    """Folders under ``src`` (``src`` included) that hold a CHGCAR, sorted."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"VASP source folder {src} does not exist")
    found = {p.parent for name in CHGCAR_NAMES for p in src.rglob(name)}
    return sorted(found)


def record_id_for(folder: Path, src: Path) -> str:
    """Filesystem-safe id from the folder's path relative to the source (``vasp-a__b``)."""
    rel = folder.resolve().relative_to(src.resolve())
    name = "__".join(rel.parts) if rel.parts else folder.resolve().name
    return "vasp-" + re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _zipped(name: str) -> tuple[str, ...]:
    return (name, f"{name}.gz", f"{name}.bz2", f"{name}.xz")


_OUTCAR = {
    "nelect": re.compile(r"NELECT\s*=\s*([-0-9.]+)"),
    "ngf": re.compile(r"NGXF=\s*(\d+)\s+NGYF=\s*(\d+)\s+NGZF=\s*(\d+)"),
    "nelm": re.compile(r"NELM\s*=\s*(\d+)"),
    "iteration": re.compile(r"Iteration\s+(\d+)\(\s*(\d+)\)"),
    "energy": re.compile(r"energy\(sigma->0\)\s*=\s*([-0-9.Ee+]+)"),
    "version": re.compile(r"^\s*(vasp\.\S+)", re.MULTILINE),
}


def parse_outcar(path: Path) -> dict:
    """Energy (sigma -> 0, eV), SCF steps per ionic step, NELECT, NELM, fine grid, version."""
    from monty.io import zopen

    with zopen(str(path), "rt", errors="replace") as fh:
        text = fh.read()
    steps: dict[int, int] = {}
    for ionic, _ in _OUTCAR["iteration"].findall(text):
        steps[int(ionic)] = steps.get(int(ionic), 0) + 1
    energies = _OUTCAR["energy"].findall(text)
    ngf = _OUTCAR["ngf"].search(text)
    nelect = _OUTCAR["nelect"].search(text)
    nelm = _OUTCAR["nelm"].search(text)
    version = _OUTCAR["version"].search(text)
    return {
        "electronic_steps": [steps[k] for k in sorted(steps)],
        "energy_eV": float(energies[-1]) if energies else None,
        "ngf": tuple(int(x) for x in ngf.groups()) if ngf else None,
        "nelect": float(nelect.group(1)) if nelect else None,
        "nelm": int(nelm.group(1)) if nelm else None,
        "vasp_version": version.group(1) if version else None,
        "finished": "General timing and accounting" in text,
    }


def _complete_xml(path: Path) -> bool:
    """True if ``vasprun.xml`` ends with VASP's closing ``</modeling>`` tag."""
    from monty.io import zopen

    with zopen(str(path), "rb") as fh:
        data = fh.read()
    return data.rstrip().endswith(b"</modeling>")


def _run_metadata(folder: Path) -> tuple[dict, object | None]:
    """SCF facts and settings of a VASP run, and its final structure (None if unknown)."""
    from pymatgen.io.vasp import Poscar, Vasprun

    from mlcharge_workflows.engines.vasp.parse import parse_vasp_scf

    vasprun = _first(folder, _zipped("vasprun.xml"))
    outcar = _first(folder, _zipped("OUTCAR"))
    meta: dict = {"engine": "vasp", "source_folder": str(folder.resolve())}
    structure = None
    if vasprun is not None:
        try:  # a killed or still-running VASP leaves a cut file: pymatgen raises many types
            if not _complete_xml(vasprun):
                raise ValueError("the file ends before </modeling>")
            scf = parse_vasp_scf(vasprun)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = Vasprun(str(vasprun), parse_dos=False, parse_eigen=False,
                            parse_potcar_file=False, exception_on_bad_xml=False)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - any parse failure is this folder's failure
            raise IngestError("bad_vasprun", f"{vasprun}: unreadable ({type(exc).__name__}: "
                              f"{exc}); a VASP run that was killed or is still writing?") from None
        structure = v.final_structure
        params = {**v.parameters, **v.incar}
        meta.update(
            metadata_source="vasprun.xml", vasp_version=v.vasp_version,
            potcar_symbols=v.potcar_symbols, nelect=float(v.parameters.get("NELECT", 0)) or None,
            incar={k: params[k] for k in _INCAR_KEYS if k in params},
        )  # fmt: skip
        meta.update(scf.as_dict())
    elif outcar is not None:
        out = parse_outcar(outcar)
        osz = _first(folder, _zipped("OSZICAR"))
        steps = parse_vasp_scf(osz).electronic_steps if osz is not None else out["electronic_steps"]
        meta.update(
            metadata_source="OUTCAR", vasp_version=out["vasp_version"], nelect=out["nelect"],
            electronic_steps=steps, energy_eV=out["energy_eV"], nelm=out["nelm"],
            ngf=list(out["ngf"]) if out["ngf"] else None,
            scf_iterations=steps[0] if steps else None,
            converged_electronic=(
                None if out["nelm"] is None
                else all(n < out["nelm"] for n in steps) and out["finished"]
            ),
        )  # fmt: skip
    else:
        raise IngestError("no_metadata", f"{folder}: CHGCAR without vasprun.xml or OUTCAR")
    if structure is None:
        for name in ("CONTCAR", "POSCAR"):
            p = _first(folder, _zipped(name))
            if p is not None:
                try:
                    structure = Poscar.from_file(str(p), check_for_potcar=False).structure
                except Exception:  # noqa: BLE001 - a broken CONTCAR: try POSCAR
                    continue
                meta["structure_source"] = name
                break
    return meta, structure


def ingest_run(folder: Path, rid: str, store_ecut_ry: float | None) -> DensityRecord:
    """One VASP folder as a :class:`DensityRecord`; ``IngestError`` says why it cannot be."""
    from mlcharge_workflows.density.chgcar import read_chgcar

    from mlcharge_workflows.validation import validate_structure

    meta, run_structure = _run_metadata(folder)
    if run_structure is not None:
        try:
            validate_structure(run_structure)
        except ValueError as exc:
            raise IngestError("bad_structure", f"{folder}: run structure: {exc}") from None
    steps = meta.get("electronic_steps") or []
    if meta.get("converged_electronic") is False or (
        meta.get("nelm") and steps and any(n >= meta["nelm"] for n in steps)
    ):
        raise IngestError(
            "not_converged",
            f"{folder}: electronic SCF not converged (steps {steps[:5]}, NELM {meta.get('nelm')})",
        )
    chgcar = _first(folder, CHGCAR_NAMES)
    try:
        grid = read_chgcar(chgcar)
    except ValueError as exc:  # malformed, truncated, non-finite
        raise IngestError("bad_chgcar", str(exc)) from None
    try:
        validate_structure(grid.structure)
    except ValueError as exc:
        raise IngestError("bad_structure", f"{chgcar}: CHGCAR header structure: {exc}") from None
    if run_structure is not None:
        try:
            grid.check_matches(run_structure, lattice_tol=1e-3, site_tol=2e-3)
        except ValueError as exc:
            raise IngestError(
                "structure_mismatch",
                f"{chgcar}: CHGCAR header (POSCAR) does not match the run's final structure "
                f"({run_structure.composition.formula}): {exc}",
            ) from None
    ngf = meta.get("ngf")
    if ngf and tuple(ngf) != grid.shape:
        raise IngestError(
            "grid_mismatch",
            f"{chgcar}: CHGCAR grid {grid.shape} is not the run's fine grid "
            f"NGXF, NGYF, NGZF = {tuple(ngf)}: the CHGCAR does not belong to this run",
        )
    if meta.get("nelect"):
        try:
            grid.check_electron_count(meta["nelect"])
        except ValueError as exc:
            raise IngestError("electron_count", f"{chgcar}: {exc} (NELECT)") from None
    full = inscribed_ecut_ry(grid.structure.lattice.matrix, grid.shape)
    try:
        mill, total, mag, stats = stored_coefficients(grid, store_ecut_ry, full, box=True)
    except ValueError as exc:
        raise IngestError("bad_density", f"{chgcar}: {exc}") from None
    s = grid.structure
    meta.update(
        family=s.composition.chemical_system, prototype=None, storage=stats,
        chgcar=str(chgcar.resolve()), has_paw_occupancies=bool(grid.metadata.get("data_aug")),
    )  # fmt: skip
    return DensityRecord(
        id=rid, structure=s, grid_shape=grid.shape, mill=mill, total=total, magnetization=mag,
        energy_eV=meta.get("energy_eV"), scf_iterations=meta.get("scf_iterations"), metadata=meta,
    )  # fmt: skip


def ingest_vasp_runs(
    src: str | Path, out: str | Path, store_ecut_ry: float | None = None, progress: bool = True
) -> dict:
    """Ingest every VASP folder under ``src`` into the dataset ``out``; returns the manifest.

    Folders already ingested are skipped (resume); failures are listed with their reason.
    """
    from tqdm import tqdm

    src, root = Path(src), Path(out).resolve()
    runs = find_runs(src)
    if not runs:
        raise FileNotFoundError(f"no CHGCAR under {src}")
    ds = DensityDataset(root)
    man = ds.manifest
    if man.get("kind") not in (None, "vasp-ingested"):
        raise ValueError(f"{root} holds a {man.get('kind')} dataset; ingest into another folder")
    man.setdefault("created", now())
    man.update(kind="vasp-ingested", source=str(src.resolve()), store_ecut_ry=store_ecut_ry)
    man.setdefault("runs", []).append({"command": command_line(), **code_provenance()})
    ds.save_manifest()
    provenance = {"command": command_line(), **code_provenance()}
    for folder in tqdm(runs, desc="VASP runs", unit="run", disable=not progress):
        rid = record_id_for(folder, src)
        if rid in ds:
            continue
        failure = root / "failures" / f"{rid}.json"
        t0 = time.time()
        try:
            record = ingest_run(folder, rid, store_ecut_ry)
        except IngestError as exc:
            write_json_atomic(failure, {"id": rid, "kind": exc.kind, "reason": str(exc),
                                        "folder": str(folder.resolve())})  # fmt: skip
            continue
        except Exception as exc:  # noqa: BLE001 - one broken folder never stops the others
            write_json_atomic(failure, {"id": rid, "kind": "bad_outputs",
                                        "reason": f"{type(exc).__name__}: {exc}",
                                        "folder": str(folder.resolve())})  # fmt: skip
            continue
        record.metadata["provenance"] = provenance
        record.metadata["ingest_s"] = round(time.time() - t0, 2)
        ds.add(record)
        failure.unlink(missing_ok=True)
    return finalize_manifest(root)
