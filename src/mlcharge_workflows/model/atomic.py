"""The superposition of atomic densities (SAD) the model corrects, stored with the weights.

The radial transforms ``F_s(q) = ∫ 4πr²ρ_s(r) sin(qr)/(qr) dr`` of the pseudopotentials'
``PP_RHOATOM`` (see :mod:`mlcharge_workflows.density.sad`) are tabulated on a fine
``q`` grid at training time and saved in the weights file, so a prediction needs no UPF
file and always uses the SAD the model was trained against. Each table is scaled so that
``F_s(0)`` equals the valence charge exactly: the SAD then integrates to the electron count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Spacing (Å⁻¹) of the stored tables; linear interpolation error is ~1e-6 of z_valence.
DQ = 0.004


@dataclass
class AtomicDensityTable:
    """Radial transforms of the atomic densities of the model's elements.

    Attributes
    ----------
    elements
        Element symbols, the model's species order.
    z_valence
        ``(n_species,)`` valence charges.
    q
        ``(n_q,)`` uniform grid of ``|G|`` (Å⁻¹) starting at 0.
    values
        ``(n_species, n_q)`` ``F_s(q)`` in electrons; zero beyond the table.
    """

    elements: list[str]
    z_valence: np.ndarray
    q: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        self.z_valence = np.asarray(self.z_valence, dtype=float)
        self.q = np.asarray(self.q, dtype=float)
        self.values = np.asarray(self.values, dtype=float)
        if self.values.shape != (len(self.elements), len(self.q)):
            raise ValueError(
                f"atomic density table has shape {self.values.shape}, expected "
                f"({len(self.elements)}, {len(self.q)})"
            )
        if not np.all(np.isfinite(self.values)):
            raise ValueError("atomic density table contains non-finite values")

    @classmethod
    def from_transforms(
        cls, elements: list[str], z_valence: list[float], transform, q_max: float
    ) -> AtomicDensityTable:
        """Tabulate ``transform(element, q) -> F(q)`` (q in Å⁻¹) up to ``q_max``, scaled to z_valence."""
        q = np.arange(0.0, q_max + DQ, DQ)
        values = np.stack([np.asarray(transform(el, q), dtype=float) for el in elements])
        scale = np.asarray(z_valence, dtype=float) / values[:, 0]
        return cls(list(elements), np.asarray(z_valence, dtype=float), q, values * scale[:, None])

    @property
    def q_max(self) -> float:
        return float(self.q[-1])

    def __call__(self, species: int, q: np.ndarray) -> np.ndarray:
        """``F_s(q)`` by linear interpolation (0 beyond the table)."""
        return np.interp(q, self.q, self.values[species], right=0.0)

    def state(self) -> dict:
        """Plain arrays for the weights file."""
        return {
            "elements": list(self.elements),
            "z_valence": self.z_valence.tolist(),
            "q": self.q.astype(np.float32),
            "values": self.values.astype(np.float64),
        }

    @classmethod
    def from_state(cls, state: dict) -> AtomicDensityTable:
        return cls(list(state["elements"]), state["z_valence"], state["q"], state["values"])


def structure_factor(frac: np.ndarray, mill: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``sum_a w_a exp(-2πi m·f_a)`` over the atoms ``frac`` (n, 3), separable per axis, chunked."""
    mill = np.asarray(mill, dtype=np.int64)
    out = np.zeros(len(mill), dtype=complex)
    if len(frac) == 0 or len(mill) == 0:
        return out
    w = np.ones(len(frac)) if weights is None else np.asarray(weights, dtype=float)
    lo = mill.min(axis=0)
    idx = [mill[:, ax] - lo[ax] for ax in range(3)]
    tables = [
        np.exp(-2j * np.pi * np.outer(np.arange(lo[ax], mill[:, ax].max() + 1), frac[:, ax]))
        for ax in range(3)
    ]
    step = max(1, 2_000_000 // max(len(frac), 1))
    for start in range(0, len(mill), step):
        sl = slice(start, start + step)
        ph = tables[0][idx[0][sl]] * tables[1][idx[1][sl]] * tables[2][idx[2][sl]]
        out[sl] = ph @ w
    return out


def sad_coefficients(
    table: AtomicDensityTable,
    species: np.ndarray,
    frac: np.ndarray,
    lattice: np.ndarray,
    mill: np.ndarray,
    moments: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """SAD coefficients (e/Å³) at ``mill``; with ``moments`` (μB per site) also the magnetisation.

    The magnetisation of a site is its atomic density scaled by ``moment / z_valence``
    (pw.x's ``starting_magnetization`` convention).
    """
    lattice = np.asarray(lattice, dtype=float)
    volume = abs(np.linalg.det(lattice))
    q = np.linalg.norm(np.asarray(mill) @ (2 * np.pi * np.linalg.inv(lattice).T), axis=1)
    total = np.zeros(len(mill), dtype=complex)
    mag = None if moments is None else np.zeros(len(mill), dtype=complex)
    for s in np.unique(species):
        sel = np.flatnonzero(species == s)
        form = table(int(s), q) / volume
        total += form * structure_factor(frac[sel], mill)
        if mag is not None and np.any(moments[sel] != 0):
            w = moments[sel] / table.z_valence[s]
            mag += form * structure_factor(frac[sel], mill, w)
    return total, mag
