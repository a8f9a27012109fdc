"""What the VASP input set will write: structure, fine grid, electron count, start settings.

Everything a predicted CHGCAR must agree with is read from the input set generator
itself, so the density is made for the exact POSCAR (atom order, cell) and grid
VASP will use:

* :func:`input_structure` - ``gen.get_input_set(s, potcar_spec=True)["POSCAR"].structure``
  (atomate2 sets sort atoms and may reduce or standardise the cell);
* :func:`input_fine_grid` - ``NGXF, NGYF, NGZF`` (pinned in the INCAR if already set,
  else VASP 6's rule for ENCUT and PREC);
* :func:`expected_nelect` - ``NELECT`` from the INCAR, the POTCAR ZVALs when POTCAR
  files are configured, else :func:`potcar_zval`'s table.

ZVAL table
----------
``POTCAR.spec`` carries only symbols. :func:`potcar_zval` reads the ZVAL of each
POTCAR symbol from the POTCAR summary statistics that pymatgen ships
(``pymatgen/io/vasp/potcar-summary-stats.json.bz2``: one ZVAL per symbol and
functional, e.g. ``PBE_54``, atomate2's default). Override per element with ``zval``.
"""

from __future__ import annotations

import bz2
import copy
import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from pymatgen.io.vasp.inputs import VaspInput
    from pymatgen.io.vasp.sets import VaspInputSet

__all__ = [
    "ATOMIC_NSCF_INCAR",
    "BASELINE_START_INCAR",
    "DONOR_INCAR",
    "ML_NSCF_INCAR",
    "ML_START_INCAR",
    "expected_nelect",
    "grid_incar",
    "input_fine_grid",
    "input_set",
    "input_structure",
    "potcar_functional",
    "potcar_symbols",
    "potcar_zval",
    "with_incar",
]

#: Start from the superposition of atomic densities, no WAVECAR read (baseline arm).
BASELINE_START_INCAR: dict[str, Any] = {"ICHARG": 2, "ISTART": 0}
#: Start from the CHGCAR in the folder (ML and oracle arms); no WAVECAR read.
ML_START_INCAR: dict[str, Any] = {"ICHARG": 1, "ISTART": 0}
#: Non-SCF on the CHGCAR in the folder (fixed density).
ML_NSCF_INCAR: dict[str, Any] = {"ICHARG": 11, "ISTART": 0}
#: Non-SCF on the superposition of atomic densities (control of the NSCF check).
ATOMIC_NSCF_INCAR: dict[str, Any] = {"ICHARG": 12, "ISTART": 0}
#: The occupancy donor: one electronic step from atoms whose CHGCAR carries PAW occupancies
#: with the count per ion of this run's POTCARs and LMAXMIX; nothing else written.
DONOR_INCAR: dict[str, Any] = {"ICHARG": 2, "ISTART": 0, "NELM": 1, "NSW": 0, "LCHARG": True,
                               "LWAVE": False, "LAECHG": False, "LVTOT": False, "LELF": False}


@lru_cache(maxsize=1)
def _zval_table() -> dict[str, dict[str, float]]:
    """``{functional: {POTCAR symbol: ZVAL}}`` from pymatgen's POTCAR summary stats."""
    import pymatgen.io.vasp as pmg_vasp

    path = Path(pmg_vasp.__file__).parent / "potcar-summary-stats.json.bz2"
    with bz2.open(path, "rt") as fh:
        stats = json.load(fh)
    table: dict[str, dict[str, float]] = {}
    for functional, entries in stats.items():
        zvals: dict[str, float] = {}
        for versions in entries.values():
            for entry in versions:
                zvals.setdefault(entry["symbol"], float(entry["ZVAL"]))
        table[functional] = zvals
    return table


def potcar_zval(symbol: str, functional: str = "PBE_54") -> float:
    """Valence (ZVAL) of the POTCAR ``symbol`` (e.g. ``"Na_pv"``) in ``functional``'s set."""
    table = _zval_table()
    if functional not in table:
        raise ValueError(f"unknown POTCAR functional {functional!r}; known: {sorted(table)}")
    try:
        return table[functional][symbol]
    except KeyError:
        raise ValueError(
            f"no ZVAL known for POTCAR {symbol!r} ({functional}); pass zval={{element: value}}"
        ) from None


def with_incar(generator: VaspInputSet, settings: dict[str, Any]) -> VaspInputSet:
    """A deep copy of ``generator`` with ``settings`` added to its user INCAR settings."""
    gen = copy.deepcopy(generator)
    gen.user_incar_settings = {**(gen.user_incar_settings or {}), **settings}
    return gen


def potcar_functional(generator: VaspInputSet) -> str:
    """The POTCAR functional ``generator`` writes (``"PBE_54"``, ``"PBE"``, ...).

    pymatgen resolves it at construction (``user_potcar_functional`` or the set's
    ``POTCAR_FUNCTIONAL``); atomate2's default generators give ``PBE_54``, pymatgen's MP
    sets ``PBE``.
    """
    functional = getattr(generator, "potcar_functional", None) or getattr(
        generator, "user_potcar_functional", None
    )
    if not functional:
        config = getattr(generator, "config_dict", None) or {}
        functional = config.get("POTCAR_FUNCTIONAL")
    if not functional:
        raise ValueError(f"{type(generator).__name__} names no POTCAR functional")
    return str(functional)


def local_dir(prev_dir: str | Path | None) -> str | None:
    """``prev_dir`` without atomate2's ``host:`` prefix (``dir_name`` is ``host:/path``)."""
    if prev_dir is None:
        return None
    from atomate2.utils.path import strip_hostname

    return strip_hostname(str(prev_dir))


def input_set(
    generator: VaspInputSet, structure: Structure, prev_dir: str | Path | None = None
) -> VaspInput:
    """The inputs ``generator`` writes for ``structure`` (POTCAR.spec, generator untouched).

    ``prev_dir`` may be atomate2's ``host:/path`` ``dir_name`` (the host is stripped).
    """
    prev_dir = local_dir(prev_dir)
    gen = copy.deepcopy(generator)  # get_input_set stores the structure on the generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gen.get_input_set(structure, prev_dir=prev_dir, potcar_spec=True)


def input_structure(
    generator: VaspInputSet, structure: Structure, prev_dir: str | Path | None = None
) -> Structure:
    """The structure of the POSCAR ``generator`` writes (sorted, maybe reduced/standardised)."""
    return input_set(generator, structure, prev_dir)["POSCAR"].structure


def input_fine_grid(vis: VaspInput) -> tuple[int, int, int]:
    """``(NGXF, NGYF, NGZF)`` for the inputs ``vis``: pinned values, else VASP 6's rule."""
    from mlcharge_workflows.density.chgcar import vasp_fine_grid

    incar = vis["INCAR"]
    pinned = [incar.get(k) for k in ("NGXF", "NGYF", "NGZF")]
    if all(p is not None for p in pinned):
        return tuple(int(p) for p in pinned)  # type: ignore[return-value]
    if any(p is not None for p in pinned):
        raise ValueError(f"NGXF/NGYF/NGZF must be set together, got {pinned}")
    encut = incar.get("ENCUT")
    if encut is None:
        raise ValueError(
            "the INCAR has no ENCUT: set ENCUT (or NGXF/NGYF/NGZF) so the CHGCAR grid is known"
        )
    return vasp_fine_grid(vis["POSCAR"].structure, float(encut), str(incar.get("PREC", "Normal")))


def grid_incar(shape: tuple[int, int, int]) -> dict[str, int]:
    """INCAR keys that pin VASP's fine grid to ``shape``."""
    return {"NGXF": int(shape[0]), "NGYF": int(shape[1]), "NGZF": int(shape[2])}


def potcar_symbols(vis: VaspInput) -> list[str]:
    """POTCAR symbols of the inputs ``vis`` (from POTCAR.spec or the POTCAR)."""
    potcar = vis["POTCAR.spec"] if "POTCAR.spec" in vis else vis["POTCAR"]
    if isinstance(potcar, str):  # POTCAR.spec contents
        return [s for s in potcar.split("\n") if s.strip()]
    if isinstance(potcar, list | tuple):
        return [str(s) for s in potcar]
    return list(potcar.symbols)


def expected_nelect(
    vis: VaspInput,
    functional: str = "PBE_54",
    zval: dict[str, float] | None = None,
    use_potcar_files: bool = True,
) -> tuple[float, str, dict[str, float]]:
    """Electrons VASP will have for the inputs ``vis``.

    Returns ``(nelect, source, zval_by_element)``; ``source`` is ``"INCAR"`` (NELECT
    set), ``"POTCAR"`` (ZVALs read from the POTCAR files pymatgen finds), or
    ``"table"`` (pymatgen's POTCAR summary stats, see module docstring); ``zval``
    overrides per element.
    """
    structure = vis["POSCAR"].structure
    symbols = potcar_symbols(vis)
    elements = vis["POSCAR"].site_symbols
    if len(symbols) != len(elements):
        raise ValueError(f"POTCAR symbols {symbols} do not match POSCAR species {elements}")
    by_element: dict[str, float] = {}
    source = "table"
    potcar = None
    if use_potcar_files:
        try:
            from pymatgen.io.vasp import Potcar

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                potcar = Potcar(symbols, functional=functional)
        except Exception:  # noqa: BLE001 - no POTCAR library configured here
            potcar = None
    for i, (el, sym) in enumerate(zip(elements, symbols, strict=True)):
        if zval and el in zval:
            by_element[el] = float(zval[el])
        elif potcar is not None:
            by_element[el] = float(potcar[i].zval)
            source = "POTCAR"
        else:
            by_element[el] = potcar_zval(sym, functional)
    if zval and all(el in zval for el in elements):
        source = "zval"
    nelect = sum(by_element[site.specie.symbol] for site in structure)
    incar_nelect = vis["INCAR"].get("NELECT")
    if incar_nelect is not None:
        return float(incar_nelect), "INCAR", by_element
    return float(nelect), source, by_element
