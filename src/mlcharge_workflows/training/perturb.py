"""Random strain and rattle of a generated cell, shared by both structure generators.

:class:`Perturbation` holds the five options (recorded flat in a dataset manifest, in this
order) and applies them with the draw's random generator; version 1
(:mod:`.structures`) and version 2 (:mod:`.realistic`) differ only in the defaults.

>>> import numpy as np
>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
>>> p = Perturbation(rattle_probability=1.0, strain_probability=0.0)
>>> info = {}
>>> p.apply(si, np.random.default_rng(0), info)
>>> sorted(info)
['rattle_A']
>>> p.settings()["rattle"]
[0.02, 0.1]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure


def strain_structure(
    structure: Structure, rng: np.random.Generator, amount: float, shear: bool = True
) -> dict:
    """Apply a random strain in place: volumetric (up to ``amount``) or, with ``shear``, a
    general symmetric one (diagonal up to ``amount``, off-diagonal up to half).

    A volumetric strain keeps the symmetry of the cell (few k-points, cheap SCF).
    """
    eps = np.zeros((3, 3))
    if shear:
        eps[np.diag_indices(3)] = rng.uniform(-amount, amount, 3)
        off = rng.uniform(-amount / 2, amount / 2, 3)
    else:
        eps[np.diag_indices(3)] = rng.uniform(-amount, amount)
        off = np.zeros(3)
    eps[0, 1] = eps[1, 0] = off[0]
    eps[0, 2] = eps[2, 0] = off[1]
    eps[1, 2] = eps[2, 1] = off[2]
    new = structure.lattice.matrix @ (np.eye(3) + eps)
    structure.lattice = Lattice(new)  # fractional coordinates are kept
    return {"strain_voigt": [round(float(x), 5) for x in (*np.diag(eps), *off)]}


def rattle_structure(structure: Structure, rng: np.random.Generator, amplitude: float) -> None:
    """Displace every atom by a Gaussian vector of RMS length ``amplitude`` Å; in place."""
    disp = rng.normal(0.0, amplitude / np.sqrt(3.0), (len(structure), 3))
    for i, d in enumerate(disp):
        structure.translate_sites([i], d, frac_coords=False, to_unit_cell=True)


@dataclass(frozen=True)
class Perturbation:
    """How a generated cell is strained and rattled (defaults: generator version 1).

    Attributes
    ----------
    strain
        Largest strain component (volumetric, or the diagonal of a shear strain).
    rattle
        ``(min, max)`` RMS rattle amplitude in Å.
    rattle_probability, strain_probability, shear_probability
        Fractions of structures that are rattled, strained, and (of the strained ones) given
        a symmetry-breaking shear; the others keep their symmetry, which keeps their SCF
        cheap (fewer irreducible k-points).
    """

    strain: float = 0.06
    rattle: tuple[float, float] = (0.02, 0.1)
    rattle_probability: float = 0.5
    strain_probability: float = 0.85
    shear_probability: float = 0.35

    def __post_init__(self) -> None:
        for name in ("strain", "rattle_probability", "strain_probability", "shear_probability"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "rattle", (float(self.rattle[0]), float(self.rattle[1])))

    def with_options(self, options: dict[str, Any]) -> Perturbation:
        """A copy with ``options`` (a generator's keyword arguments) changed."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}: the perturbation "
                            f"options are {', '.join(OPTIONS)}")
        return replace(self, **options)

    def settings(self) -> dict[str, Any]:
        """The options as a generator records them (JSON: ``rattle`` a list)."""
        out = asdict(self)
        out["rattle"] = list(self.rattle)
        return out

    def apply(self, structure: Structure, rng: np.random.Generator, info: dict,
              strain: bool = True) -> None:
        """Strain (unless ``strain`` is False: no random number is drawn for it) and rattle
        ``structure`` in place, adding ``strain_voigt`` / ``rattle_A`` to ``info``."""
        if strain and rng.random() < self.strain_probability:
            shear = rng.random() < self.shear_probability
            info.update(strain_structure(structure, rng, self.strain, shear))
        if rng.random() < self.rattle_probability and len(structure) > 1:
            amp = float(rng.uniform(*self.rattle))
            rattle_structure(structure, rng, amp)
            info["rattle_A"] = round(amp, 4)


#: Names of the options, in the order a manifest records them.
OPTIONS = tuple(f.name for f in fields(Perturbation))
