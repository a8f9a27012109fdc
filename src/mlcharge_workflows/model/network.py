"""The E(3)-equivariant periodic message-passing network that predicts orbital coefficients.

e3nn's gated point convolution (``e3nn.nn.models.v2106``: tensor products of node
features with spherical harmonics of the edge directions, weighted by an MLP of the edge
length, with gates) on the periodic radius graph of :mod:`.graph`. Node inputs are a
one-hot species vector and the site's starting magnetisation (a scalar); the output per
atom is a vector of e3nn irreps (``0e, 1o, 2e, 3o, 4e``) read as orbital coefficients.
The radial basis (``smooth_finite``) and the bias-free MLP make every message vanish
smoothly at the cutoff, so the prediction is continuous when atoms cross it.
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn.models.v2106.gate_points_message_passing import MessagePassing


class OrbitalNetwork(torch.nn.Module):
    """Atoms in, per-atom irreps out.

    Parameters
    ----------
    n_species
        Number of elements (one-hot width).
    irreps_out
        Output irreps per atom (orbital coefficients).
    irreps_hidden
        Hidden node features of the interaction layers.
    n_layers
        Number of convolutions (interaction layers).
    lmax_sh
        Highest ``l`` of the edge spherical harmonics.
    cutoff
        Radius of the graph (Å).
    n_basis, radial_neurons
        Radial basis size and hidden width of the radial MLP.
    avg_neighbors
        Normalisation of the neighbour sum.
    """

    def __init__(
        self,
        n_species: int,
        irreps_out: str | o3.Irreps,
        irreps_hidden: str = "32x0e + 12x1o + 8x2e + 4x3o + 4x4e",
        n_layers: int = 3,
        lmax_sh: int = 3,
        cutoff: float = 4.5,
        n_basis: int = 10,
        radial_neurons: int = 32,
        avg_neighbors: float = 20.0,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        self.n_species = int(n_species)
        self.cutoff = float(cutoff)
        self.n_basis = int(n_basis)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax_sh)
        self.irreps_out = o3.Irreps(irreps_out)
        irreps_in = o3.Irreps(f"{self.n_species + 1}x0e")
        sequence = [irreps_in] + [o3.Irreps(irreps_hidden)] * (n_layers - 1) + [self.irreps_out]
        self.mp = MessagePassing(
            irreps_node_sequence=sequence,
            irreps_node_attr=f"{self.n_species}x0e",
            irreps_edge_attr=self.irreps_sh,
            fc_neurons=[self.n_basis, radial_neurons],
            num_neighbors=avg_neighbors,
        )

    def forward(
        self,
        species: torch.Tensor,
        magmom: torch.Tensor,
        pos: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        edge_shift: torch.Tensor,
    ) -> torch.Tensor:
        """Per-atom output ``(n_atoms, irreps_out.dim)``.

        ``species`` (n,) int, ``magmom`` (n,) starting magnetisation fraction, ``pos`` (n, 3) Å,
        ``edge_shift`` (E, 3) Å: edge vector = ``pos[src] + shift - pos[dst]``.
        """
        onehot = torch.nn.functional.one_hot(species, self.n_species).to(pos.dtype)
        node_in = torch.cat([onehot, magmom.to(pos.dtype)[:, None]], dim=1)
        vec = pos[edge_src] + edge_shift - pos[edge_dst]
        length = vec.norm(dim=1)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        emb = soft_one_hot_linspace(
            length, 0.0, self.cutoff, self.n_basis, basis="smooth_finite", cutoff=True
        ).mul(self.n_basis**0.5)
        return self.mp(node_in, onehot, edge_src, edge_dst, sh, emb)
