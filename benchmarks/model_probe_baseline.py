"""A ChargE3Net-size probe-point network, for timing only (random weights).

Sized like ChargE3Net's published configuration (Koker et al. 2024, ``e3_density.yaml``):
3 interaction layers, lmax 4, total multiplicity 500 split evenly over ``l = 0..4`` and both
parities, 20 Gaussian radial basis functions, radial MLP width 100, 4 Å cutoff. Atoms pass
messages among themselves; every grid point is a receive-only probe fed by the atoms within
4 Å, one probe convolution per atom layer, then a scalar readout. Written here with e3nn
building blocks; it is not ChargE3Net's code.
"""

from __future__ import annotations

import numpy as np
import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from e3nn.o3 import FullyConnectedTensorProduct, TensorProduct
from pymatgen.optimization.neighbors import find_points_in_spheres


def charge3net_irreps(total_mul: int = 500, lmax: int = 4) -> o3.Irreps:
    return o3.Irreps(
        [(round(total_mul / (lmax + 1) / (2 * l + 1)), (l, p)) for l in range(lmax + 1) for p in (-1, 1)]
    )


def _paths(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_out: o3.Irreps):
    mid, instr = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_e) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_e:
                if ir_out in irreps_out:
                    instr.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    mid = o3.Irreps(mid)
    mid_sorted, perm, _ = mid.sort()
    return mid_sorted, [(a, b, perm[c], m, t) for a, b, c, m, t in instr]


class OneWayConvolution(torch.nn.Module):
    """Messages from senders (atoms) to receivers (atoms or probes)."""

    def __init__(self, irreps_send, irreps_recv, irreps_sh, irreps_out, n_basis, num_neighbors):
        super().__init__()
        self.num_neighbors = num_neighbors
        self.sc = FullyConnectedTensorProduct(irreps_recv, "0e", irreps_out)
        self.lin1 = FullyConnectedTensorProduct(irreps_send, "0e", irreps_send)
        mid, instr = _paths(o3.Irreps(irreps_send), irreps_sh, o3.Irreps(irreps_out))
        self.tp = TensorProduct(irreps_send, irreps_sh, mid, instr, internal_weights=False, shared_weights=False)
        self.fc = FullyConnectedNet([n_basis, 100, self.tp.weight_numel], torch.nn.functional.silu)
        self.lin2 = FullyConnectedTensorProduct(mid, "0e", irreps_out)

    def forward(self, send, recv, src, dst, sh, emb):
        one_s = send.new_ones(send.shape[0], 1)
        one_r = recv.new_ones(recv.shape[0], 1)
        msg = self.tp(self.lin1(send, one_s)[src], sh, self.fc(emb))
        agg = msg.new_zeros(recv.shape[0], msg.shape[1]).index_add_(0, dst, msg)
        return self.sc(recv, one_r) + self.lin2(agg / self.num_neighbors**0.5, one_r)


def _gate(irreps_hidden: o3.Irreps, irreps_in: o3.Irreps, irreps_sh: o3.Irreps) -> Gate:
    def exists(ir):
        return any(ir in a * b for _, a in irreps_in for _, b in irreps_sh)

    scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l == 0 and exists(ir)]).simplify()
    gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l > 0 and exists(ir)])
    gates = o3.Irreps([(m, "0e") for m, _ in gated]).simplify()
    act = {1: torch.nn.functional.silu, -1: torch.tanh}
    return Gate(scalars, [act[ir.p] for _, ir in scalars], gates, [torch.sigmoid] * len(gates), gated)


class ProbeNetwork(torch.nn.Module):
    """Atom layers plus one probe layer per atom layer, scalar density readout."""

    def __init__(self, n_species: int = 10, n_layers: int = 3, mul: int = 500, lmax: int = 4,
                 cutoff: float = 4.0, n_basis: int = 20, num_neighbors: float = 20.0):
        super().__init__()
        self.cutoff, self.n_basis, self.n_species = cutoff, n_basis, n_species
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        hidden = charge3net_irreps(mul, lmax)
        self.atom_convs, self.atom_gates = torch.nn.ModuleList(), torch.nn.ModuleList()
        self.probe_convs, self.probe_gates = torch.nn.ModuleList(), torch.nn.ModuleList()
        irreps_atom, irreps_probe = o3.Irreps(f"{n_species}x0e"), o3.Irreps("0e")
        for _ in range(n_layers):
            gate = _gate(hidden, irreps_atom, self.irreps_sh)
            self.atom_convs.append(OneWayConvolution(irreps_atom, irreps_atom, self.irreps_sh, gate.irreps_in, n_basis, num_neighbors))
            self.atom_gates.append(gate)
            irreps_atom = gate.irreps_out
            pgate = _gate(hidden, irreps_atom, self.irreps_sh)
            self.probe_convs.append(OneWayConvolution(irreps_atom, irreps_probe, self.irreps_sh, pgate.irreps_in, n_basis, num_neighbors))
            self.probe_gates.append(pgate)
            irreps_probe = pgate.irreps_out
        self.readout = o3.Linear(irreps_probe, "0e")

    def _edge(self, vec):
        sh = o3.spherical_harmonics(self.irreps_sh, vec, True, normalization="component")
        emb = soft_one_hot_linspace(vec.norm(dim=1), 0.0, self.cutoff, self.n_basis, "gaussian", False)
        return sh, emb

    def atoms(self, species, pos, src, dst, shift):
        x = torch.nn.functional.one_hot(species, self.n_species).float()
        sh, emb = self._edge(pos[src] + shift - pos[dst])
        layers = []
        for conv, gate in zip(self.atom_convs, self.atom_gates):
            x = gate(conv(x, x, src, dst, sh, emb))
            layers.append(x)
        return layers

    def probes(self, layers, atom_pos, probe_pos, src, dst, shift):
        sh, emb = self._edge(probe_pos[dst] - (atom_pos[src] + shift))
        p = probe_pos.new_zeros(probe_pos.shape[0], 1)
        for conv, gate, atoms in zip(self.probe_convs, self.probe_gates, layers):
            p = gate(conv(atoms, p, src, dst, sh, emb))
        return self.readout(p)[:, 0]


def graphs(lattice: np.ndarray, cart: np.ndarray, probes: np.ndarray, cutoff: float):
    """Atom-atom edges and atom->probe edges (periodic), as torch tensors."""
    pbc = np.array([1, 1, 1], dtype=np.int64)
    dst, src, img, dist = find_points_in_spheres(cart, cart, cutoff, pbc, lattice, tol=1e-8)
    keep = dist > 1e-8
    atom = (torch.as_tensor(src[keep]), torch.as_tensor(dst[keep]), torch.as_tensor(img[keep] @ lattice, dtype=torch.float32))
    pdst, psrc, pimg, _ = find_points_in_spheres(cart, probes, cutoff, pbc, lattice, tol=1e-8)
    probe = (torch.as_tensor(psrc), torch.as_tensor(pdst), torch.as_tensor(pimg @ lattice, dtype=torch.float32))
    return atom, probe
