"""Quantum ESPRESSO ``charge-density.dat`` and ``paw.txt`` I/O, QE's G order and FFT grid.

The file (QE 6.7, ``Modules/io_base.f90``) is Fortran sequential unformatted with 4-byte
little-endian record markers: ``gamma_only, ngm_g, nspin``; ``b1, b2, b3`` (bohr⁻¹, 2π
included); ``mill(3, ngm_g)``; one complex*16 record per spin component. Densities are in
e/bohr³ with ``rho(r) = sum_G rho_G exp(iG·r)``; for nspin=2 the components are
``[rho_up + rho_down, rho_up - rho_down]``.

pw.x 6.7 ignores the Miller indices it reads: coefficients must be in QE's own order
(``ggen``: sorted by ``|G|²`` with tolerance 1e-8, ties in generation order). A wrong order is
read without a warning. :func:`qe_gvector_order` reproduces that order; a pw.x dry run's file
(``reference=``) gives it too.

Everything public takes and returns Å and e/Å³ except :class:`QEChargeDensity`, which holds
the file's own numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlcharge_workflows.density.grid import DensityGrid, grid_from_coefficients
from mlcharge_workflows.density.qe_gvectors import (
    QE_BOHR_TO_ANGSTROM as BOHR_TO_ANGSTROM,
)
from mlcharge_workflows.density.qe_gvectors import (
    QE_PER_BOHR3_TO_PER_ANGSTROM3 as PER_BOHR3_TO_PER_ANGSTROM3,
)
from mlcharge_workflows.density.qe_gvectors import (
    fft_grid_for_miller,
    qe_fft_fact,
    qe_fft_grid,
    qe_gvector_order,
    qe_reciprocal_bohr,
)
from mlcharge_workflows.density.qe_xml import read_qe_xml

if TYPE_CHECKING:
    from pymatgen.core import Structure
_MARKER = np.dtype("<i4")


@dataclass
class QEChargeDensity:
    """Contents of a ``charge-density.dat`` in the file's own units and conventions.

    Parameters
    ----------
    gamma_only
        Half-sphere storage (``-G`` implied by Hermitian symmetry).
    b
        ``(3, 3)`` reciprocal vectors as rows, bohr⁻¹ with 2π included.
    mill
        ``(N, 3)`` Miller indices, ``G = mill @ b``.
    rho_g
        ``(nspin, N)`` complex coefficients in e/bohr³: ``[total]`` or ``[total, up - down]``.
    """

    gamma_only: bool
    b: np.ndarray
    mill: np.ndarray
    rho_g: np.ndarray

    def __post_init__(self) -> None:
        self.gamma_only = bool(self.gamma_only)
        self.b = np.asarray(self.b, dtype=float).reshape(3, 3)
        self.mill = np.asarray(self.mill, dtype=np.int64).reshape(-1, 3)
        rho = np.asarray(self.rho_g, dtype=complex)
        self.rho_g = rho[None, :] if rho.ndim == 1 else rho
        if self.rho_g.ndim != 2 or self.rho_g.shape[1] != len(self.mill):
            raise ValueError(
                f"rho_g shape {self.rho_g.shape} does not match {len(self.mill)} Miller indices"
            )
        if self.nspin not in (1, 2, 4):
            raise ValueError(f"nspin must be 1, 2 or 4, got {self.nspin}")

    @property
    def nspin(self) -> int:
        """Number of stored spin components."""
        return int(self.rho_g.shape[0])

    @property
    def ngm(self) -> int:
        """Number of G vectors."""
        return len(self.mill)

    @property
    def cell_bohr(self) -> np.ndarray:
        """Direct lattice vectors (rows) in bohr."""
        return 2.0 * np.pi * np.linalg.inv(self.b).T

    @property
    def lattice_angstrom(self) -> np.ndarray:
        """Direct lattice vectors (rows) in Å."""
        return self.cell_bohr * BOHR_TO_ANGSTROM

    @property
    def omega_bohr3(self) -> float:
        """Cell volume in bohr³."""
        return float(abs(np.linalg.det(self.cell_bohr)))

    @property
    def n_electrons(self) -> float:
        """Electron count ``rho_G(0) * omega`` (0 if G=0 is absent)."""
        i0 = np.flatnonzero((self.mill == 0).all(axis=1))
        return float(self.rho_g[0, i0[0]].real * self.omega_bohr3) if i0.size else 0.0


# ---------------------------------------------------------------- binary records
def _records(data: bytes, path: Path) -> list[bytes]:
    """Split a Fortran sequential unformatted file into its records, checking every marker."""
    out, pos, size = [], 0, len(data)
    while pos < size:
        if pos + 4 > size:
            raise ValueError(f"{path}: truncated record marker at byte {pos}")
        n = int(np.frombuffer(data, _MARKER, 1, pos)[0])
        if n < 0 or pos + 8 + n > size:
            raise ValueError(
                f"{path}: truncated or corrupt record {len(out) + 1} at byte {pos} "
                f"(length {n}, file has {size} bytes)"
            )
        tail = int(np.frombuffer(data, _MARKER, 1, pos + 4 + n)[0])
        if tail != n:
            raise ValueError(f"{path}: corrupt record {len(out) + 1}: markers {n} != {tail}")
        out.append(data[pos + 4 : pos + 4 + n])
        pos += n + 8
    return out


def _record_bytes(arr: np.ndarray) -> bytes:
    body = np.ascontiguousarray(arr).tobytes()
    marker = np.array([len(body)], dtype=_MARKER).tobytes()
    return marker + body + marker


def read_qe_charge_density(path: str | Path) -> QEChargeDensity:
    """Read a QE ``charge-density.dat``; a corrupt or truncated file raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QE charge density file not found: {path}")
    recs = _records(path.read_bytes(), path)
    if len(recs) < 4 or len(recs[0]) != 12:
        raise ValueError(f"{path}: not a QE charge-density file ({len(recs)} records)")
    gamma, ngm, nspin = (int(x) for x in np.frombuffer(recs[0], "<i4"))
    if gamma not in (0, 1) or ngm <= 0 or nspin not in (1, 2, 4):
        raise ValueError(
            f"{path}: bad header (gamma_only={gamma}, ngm={ngm}, nspin={nspin})"
        )
    expected = [12, 72, 12 * ngm] + [16 * ngm] * nspin
    sizes = [len(r) for r in recs]
    if sizes != expected:
        raise ValueError(
            f"{path}: truncated or corrupt: record sizes {sizes}, expected {expected} "
            f"for ngm={ngm}, nspin={nspin}"
        )
    b = np.frombuffer(recs[1], "<f8").reshape(3, 3).copy()
    mill = np.frombuffer(recs[2], "<i4").reshape(ngm, 3).astype(np.int64)
    rho = np.stack([np.frombuffer(r, "<c16") for r in recs[3:]])
    if not (np.all(np.isfinite(b)) and abs(np.linalg.det(b)) > 0):
        raise ValueError(f"{path}: corrupt reciprocal lattice vectors {b.tolist()}")
    if not np.all(np.isfinite(rho)):
        raise ValueError(f"{path}: density coefficients contain NaN or inf")
    if not (mill == 0).all(axis=1).any():
        raise ValueError(f"{path}: corrupt Miller indices (no G = 0 component)")
    return QEChargeDensity(bool(gamma), b, mill, rho)


def write_qe_charge_density(path: str | Path, qcd: QEChargeDensity) -> Path:
    """Write ``qcd`` as a QE ``charge-density.dat`` (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        _record_bytes(np.array([int(qcd.gamma_only), qcd.ngm, qcd.nspin], dtype="<i4")),
        _record_bytes(qcd.b.astype("<f8").reshape(9)),
        _record_bytes(qcd.mill.astype("<i4").reshape(-1)),
        *(_record_bytes(qcd.rho_g[s].astype("<c16")) for s in range(qcd.nspin)),
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(parts))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- paw.txt
def read_paw_txt(path: str | Path) -> np.ndarray:
    """Read ``paw.txt`` (list-directed ``becsum(nhm*(nhm+1)/2, nat, nspin)``) as a flat array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PAW occupation file not found: {path}")
    try:
        values = np.array(path.read_text().replace("D", "E").split(), dtype=float)
    except ValueError as err:
        raise ValueError(f"{path}: corrupt PAW occupations ({err})") from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"{path}: empty or non-finite PAW occupations")
    return values


def write_paw_txt(path: str | Path, becsum: np.ndarray) -> Path:
    """Write PAW occupations (flat, in the file's order) in the list-directed layout pw.x reads."""
    path = Path(path)
    flat = np.asarray(becsum, dtype=float).reshape(-1)
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise ValueError("PAW occupations must be a non-empty finite array")
    lines = [
        " " + " ".join(f"{x:25.17E}" for x in flat[i : i + 3]) for i in range(0, flat.size, 3)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- grid <-> file
def _coefficients_padded(values: np.ndarray, mill: np.ndarray) -> np.ndarray:
    """Coefficients of a real-space grid at ``mill``; zero beyond the grid's Nyquist limit."""
    shape = np.array(values.shape)
    c = np.fft.fftn(values) / values.size
    inside = np.all(np.abs(mill) <= (shape - 1) // 2, axis=1)
    out = np.zeros(len(mill), dtype=complex)
    m = mill[inside]
    out[inside] = c[m[:, 0] % shape[0], m[:, 1] % shape[1], m[:, 2] % shape[2]]
    return out


def _check_cell(lattice_file: np.ndarray, lattice: np.ndarray, what: str, tol: float) -> None:
    diff = float(np.abs(np.asarray(lattice_file) - np.asarray(lattice)).max())
    if diff > tol:
        raise ValueError(
            f"{what} was written for a different cell: lattice vectors differ by {diff:.3g} Å "
            f"(file cell {np.round(lattice_file, 5).tolist()}, "
            f"structure cell {np.round(lattice, 5).tolist()})"
        )


def grid_to_qe(
    grid: DensityGrid,
    ecutrho_ry: float,
    mill: np.ndarray | None = None,
    gamma_only: bool = False,
) -> QEChargeDensity:
    """Convert a :class:`DensityGrid` (e/Å³) to QE file contents (e/bohr³, pw.x's G order).

    ``mill`` (e.g. from a pw.x dry-run file) fixes the G list and order; otherwise
    :func:`qe_gvector_order` computes it. Components beyond the grid's resolution are zero.
    """
    lattice = grid.structure.lattice.matrix
    if mill is None:
        mill = qe_gvector_order(lattice, ecutrho_ry, gamma_only)
    mill = np.asarray(mill, dtype=np.int64).reshape(-1, 3)
    to_file = 1.0 / PER_BOHR3_TO_PER_ANGSTROM3
    comps = [grid.total] if grid.magnetization is None else [grid.total, grid.magnetization]
    rho_g = np.stack([_coefficients_padded(v, mill) * to_file for v in comps])
    return QEChargeDensity(gamma_only, qe_reciprocal_bohr(lattice), mill, rho_g)


def qe_to_grid(
    qcd: QEChargeDensity,
    structure: Structure,
    shape: tuple[int, int, int] | None = None,
    lattice_tol: float = 1e-4,
) -> DensityGrid:
    """Convert QE file contents to a :class:`DensityGrid` on ``shape`` (default: QE's FFT grid).

    Raises ``ValueError`` if the file's cell is not ``structure``'s (within ``lattice_tol`` Å)
    or the file is non-collinear (nspin=4). A ``shape`` too coarse for the G sphere low-passes.
    """
    _check_cell(qcd.lattice_angstrom, structure.lattice.matrix, "QE charge density", lattice_tol)
    if qcd.nspin == 4:
        raise ValueError("non-collinear QE densities (nspin=4) are not supported")
    shape = fft_grid_for_miller(qcd.mill) if shape is None else tuple(int(n) for n in shape)
    keep = np.all(np.abs(qcd.mill) <= (np.array(shape) - 1) // 2, axis=1)
    mill = qcd.mill[keep]
    vals = [
        grid_from_coefficients(
            qcd.rho_g[s, keep] * PER_BOHR3_TO_PER_ANGSTROM3, mill, shape, qcd.gamma_only
        )
        for s in range(qcd.nspin)
    ]
    meta = {"source_format": "qe-charge-density", "gamma_only": qcd.gamma_only, "ngm": qcd.ngm}
    return DensityGrid(structure, vals[0], vals[1] if qcd.nspin == 2 else None, metadata=meta)


# ---------------------------------------------------------------- outdir level
def _locate_density(path: Path) -> Path:
    """``charge-density.dat`` inside a QE outdir, a ``.save`` folder, or the file itself."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no QE density at {path}")
    if (path / "charge-density.dat").is_file():
        return path / "charge-density.dat"
    found = sorted(path.glob("*.save/charge-density.dat"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"{path}: no charge-density.dat (nor <prefix>.save/ holding one)")
    raise ValueError(f"{path}: several QE densities, name one: {[str(f) for f in found]}")


def read_qe_density(
    path: str | Path,
    structure: Structure | None = None,
    expected_electrons: float | None = None,
    shape: tuple[int, int, int] | None = None,
    electron_tol: float = 0.02,
) -> DensityGrid:
    """Read a QE density (outdir, ``<prefix>.save`` or ``charge-density.dat``) as a grid in e/Å³.

    ``shape`` defaults to pw.x's FFT grid from the XML, else :func:`fft_grid_for_miller`.

    The structure comes from ``data-file-schema.xml`` beside the file when not given; when both
    exist they must agree (cell, species order, positions). The electron count is checked
    against ``expected_electrons``, else the XML's ``nelec`` (``ValueError`` beyond
    ``electron_tol`` relative).
    """
    dat = _locate_density(Path(path))
    xml = dat.parent / "data-file-schema.xml"
    xml_structure, info = read_qe_xml(xml) if xml.is_file() else (None, {})
    if structure is None:
        if xml_structure is None:
            raise ValueError(f"{dat}: no data-file-schema.xml beside it; pass structure=")
        structure = xml_structure
    elif xml_structure is not None:
        DensityGrid(xml_structure, np.zeros((1, 1, 1))).check_matches(structure)
    if shape is None:
        shape = info.get("fft_grid")  # pw.x's own grid when known
    grid = qe_to_grid(read_qe_charge_density(dat), structure, shape)
    grid.metadata.update(source=str(dat), engine="qe", **info)
    expected = expected_electrons if expected_electrons is not None else info.get("nelec")
    if expected is not None:
        grid.check_electron_count(expected, electron_tol)
    return grid


def write_qe_start_density(
    save_dir: str | Path,
    grid: DensityGrid,
    ecutrho_ry: float,
    reference: str | Path | QEChargeDensity | None = None,
    paw_becsum: np.ndarray | None = None,
    expected_electrons: float | None = None,
    gamma_only: bool = False,
    electron_tol: float = 0.02,
) -> Path:
    """Write ``grid`` as ``<save_dir>/charge-density.dat`` for ``startingpot='file'``.

    ``save_dir`` is pw.x's ``<outdir>/<prefix>.save``. ``reference`` (a pw.x-written
    charge-density.dat, its folder, or its contents) fixes the G order and gamma_only;
    otherwise the computed order for ``ecutrho_ry`` is used. ``paw_becsum`` writes ``paw.txt``.
    Returns the path of the written file.
    """
    save_dir = Path(save_dir)
    if expected_electrons is not None:
        grid.check_electron_count(expected_electrons, electron_tol)
    mill = None
    if reference is not None:
        ref = (
            reference
            if isinstance(reference, QEChargeDensity)
            else read_qe_charge_density(_locate_density(Path(reference)))
        )
        _check_cell(ref.lattice_angstrom, grid.structure.lattice.matrix, "reference density", 1e-4)
        if ref.nspin == 2 and grid.magnetization is None:
            raise ValueError(
                "reference run is spin-polarised (nspin=2) but the density has no "
                "magnetization: pw.x would start non-magnetic; give the grid a magnetization"
            )
        mill, gamma_only = ref.mill, ref.gamma_only
    qcd = grid_to_qe(grid, ecutrho_ry, mill=mill, gamma_only=gamma_only)
    out = write_qe_charge_density(save_dir / "charge-density.dat", qcd)
    if paw_becsum is not None:
        write_paw_txt(save_dir / "paw.txt", paw_becsum)
    return out


__all__ = [
    "QEChargeDensity",
    "fft_grid_for_miller",
    "grid_to_qe",
    "qe_fft_fact",
    "qe_fft_grid",
    "qe_gvector_order",
    "qe_reciprocal_bohr",
    "qe_to_grid",
    "read_paw_txt",
    "read_qe_charge_density",
    "read_qe_density",
    "read_qe_xml",
    "write_paw_txt",
    "write_qe_charge_density",
    "write_qe_start_density",
]
