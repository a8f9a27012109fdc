"""The one density type of the package: a structure plus densities on a periodic grid.

Conventions (used by every reader, writer and model in the package):

* ``total[i, j, k]`` is the electron density in e/Å³ at the fractional point
  ``(i / n1, j / n2, k / n3)`` of ``structure.lattice``.
* ``magnetization`` (optional) is ``rho_up - rho_down`` in e/Å³ (μB/Å³) on the same grid.
* Fourier coefficients follow ``rho(r) = sum_m c_m exp(2πi m·f)`` with integer
  Miller indices ``m`` and ``c = fftn(rho) / N``; ``G = m @ lattice.reciprocal_lattice.matrix``
  (2π included, Å⁻¹). ``c_0 * volume`` is the electron count.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from monty.json import MSONable, jsanitize

if TYPE_CHECKING:
    from pymatgen.core import Structure


def fft_miller(shape: tuple[int, int, int]) -> np.ndarray:
    """Miller indices of every point of an FFT grid, shape ``(*shape, 3)``, numpy fftfreq order."""
    axes = [np.fft.fftfreq(n, 1.0 / n).round().astype(np.int64) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def grid_covers(mill: np.ndarray, shape: tuple[int, int, int]) -> bool:
    """Whether an FFT grid of ``shape`` holds every Miller index in ``mill`` without aliasing."""
    need = 2 * np.abs(np.asarray(mill)).max(axis=0) + 1
    return bool(np.all(np.asarray(shape) >= need))


def coefficients_at(values: np.ndarray, mill: np.ndarray) -> np.ndarray:
    """Fourier coefficients ``c_m`` of a real-space grid at the Miller indices ``mill`` (N, 3)."""
    shape = values.shape
    if not grid_covers(mill, shape):
        raise ValueError(
            f"grid {shape} is too small for Miller indices up to "
            f"{np.abs(mill).max(axis=0).tolist()}: it would alias"
        )
    c = np.fft.fftn(values) / values.size
    m = np.asarray(mill)
    return c[m[:, 0] % shape[0], m[:, 1] % shape[1], m[:, 2] % shape[2]]


def grid_from_coefficients(
    coeffs: np.ndarray, mill: np.ndarray, shape: tuple[int, int, int], hermitian_half: bool = False
) -> np.ndarray:
    """Real-space values on ``shape`` from coefficients at ``mill``.

    ``hermitian_half``: only one of each ``±m`` pair is given (QE gamma-only files);
    the conjugate is added at ``-m``.
    """
    shape = tuple(int(n) for n in shape)
    if not grid_covers(mill, shape):
        raise ValueError(
            f"grid {shape} is too small for Miller indices up to "
            f"{np.abs(mill).max(axis=0).tolist()}: it would alias"
        )
    f = np.zeros(shape, dtype=complex)
    m = np.asarray(mill)
    f[m[:, 0] % shape[0], m[:, 1] % shape[1], m[:, 2] % shape[2]] = coeffs
    if hermitian_half:
        nz = ~(m == 0).all(axis=1)
        f[(-m[nz, 0]) % shape[0], (-m[nz, 1]) % shape[1], (-m[nz, 2]) % shape[2]] = np.conj(
            coeffs[nz]
        )
    return np.fft.ifftn(f).real * np.prod(shape)


def _resample(values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Fourier interpolation of a periodic grid onto ``shape`` (Nyquist planes dropped)."""
    old = values.shape
    mill = fft_miller(old).reshape(-1, 3)
    keep = np.ones(len(mill), dtype=bool)
    for ax in range(3):
        lim_old = (old[ax] - 1) // 2
        lim_new = (shape[ax] - 1) // 2
        keep &= np.abs(mill[:, ax]) <= min(lim_old, lim_new)
    mill = mill[keep]
    c = np.fft.fftn(values).reshape(-1)[keep] / values.size
    return grid_from_coefficients(c, mill, shape)


def encode_array(values: np.ndarray) -> dict[str, Any]:
    """A compact JSON form of a float grid: little-endian float64 bytes in base64, and its shape.

    >>> decode_array(encode_array(np.arange(6.0).reshape(1, 2, 3))).tolist()
    [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]
    """
    arr = np.ascontiguousarray(values, dtype="<f8")
    return {"dtype": "<f8", "shape": list(arr.shape),
            "base64": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(data: dict[str, Any] | list, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Inverse of :func:`encode_array`; a plain (nested or flat) list is read too (old documents)."""
    if isinstance(data, dict):
        arr = np.frombuffer(base64.b64decode(data["base64"]), dtype=data.get("dtype", "<f8"))
        return arr.astype(float).reshape(data["shape"])
    arr = np.asarray(data, dtype=float)
    return arr if shape is None else arr.reshape(shape)


@dataclass
class DensityGrid(MSONable):
    """A structure with its electron density (and optional magnetisation) on a periodic grid.

    MSONable: :meth:`as_dict` stores the grids compactly (:func:`encode_array`), so a grid
    goes to jobflow's data store as an object; :meth:`from_dict` also reads the older form
    (grids as flat float lists with a ``shape``).

    Parameters
    ----------
    structure
        The periodic structure the grid belongs to.
    total
        ``(n1, n2, n3)`` electron density in e/Å³.
    magnetization
        ``(n1, n2, n3)`` ``rho_up - rho_down`` in e/Å³, or None for a non-spin-polarised density.
    metadata
        Free-form provenance (source file, engine, model version...).
    """

    structure: Structure
    total: np.ndarray
    magnetization: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.total = np.asarray(self.total, dtype=float)
        if self.total.ndim != 3:
            raise ValueError(f"total density must be a 3D grid, got shape {self.total.shape}")
        if not np.all(np.isfinite(self.total)):
            raise ValueError("total density contains non-finite values (NaN or inf)")
        if self.magnetization is not None:
            self.magnetization = np.asarray(self.magnetization, dtype=float)
            if self.magnetization.shape != self.total.shape:
                raise ValueError(
                    f"magnetization grid {self.magnetization.shape} differs from "
                    f"total grid {self.total.shape}"
                )
            if not np.all(np.isfinite(self.magnetization)):
                raise ValueError("magnetization density contains non-finite values")

    # ------------------------------------------------------------------ serialisation
    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``@module``/``@class`` included) with base64-encoded grids.

        >>> from pymatgen.core import Lattice, Structure
        >>> s = Structure(Lattice.cubic(3.0), ["H"], [[0, 0, 0]])
        >>> g = DensityGrid(s, np.full((2, 2, 2), 0.5), metadata={"source": "x"})
        >>> back = DensityGrid.from_dict(g.as_dict())
        >>> bool(np.array_equal(back.total, g.total)), back.metadata
        (True, {'source': 'x'})
        """
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "structure": self.structure.as_dict(),
            "shape": list(self.shape),
            "total": encode_array(self.total),
            "magnetization": None if self.magnetization is None else encode_array(self.magnetization),
            "metadata": jsanitize(self.metadata, strict=False),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DensityGrid:
        """Inverse of :meth:`as_dict`; also reads grids stored as flat float lists."""
        from pymatgen.core import Structure

        structure = d["structure"]
        if isinstance(structure, dict):
            structure = Structure.from_dict(structure)
        shape = tuple(d["shape"]) if d.get("shape") is not None else None
        mag = d.get("magnetization")
        return cls(
            structure,
            decode_array(d["total"], shape),
            None if mag is None else decode_array(mag, shape),
            metadata=dict(d.get("metadata") or {}),
        )

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(n1, n2, n3)``."""
        return tuple(int(n) for n in self.total.shape)  # type: ignore[return-value]

    @property
    def volume(self) -> float:
        """Cell volume in Å³."""
        return float(self.structure.lattice.volume)

    @property
    def is_spin_polarized(self) -> bool:
        """Whether a magnetisation density is present."""
        return self.magnetization is not None

    @property
    def n_electrons(self) -> float:
        """Integral of the total density over the cell (electrons)."""
        return float(self.total.mean() * self.volume)

    @property
    def total_magnetization(self) -> float:
        """Integral of the magnetisation density (μB per cell); 0 if not spin-polarised."""
        if self.magnetization is None:
            return 0.0
        return float(self.magnetization.mean() * self.volume)

    @property
    def absolute_magnetization(self) -> float:
        """Integral of ``|m(r)|`` (μB per cell); 0 if not spin-polarised."""
        if self.magnetization is None:
            return 0.0
        return float(np.abs(self.magnetization).mean() * self.volume)

    # ------------------------------------------------------------------ operations
    def normalized(self, n_electrons: float) -> DensityGrid:
        """Return a copy whose total density integrates exactly to ``n_electrons``."""
        current = self.n_electrons
        if current <= 0:
            raise ValueError(f"cannot normalise a density that integrates to {current:.6g} e")
        return replace(self, total=self.total * (n_electrons / current))

    def resampled(self, shape: tuple[int, int, int]) -> DensityGrid:
        """Fourier-interpolate onto another grid of the same cell (electron count is kept)."""
        shape = tuple(int(n) for n in shape)
        if shape == self.shape:
            return replace(self)
        mag = None if self.magnetization is None else _resample(self.magnetization, shape)
        return replace(self, total=_resample(self.total, shape), magnetization=mag)

    def fourier(self, mill: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Coefficients (total, magnetization or None) at the Miller indices ``mill`` (N, 3)."""
        mag = None if self.magnetization is None else coefficients_at(self.magnetization, mill)
        return coefficients_at(self.total, mill), mag

    @classmethod
    def from_fourier(
        cls,
        structure: Structure,
        shape: tuple[int, int, int],
        mill: np.ndarray,
        total: np.ndarray,
        magnetization: np.ndarray | None = None,
        metadata: dict | None = None,
    ) -> DensityGrid:
        """Build a grid from Fourier coefficients (e/Å³ convention of this module)."""
        mag = None if magnetization is None else grid_from_coefficients(magnetization, mill, shape)
        return cls(
            structure,
            grid_from_coefficients(total, mill, shape),
            mag,
            metadata=dict(metadata or {}),
        )

    def check_matches(
        self, structure: Structure, lattice_tol: float = 1e-3, site_tol: float = 1e-2
    ) -> None:
        """Raise ``ValueError`` if ``structure`` is not this grid's cell and species order.

        Lattice vectors must agree within ``lattice_tol`` Å and fractional positions
        within ``site_tol`` Å (periodic images allowed).
        """
        mine, other = self.structure, structure
        if len(mine) != len(other):
            raise ValueError(
                f"density is for {len(mine)} atoms ({mine.composition.formula}), "
                f"structure has {len(other)} ({other.composition.formula})"
            )
        dl = np.abs(mine.lattice.matrix - other.lattice.matrix).max()
        if dl > lattice_tol:
            raise ValueError(
                f"density was written for a different cell: lattice vectors differ by {dl:.4f} Å"
            )
        sp_a = [s.species_string for s in mine]
        sp_b = [s.species_string for s in other]
        if sp_a != sp_b:
            raise ValueError(
                f"species order differs between density ({' '.join(sp_a)}) "
                f"and structure ({' '.join(sp_b)})"
            )
        df = mine.frac_coords - other.frac_coords
        df -= np.round(df)
        dist = np.linalg.norm(df @ mine.lattice.matrix, axis=1).max()
        if dist > site_tol:
            raise ValueError(
                f"atomic positions of density and structure differ by up to {dist:.3f} Å"
            )

    def check_electron_count(self, expected: float, rel_tol: float = 0.02) -> None:
        """Raise ``ValueError`` if the density integrates far from ``expected`` electrons."""
        n = self.n_electrons
        if not np.isfinite(n) or abs(n - expected) > rel_tol * max(expected, 1.0):
            raise ValueError(
                f"density integrates to {n:.4f} electrons, expected {expected:.4f} "
                f"(relative tolerance {rel_tol})"
            )
