"""The superposition of atomic densities (SAD) the model corrects, stored with the weights.

The radial transforms ``F_s(q) = ∫ 4πr²ρ_s(r) sin(qr)/(qr) dr`` of the pseudopotentials'
``PP_RHOATOM`` (see :mod:`mlcharge_workflows.density.sad`) are tabulated on a fine
``q`` grid at training time and saved in the weights file, so a prediction needs no UPF
file. Each table is scaled so that ``F_s(0)`` equals the valence charge exactly: the SAD
then integrates to the electron count.

The reference is swappable at prediction time (:meth:`AtomicDensityTable.with_references`):
the atomic densities of the run's own pseudopotentials (:class:`AtomicReference`, from any
NC/US UPF's ``PP_RHOATOM`` or a VASP POTCAR's atomic pseudo charge density) replace the
training rows, and the model adds its learned deformation to them. The deformation has no
``G = 0`` term (the model sets the total's ``G = 0`` coefficient to ``N / V``), so it holds
no net charge and the prediction integrates to the run's own electron count without any
rescaling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    sources
        Per element, the identity of the pseudopotential a row was replaced with
        (:meth:`with_references`); empty for the training rows. Not saved with the weights.
    """

    elements: list[str]
    z_valence: np.ndarray
    q: np.ndarray
    values: np.ndarray
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

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

    def fingerprint(self, element: str) -> str:
        """Checksum of one row (float32 values on the table's own grid) and its valence."""
        i = self.elements.index(element)
        h = hashlib.sha256(np.float32(self.z_valence[i]).tobytes())
        h.update(np.ascontiguousarray(self.values[i], dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    def with_references(self, references: dict[str, AtomicReference]) -> AtomicDensityTable:
        """This table with the rows of ``references``' elements replaced by their densities.

        Elements are kept in this table's order (the model's species); an element of
        ``references`` the table does not hold raises ``ValueError``. The ``q`` grid is
        extended to the largest reference's range (training rows are zero beyond theirs).
        ``F(0)`` of each new row is the reference's valence: UPF rows are scaled to it (as
        pw.x scales its superposition), POTCAR rows are kept as written apart from ``G = 0``
        (as VASP does); the raw integral is recorded in ``sources[el]["integral"]``, and one
        more than 20 % off the valence is refused.
        """
        unknown = sorted(set(references) - set(self.elements))
        if unknown:
            raise ValueError(
                f"atomic references given for {unknown}, which the model does not know "
                f"(it knows {sorted(self.elements)})"
            )
        q_max = max([self.q_max] + [ref.q_max for ref in references.values()])
        q = np.arange(0.0, q_max + DQ / 2, DQ) if q_max > self.q_max else self.q
        values = np.stack([np.interp(q, self.q, row, right=0.0) for row in self.values])
        z = self.z_valence.copy()
        sources = dict(self.sources)
        for el, ref in references.items():
            if ref.element != el:
                raise ValueError(f"the atomic reference given for {el} is for {ref.element}")
            i = self.elements.index(el)
            row = np.asarray(ref.transform(q), dtype=float)
            row[q > ref.q_max] = 0.0
            if not np.all(np.isfinite(row)) or row[0] <= 0:
                raise ValueError(f"atomic reference of {el} ({ref.name}) integrates to {row[0]}")
            integral = float(row[0])
            if abs(integral / ref.z_valence - 1.0) > 0.2:
                raise ValueError(
                    f"the atomic density of {ref.name} integrates to {integral:.4f} electrons, "
                    f"its valence is {ref.z_valence}: not a valence density this code can use"
                )
            if ref.normalize:  # pw.x scales its superposition to the valence
                row = row * (ref.z_valence / integral)
            else:  # VASP superposes the table as written; only G = 0 is the valence
                row[0] = ref.z_valence
            values[i] = row
            z[i] = ref.z_valence
            sources[el] = {**ref.identity, "integral": integral, "q_max": float(ref.q_max)}
        return AtomicDensityTable(list(self.elements), z, q, values, sources)

    def compare(self, training: AtomicDensityTable, elements: list[str]) -> dict[str, dict]:
        """Per element of ``elements``: whether this table's row differs from ``training``'s.

        A row differs when the valence differs or ``F(q)`` differs by more than 0.1 % of the
        valence anywhere on the training table's range.
        """
        out = {}
        for el in elements:
            i, j = self.elements.index(el), training.elements.index(el)
            mine = np.interp(training.q, self.q, self.values[i], right=0.0)
            diff = float(np.max(np.abs(mine - training.values[j])))
            same_z = abs(self.z_valence[i] - training.z_valence[j]) < 1e-6
            out[el] = {
                "z_valence": float(self.z_valence[i]),
                "z_valence_training": float(training.z_valence[j]),
                "max_form_factor_difference": diff,
                "differs_from_training": bool(not same_z or diff > 1e-3 * training.z_valence[j]),
            }
        return out


@dataclass(frozen=True)
class AtomicReference:
    """The atomic valence density of one pseudopotential, as a radial transform.

    Attributes
    ----------
    element, z_valence
        Element symbol and valence (electrons).
    transform
        ``F(q)`` (electrons) at ``q`` (Å⁻¹).
    q_max
        ``|G|`` (Å⁻¹) beyond which the density is taken as zero.
    identity
        What records store: kind (``UPF``/``POTCAR``), file or symbol, sha256, valence.
    normalize
        Scale the density to integrate to ``z_valence`` (pw.x's convention) rather than
        only setting its ``G = 0`` term (VASP's).
    """

    element: str
    z_valence: float
    transform: Callable[[np.ndarray], np.ndarray]
    q_max: float
    identity: dict[str, Any]
    normalize: bool = True

    @property
    def name(self) -> str:
        return str(self.identity.get("file") or self.identity.get("symbol") or self.element)

    @classmethod
    def from_upf(
        cls, path: str | Path, q_max: float = 60.0, *, atom: Any = None,
        configuration: dict[str, Any] | None = None,
    ) -> AtomicReference:
        """From a UPF file's ``PP_RHOATOM`` (NC or US; PAW refused: see ``ValueError``).

        A PAW start needs one-centre occupancies (becsum) consistent with the density,
        which a predicted density does not carry. ``atom``: the file's density in another
        atomic configuration (a ``UPFAtomicDensity`` on the file's mesh, from
        :func:`mlcharge_workflows.model.configuration.run_references`), used instead of
        ``PP_RHOATOM``; ``configuration``: what was done, kept in ``identity``.
        """
        from mlcharge_workflows.density.sad import read_upf_atomic_density
        from mlcharge_workflows.pseudo import read_upf_header
        from mlcharge_workflows.units import BOHR_TO_ANGSTROM as QE_BOHR_TO_ANGSTROM

        path = Path(path)
        head = read_upf_header(path)
        if head["kind"] == "PAW":
            raise ValueError(
                f"{path.name} is a PAW pseudopotential: a start density for PAW needs the "
                "one-centre occupancies (becsum), which a predicted density does not carry; "
                "use a norm-conserving or ultrasoft file for this element"
            )
        atom = read_upf_atomic_density(path) if atom is None else atom
        identity = {
            "kind": "UPF",
            "file": path.name,
            "pseudo_type": head["kind"],
            "z_valence": atom.z_valence,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        if configuration is not None:
            identity["configuration"] = dict(configuration)
        return cls(
            atom.element, atom.z_valence,
            lambda q: atom.radial_transform(np.asarray(q) * QE_BOHR_TO_ANGSTROM), q_max, identity,
        )

    @classmethod
    def from_potcar(cls, atom: Any) -> AtomicReference:
        """From a :class:`~mlcharge_workflows.density.potcar.PotcarAtomicDensity`."""
        return cls(atom.element, float(atom.z_valence), atom.radial_transform, float(atom.q_max),
                   atom.identity(), normalize=False)


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
