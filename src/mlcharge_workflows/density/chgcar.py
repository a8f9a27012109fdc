"""VASP CHGCAR I/O through pymatgen, VASP's fine FFT grid, and CHGCAR <-> QE conversion.

A CHGCAR stores ``rho(r) * V`` (e, V in Å³) on VASP's fine grid, x fastest. The layout VASP
writes (and its reader ``READCH`` expects) for ``ISPIN = 2`` is::

    POSCAR header, blank line
    NGXF NGYF NGZF                      total density * V, five values a line
    augmentation occupancies   1  NN    PAW one-centre occupancies of the total, per ion
    ...
    m_1 m_2 ... m_NIONS                 per-ion moments (VASP writes its MAGMOM, '(5E20.12)')
    NGXF NGYF NGZF                      (rho_up - rho_down) * V
    augmentation occupancies   1  NN    occupancies of the magnetisation, per ion

pymatgen writes the header and the grids (reused here) but, for a grid without parsed
occupancies, neither the occupancies nor the moment line. VASP reads the moment line
list-directed and ignores the values, but without it the magnetisation block is misread and
VASP replaces it by overlapping atoms. The occupancies and the moment line are therefore
written here (:func:`write_chgcar`). Occupancies read from a CHGCAR are kept in
``grid.metadata["data_aug"]`` and its moments in ``grid.metadata["chgcar_magmom"]``.

PAW runs: VASP discards the whole file when the occupancies of the total are missing
("WARNING: PAW occupancies are missing on CHGCAR"; ICHARG=1 then starts from atoms,
ICHARG=11 stops). See docs/vasp-guide.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcharge_workflows.density.grid import DensityGrid
from mlcharge_workflows.density.qe_file import (
    QEChargeDensity,
    grid_to_qe,
    qe_to_grid,
    read_qe_charge_density,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure

VASP_PRECS = ("Accurate", "Normal", "Single")
#: VASP's default MAGMOM (1 per ion): what VASP writes on the moment line without a MAGMOM.
VASP_DEFAULT_MAGMOM = 1.0


def read_chgcar(path: str | Path, structure: Structure | None = None) -> DensityGrid:
    """Read a CHGCAR (or CHG/AECCAR/PARCHG) as a :class:`DensityGrid` in e/Å³.

    ``structure``, when given, must be the file's cell and species order (``ValueError``
    otherwise) and the grid is returned on it (exact cell; the file holds 1e-6 Å).
    A truncated or malformed file raises ``ValueError`` naming it.
    """
    from pymatgen.io.vasp.outputs import Chgcar

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CHGCAR not found: {path}")
    try:
        chg = Chgcar.from_file(str(path))
    except Exception as err:  # pymatgen raises many types on malformed input
        raise ValueError(f"{path}: unreadable CHGCAR ({type(err).__name__}: {err})") from None
    if any(k.startswith("diff_") for k in chg.data):
        raise ValueError(f"{path}: non-collinear CHGCAR (4 blocks) is not supported")
    total = np.asarray(chg.data["total"], dtype=float)
    diff = chg.data.get("diff")
    if diff is not None and np.shape(diff) != total.shape:
        raise ValueError(
            f"{path}: magnetisation grid {np.shape(diff)} differs from total grid {total.shape}"
        )
    n_sites = len(chg.poscar.structure)
    if n_sites == 0 or sum(chg.poscar.natoms) != n_sites:
        raise ValueError(f"{path}: POSCAR header lists {chg.poscar.natoms} atoms, has {n_sites}")
    volume = chg.poscar.structure.lattice.volume
    try:
        grid = DensityGrid(
            chg.poscar.structure,
            total / volume,
            None if diff is None else np.asarray(diff, dtype=float) / volume,
            metadata={"source": str(path), "source_format": "chgcar"},
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    aug = {k: v for k, v in (chg.data_aug or {}).items() if v}
    if aug:
        grid.metadata["data_aug"] = aug
    if diff is not None:
        try:
            moments = _read_moment_line(path, total.size, n_sites)
        except (ValueError, IndexError, OSError):  # informational only: VASP ignores it
            moments = None
        if moments is not None:
            grid.metadata["chgcar_magmom"] = moments
    return grid if structure is None else _adopt_structure(grid, structure)


def _read_moment_line(path: Path, n_points: int, n_ions: int) -> list[float] | None:
    """The per-ion moments VASP writes between the total and the magnetisation block.

    pymatgen's parser skips that line; it is read here (streaming, the file is read up to
    it only) so that a CHGCAR written back keeps it. ``None`` when the file has none.
    """
    from monty.io import zopen

    with zopen(str(path), mode="rt", encoding="utf-8") as fh:
        for line in fh:  # POSCAR header: up to the first blank line
            if not line.strip():
                break
        for line in fh:  # grid line
            if line.strip():
                break
        count = 0
        for line in fh:  # the total density
            count += len(line.split())
            if count >= n_points:
                break
        values: list[str] = []
        pending = 0  # occupancy values still to skip
        for line in fh:
            text = line.strip()
            if not text:
                continue
            if text.startswith("augmentation occupancies"):
                pending = int(text.split()[-1])
                continue
            tokens = text.split()
            if pending > 0:
                pending -= len(tokens)
                continue
            if "." not in text:  # the magnetisation grid line: no moment line
                return None
            values.extend(tokens)
            if len(values) >= n_ions:
                return [float(v) for v in values[:n_ions]]
    return None


def _adopt_structure(grid: DensityGrid, structure: Structure) -> DensityGrid:
    """Put ``grid`` on ``structure`` (checked to match), keeping the electron count.

    A CHGCAR holds its cell to 1e-6 Å; the caller's exact cell matters for QE's G order.
    """
    grid.check_matches(structure)
    scale = grid.volume / structure.volume  # CHGCAR holds rho * V
    mag = None if grid.magnetization is None else grid.magnetization * scale
    return DensityGrid(structure, grid.total * scale, mag, dict(grid.metadata))


def write_chgcar(
    grid: DensityGrid,
    path: str | Path,
    data_aug: dict | None = None,
    magmom: Sequence[float] | None = None,
) -> Path:
    """Write ``grid`` as a CHGCAR in VASP's own layout (see the module docstring).

    ``data_aug``: PAW occupancies ``{"total": {ion: values}, "diff": {ion: values}}``
    (default: ``grid.metadata["data_aug"]``, those of a CHGCAR read), written where VASP
    writes them; none are invented. ``magmom``: the per-ion moments of the line VASP writes
    between the spin blocks, in site order (default: ``grid.metadata["chgcar_magmom"]``,
    the structure's ``magmom`` site property, else VASP's default MAGMOM of 1 per ion; VASP
    ignores the values when it reads the file). A non-spin grid without occupancies gives
    exactly pymatgen's file.
    """
    from pymatgen.io.vasp import Poscar
    from pymatgen.io.vasp.outputs import Chgcar

    path = Path(path)
    n_sites = len(grid.structure)
    volume = grid.volume
    data = {"total": grid.total * volume}
    aug = grid.metadata.get("data_aug") if data_aug is None else data_aug
    aug = aug or {}
    unknown = set(aug) - {"total", "diff"}
    if unknown:
        raise ValueError(f"augmentation occupancies for {sorted(unknown)}: only collinear "
                         "'total' and 'diff' blocks are supported")
    if aug.get("diff") and not aug.get("total") and grid.magnetization is not None:
        raise ValueError("augmentation occupancies of the magnetisation without those of the "
                         "total density: VASP would discard the file")
    # pymatgen writes the header and the grids; what it lacks (occupancies in VASP's header
    # format, the moment line) is handed to it as the "legacy" lines it writes verbatim
    # after each block.
    lines = {"total": _occupancy_lines(aug.get("total"), n_sites, "total")}
    if grid.magnetization is not None:
        data["diff"] = grid.magnetization * volume
        lines["total"] += _moment_lines(_moments_for(grid, magmom), n_sites)
        lines["diff"] = _occupancy_lines(aug.get("diff"), n_sites, "diff")
    # a grid without magnetisation is written as a non-spin file: only the total's block
    path.parent.mkdir(parents=True, exist_ok=True)
    Chgcar(Poscar(grid.structure), data, data_aug=lines).write_file(str(path))
    return path


def _moments_for(grid: DensityGrid, magmom: Sequence[float] | None) -> list[float]:
    """The moments of the line between the spin blocks (see :func:`write_chgcar`)."""
    if magmom is None:
        magmom = grid.metadata.get("chgcar_magmom")
    if magmom is None:
        magmom = grid.structure.site_properties.get("magmom")
    if magmom is None:
        return [VASP_DEFAULT_MAGMOM] * len(grid.structure)
    values = list(magmom)
    if len(values) != len(grid.structure) or any(np.ndim(m) for m in values):
        raise ValueError(
            f"magmom has {len(values)} entries for {len(grid.structure)} sites: one "
            "collinear moment per site is needed for the CHGCAR moment line"
        )
    out = [float(m) for m in values]
    if not all(math.isfinite(m) for m in out):
        raise ValueError(f"magmom holds non-finite values: {out}")
    return out


def _fortran_e(value: float, width: int, digits: int) -> str:
    """``value`` as Fortran's ``E<width>.<digits>`` edit descriptor writes it (0.ddddE+xx)."""
    if value == 0:
        text = "0." + "0" * digits + "E+00"
    else:
        mantissa, _, exponent = f"{abs(value):.{digits - 1}E}".partition("E")
        exp = int(exponent) + 1
        if abs(exp) > 99:
            raise ValueError(f"{value} cannot be written as E{width}.{digits}")
        text = f"{'-' if value < 0 else ''}0.{mantissa.replace('.', '')}E{exp:+03d}"
    if len(text) > width:
        raise ValueError(f"{value} does not fit E{width}.{digits}")
    return text.rjust(width)


def _moment_lines(moments: Sequence[float], n_sites: int) -> list[str]:
    """VASP's moment line(s): ``WRITE(IU,'(5E20.12)') (ATOMOM(I), I=1,NIONS)``."""
    assert len(moments) == n_sites
    values = [_fortran_e(m, 20, 12) for m in moments]
    return ["".join(values[i:i + 5]) + "\n" for i in range(0, len(values), 5)]


def _pymatgen_float(value: float) -> str:
    """pymatgen's Fortran-style float (``0.ddddddddddd E+xx``, 17 characters), the format of
    its grid values, kept for the occupancy values so files stay as pymatgen wrote them."""
    text = f"{value:.10E}"
    if value >= 0:
        return f"0.{text[0]}{text[2:12]}E{int(text[13:]) + 1:+03}"
    return f"-.{text[1]}{text[3:13]}E{int(text[14:]) + 1:+03}"


def _occupancy_lines(block: Any, n_sites: int, name: str) -> list[str]:
    """One block of PAW occupancies, ion by ion, with VASP's header line
    ``'("augmentation occupancies",2I4)'`` (VASP reads it as ``'(24X,2I4)'``: pymatgen's
    own header shifts the fields from ion 10 on)."""
    if not block:
        return []
    if isinstance(block, (list, tuple)):  # raw lines kept by older pymatgen versions
        return [str(x) if str(x).endswith("\n") else f"{x}\n" for x in block]
    if not isinstance(block, Mapping):
        raise ValueError(f"augmentation occupancies '{name}' must map ion -> values")
    by_ion = {int(k): np.asarray(v) for k, v in block.items()}
    if sorted(by_ion) != list(range(1, n_sites + 1)):
        raise ValueError(
            f"augmentation occupancies '{name}' are given for ions {sorted(by_ion)}, the cell "
            f"has {n_sites}: VASP needs every ion (1..{n_sites}) or discards the file"
        )
    lines = []
    for ion in range(1, n_sites + 1):
        values = by_ion[ion].ravel()
        if np.iscomplexobj(values):
            raise ValueError(f"complex augmentation occupancies ('{name}', ion {ion}) are "
                             "not supported (collinear CHGCARs only)")
        if values.size > 9999 or not np.all(np.isfinite(values)):
            raise ValueError(f"augmentation occupancies '{name}', ion {ion}: "
                             f"{values.size} values, finite: {bool(np.all(np.isfinite(values)))}")
        lines.append(f"augmentation occupancies{ion:4d}{values.size:4d}\n")
        text = [_pymatgen_float(float(x)) for x in values]
        for i in range(0, len(text), 5):
            chunk = text[i:i + 5]
            lines.append(" " + " ".join(chunk) + ("\n" if len(chunk) == 5 else "  \n"))
    return lines


def vasp_fine_grid(
    structure: Structure, encut: float, prec: str = "Accurate"
) -> tuple[int, int, int]:
    """VASP 6's fine grid ``(NGXF, NGYF, NGZF)`` for ``ENCUT`` (eV) and ``PREC``.

    Uses pymatgen's ``VaspInputSet.calculate_ng``; pin the result in the INCAR, since what
    VASP does with a CHGCAR on another grid is undocumented.
    """
    from pymatgen.io.vasp.sets import VaspInputSet

    if not encut > 0:
        raise ValueError(f"ENCUT must be positive, got {encut} eV")
    key = prec.strip().capitalize() if prec else ""
    if key not in VASP_PRECS:
        raise ValueError(f"PREC must be one of {VASP_PRECS}, got {prec!r}")
    _, fine = VaspInputSet(structure=structure).calculate_ng(
        custom_encut=float(encut), custom_prec=key
    )
    return tuple(int(n) for n in fine)  # type: ignore[return-value]


def chgcar_to_qe(
    chgcar: str | Path | DensityGrid,
    ecutrho_ry: float,
    mill: np.ndarray | None = None,
    gamma_only: bool = False,
    structure: Structure | None = None,
) -> QEChargeDensity:
    """CHGCAR (path or grid) -> QE file contents in pw.x's G order for ``ecutrho_ry``.

    The coefficients are the CHGCAR grid's own Fourier components (exact resampling in G
    space); ``G = 0`` and hence the electron count are kept exactly. Pass the ``structure``
    pw.x will run (checked against the CHGCAR): a CHGCAR holds its cell to only 1e-6 Å, which
    can reorder nearly degenerate G shells, and pw.x reads the order without checking it.
    """
    grid = chgcar if isinstance(chgcar, DensityGrid) else read_chgcar(chgcar)
    if structure is not None:
        grid = _adopt_structure(grid, structure)
    return grid_to_qe(grid, ecutrho_ry, mill=mill, gamma_only=gamma_only)


def qe_to_chgcar(
    qe: str | Path | QEChargeDensity,
    structure: Structure,
    path: str | Path,
    encut: float | None = None,
    prec: str = "Accurate",
    shape: tuple[int, int, int] | None = None,
    data_aug: dict | None = None,
) -> DensityGrid:
    """QE density (file or contents) -> CHGCAR at ``path`` on VASP's fine grid.

    The grid is ``shape`` if given, else :func:`vasp_fine_grid` for ``encut``/``prec``.
    The QE G sphere is evaluated on that grid (components beyond it are dropped), so the
    electron count is kept exactly. Returns the written grid.
    """
    qcd = qe if isinstance(qe, QEChargeDensity) else read_qe_charge_density(qe)
    if shape is None:
        if encut is None:
            raise ValueError("give either encut (eV) or an explicit grid shape")
        shape = vasp_fine_grid(structure, encut, prec)
    grid = qe_to_grid(qcd, structure, shape)
    write_chgcar(grid, path, data_aug=data_aug)
    grid.metadata.update(chgcar=str(path))
    return grid


__all__ = [
    "chgcar_to_qe",
    "qe_to_chgcar",
    "read_chgcar",
    "vasp_fine_grid",
    "write_chgcar",
]
