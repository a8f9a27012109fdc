"""Periodic radius graph: every pair of atoms (including periodic images) closer than a cutoff.

Data keys of a graph (one or several structures concatenated), nequip style::

    species     (n_atoms,)      int   | index into the model's element list
    magmom      (n_atoms,)      float | initial moment per site (μB), 0 for non-magnetic sites
    pos         (n_atoms, 3)    float | Cartesian positions, Å
    edge_src    (n_edges,)      int   | neighbour j (sender)
    edge_dst    (n_edges,)      int   | centre i (receiver)
    edge_shift  (n_edges, 3)    float | Cartesian image offset of j, Å: vec = pos[j] + shift - pos[i]
    batch       (n_atoms,)      int   | which structure each atom belongs to
"""

from __future__ import annotations

import warnings

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres

#: Atoms closer than this (Å) are rejected as overlapping.
MIN_DISTANCE = 0.1
#: Atoms closer than this (Å) are far outside any training data: warn.
WARN_DISTANCE = 0.6


def radius_graph(
    lattice: np.ndarray, cart: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour pairs within ``cutoff`` Å under periodic boundary conditions.

    Returns ``(edge_src, edge_dst, edge_shift, distance)``; ``edge_shift`` is the Cartesian
    offset (Å) of the periodic image of the sender. An atom's own images are included;
    the atom itself is not.

    Raises
    ------
    ValueError
        When two atoms (or an atom and its image) are closer than ``MIN_DISTANCE``.
    """
    lattice = np.ascontiguousarray(lattice, dtype=float)
    cart = np.ascontiguousarray(cart, dtype=float)
    if len(cart) == 0:
        raise ValueError("structure has no atoms")
    dst, src, images, dist = find_points_in_spheres(
        cart, cart, float(cutoff), np.array([1, 1, 1], dtype=np.int64), lattice, tol=1e-8
    )
    dst = dst.astype(np.int64)
    src = src.astype(np.int64)
    self_pair = (src == dst) & (np.abs(images).sum(axis=1) < 0.5)
    dst, src, images, dist = dst[~self_pair], src[~self_pair], images[~self_pair], dist[~self_pair]
    if len(dist) and dist.min() < MIN_DISTANCE:
        k = int(np.argmin(dist))
        raise ValueError(
            f"atoms {dst[k]} and {src[k]} are {dist[k]:.4f} Å apart (below {MIN_DISTANCE} Å): "
            "overlapping atoms"
        )
    if len(dist) and dist.min() < WARN_DISTANCE:
        k = int(np.argmin(dist))
        warnings.warn(
            f"atoms {dst[k]} and {src[k]} are only {dist[k]:.3f} Å apart; the density model "
            "was not trained on such short distances",
            stacklevel=2,
        )
    shift = images @ lattice
    return src, dst, shift, dist
