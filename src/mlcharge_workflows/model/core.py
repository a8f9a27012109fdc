"""The density model: SAD + an equivariant correction in atom-centred Gaussian orbitals.

``rho(G) = SAD(G) + (1/V) sum_a sum_o C_a,o phi_o(G) exp(-iG·R_a)``, with ``C`` from
:class:`.network.OrbitalNetwork` and ``phi_o`` the analytic orbitals of :mod:`.basis`;
the ``G = 0`` term is set to ``N_valence / V`` (exact normalisation). Cells with a
starting magnetisation get a second, independent set of orbitals for ``rho_up - rho_down``
on top of the SAD scaled by the starting moments.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from e3nn import o3

from mlcharge_workflows.density.sad import DEFAULT_STARTING_MAGNETIZATION
from mlcharge_workflows.model.atomic import AtomicDensityTable
from mlcharge_workflows.model.basis import (
    OrbitalLayout,
    ReciprocalGeometry,
    SpeciesTerm,
    even_tempered,
    q_cutoff,
    species_fourier,
)
from mlcharge_workflows.model.graph import radius_graph
from mlcharge_workflows.model.network import OrbitalNetwork
from mlcharge_workflows.units import BOHR_TO_ANGSTROM

#: Exponents (Å⁻²) are kept in this range while learning.
ALPHA_RANGE = (0.05, 64.0)


#: ModelConfig fields passed unchanged to :class:`OrbitalNetwork`.
NETWORK_OPTIONS = ("irreps_hidden", "n_layers", "lmax_sh", "cutoff", "n_basis",
                   "radial_neurons", "avg_neighbors")

@dataclass
class ModelConfig:
    """Hyper-parameters of a :class:`DensityModel` (saved with the weights)."""

    elements: list[str]
    cutoff: float = 4.5
    n_layers: int = 3
    irreps_hidden: str = "32x0e + 8x1o + 6x2e"
    lmax_sh: int = 4
    n_basis: int = 10
    radial_neurons: int = 32
    avg_neighbors: float = 20.0
    orbital_muls: tuple[int, ...] = (8, 6, 6, 4, 2)
    magnetization_muls: tuple[int, ...] = (4, 2, 2, 1)
    alpha_min: float = 0.25
    alpha_max: float = 16.0
    learn_exponents: bool = True
    learn_moments: bool = False
    use_sad: bool = True
    starting_magnetization: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_STARTING_MAGNETIZATION)
    )
    ecutrho_ry: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.orbital_muls = tuple(int(m) for m in self.orbital_muls)
        self.magnetization_muls = tuple(int(m) for m in self.magnetization_muls)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Cell:
    """A structure prepared for the model (fixed arrays; see :meth:`DensityModel.prepare`)."""

    species: np.ndarray  # (n,) int | index into model elements
    frac: np.ndarray  # (n, 3) | fractional coordinates
    lattice: np.ndarray  # (3, 3) | Å
    moments: np.ndarray  # (n,) | starting magnetisation fraction (-1..1)
    spin: bool  # whether a magnetisation density is predicted
    edges: tuple[np.ndarray, np.ndarray, np.ndarray]  # src, dst, Cartesian shift (Å)
    n_electrons: float
    mill: np.ndarray | None = None  # (N, 3) | G vectors to evaluate
    geom: ReciprocalGeometry | None = None
    table: AtomicDensityTable | None = None  # atomic reference (None: the model's own)
    sad_scale: np.ndarray | None = None  # (n,) | training / reference valence per site

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def cart(self) -> np.ndarray:
        return self.frac @ self.lattice


class DensityModel(torch.nn.Module):
    """Structure in, Fourier coefficients of the valence density (and magnetisation) out."""

    def __init__(self, config: ModelConfig, table: AtomicDensityTable) -> None:
        super().__init__()
        if list(table.elements) != list(config.elements):
            raise ValueError(
                f"atomic density table elements {table.elements} differ from the model's "
                f"{config.elements}"
            )
        self.config = config
        self.table = table
        self.layout = OrbitalLayout(config.orbital_muls)
        self.mag_layout = OrbitalLayout(config.magnetization_muls)
        irreps_out = self.layout.irreps + self.mag_layout.irreps
        if config.learn_moments:  # one scalar per atom: the change of its SAD moment
            irreps_out = irreps_out + o3.Irreps("1x0e")
        network_options = {name: getattr(config, name) for name in NETWORK_OPTIONS}
        self.network = OrbitalNetwork(
            n_species=len(config.elements), irreps_out=irreps_out, **network_options
        )
        n_s = len(config.elements)
        self.log_alpha = torch.nn.Parameter(self._initial_log_alpha(self.layout, n_s))
        self.log_alpha_mag = torch.nn.Parameter(self._initial_log_alpha(self.mag_layout, n_s))
        if not config.learn_exponents:
            self.log_alpha.requires_grad_(False)
            self.log_alpha_mag.requires_grad_(False)
        self.output_scale = torch.nn.Parameter(torch.tensor(0.1))
        self.metadata: dict = {}
        self.weights_path: str | None = None

    def species_qmax(self) -> np.ndarray:
        """Per species, the |G| (Å⁻¹) up to which its orbitals are evaluated.

        That is the sphere of the species' ``ecutrho`` (pw.x keeps nothing beyond it);
        species without one get the sphere where their largest allowed exponent vanishes.
        """
        out = []
        for el in self.config.elements:
            ecut = self.config.ecutrho_ry.get(el)
            if ecut:
                out.append(math.sqrt(ecut) / BOHR_TO_ANGSTROM)
            else:
                out.append(q_cutoff(ALPHA_RANGE[1], max(self.layout.lmax, 1)))
        return np.array(out)

    def alpha_upper(self) -> np.ndarray:
        """Largest exponent per species: its orbitals fall to ~e^-6 of their peak at :meth:`species_qmax`."""
        return np.minimum(self.species_qmax() ** 2 / 25.0, ALPHA_RANGE[1])

    def _initial_log_alpha(self, layout: OrbitalLayout, n_species: int) -> torch.Tensor:
        rows = []
        for upper in self.alpha_upper():
            top = min(self.config.alpha_max, float(upper))
            per_l = [even_tempered(m, min(self.config.alpha_min, top), top) for m in layout.muls]
            rows.append(np.log(np.concatenate(per_l)) if layout.n_radial else np.zeros(0))
        return torch.as_tensor(np.array(rows), dtype=torch.get_default_dtype())

    # ------------------------------------------------------------------ elements
    @property
    def elements(self) -> list[str]:
        """Elements in the model's species order."""
        return list(self.config.elements)

    @property
    def supported_elements(self) -> list[str]:
        """Elements the model was trained on (sorted)."""
        return sorted(self.config.elements)

    def species_of(self, structure) -> np.ndarray:
        """Species indices of a structure; ``ValueError`` naming unknown elements."""
        if not structure.is_ordered:
            raise ValueError("structure has partially occupied sites; the model needs an ordered cell")
        symbols = [site.specie.symbol for site in structure]
        unknown = sorted(set(symbols) - set(self.config.elements))
        if unknown:
            raise ValueError(
                f"the density model does not know element(s) {', '.join(unknown)}; "
                f"it was trained on: {', '.join(self.supported_elements)}"
            )
        index = {el: i for i, el in enumerate(self.config.elements)}
        return np.array([index[s] for s in symbols], dtype=np.int64)

    def starting_moments(self, structure, species: np.ndarray) -> np.ndarray:
        """Starting magnetisation fraction per site: ``magmom`` site property / z_valence, else per element."""
        magmom = structure.site_properties.get("magmom")
        if magmom is not None:
            mom = np.array([float(np.sum(m)) if np.ndim(m) else float(m) for m in magmom])
            return np.clip(mom / self.table.z_valence[species], -1.0, 1.0)
        start = self.config.starting_magnetization
        return np.array([float(start.get(self.config.elements[s], 0.0)) for s in species])

    # ------------------------------------------------------------------ preparation
    def prepare(
        self, structure, mill: np.ndarray | None = None, spin: bool | None = None,
        reference: AtomicDensityTable | None = None,
    ) -> Cell:
        """Everything about ``structure`` that does not depend on the weights.

        ``spin`` None: predict a magnetisation when a site has a starting moment.
        ``reference``: the atomic densities the deformation is added to (see
        :meth:`AtomicDensityTable.with_references`); None: the training table. The
        electron count is the reference's; starting moments stay in μB.
        """
        if reference is not None and list(reference.elements) != list(self.config.elements):
            raise ValueError(f"reference table elements {reference.elements} differ from the model's")
        ref = self.table if reference is None else reference
        species = self.species_of(structure)
        lattice = np.array(structure.lattice.matrix, dtype=float)
        frac = np.array(structure.frac_coords, dtype=float)
        if not np.all(np.isfinite(frac)) or not np.all(np.isfinite(lattice)):
            raise ValueError("structure has non-finite positions or lattice vectors")
        moments = self.starting_moments(structure, species)
        charge = float(getattr(structure, "charge", 0.0) or 0.0)
        cell = Cell(
            species=species,
            frac=frac,
            lattice=lattice,
            moments=moments,
            spin=bool(np.any(moments != 0)) if spin is None else bool(spin),
            edges=radius_graph(lattice, frac @ lattice, self.config.cutoff)[:3],
            n_electrons=float(ref.z_valence[species].sum() - charge),
            table=reference,
            sad_scale=None if reference is None
            else self.table.z_valence[species] / reference.z_valence[species],
        )
        if mill is not None:
            self.attach_mill(cell, mill)
        return cell

    def attach_mill(self, cell: Cell, mill: np.ndarray) -> Cell:
        """Set the G vectors at which ``cell`` is evaluated."""
        cell.mill = np.asarray(mill, dtype=np.int64).reshape(-1, 3)
        cell.geom = self._geometry(cell, cell.mill)
        return cell

    def _geometry(self, cell: Cell, mill: np.ndarray) -> ReciprocalGeometry:
        """Phases and spherical harmonics of ``cell``'s atoms at the G vectors ``mill``."""
        lmax = max(self.layout.lmax, self.mag_layout.lmax if self.mag_layout.n_radial else 0)
        return ReciprocalGeometry(cell.lattice, cell.frac, mill, lmax, dtype=self.log_alpha.dtype,
                                  device=self.log_alpha.device)

    def _sad_form(self, cell: Cell, species: int) -> torch.Tensor:
        """``F_s(|G|)`` (electrons) at every G of the cell, kept in the cell's geometry."""
        key = ("sad_form", species)
        cache = cell.geom._cache
        if key not in cache:
            table = self.table if cell.table is None else cell.table
            cache[key] = torch.as_tensor(
                table(species, cell.geom.q_np), dtype=cell.geom.dtype, device=cell.geom.device
            )
        return cache[key]

    # ------------------------------------------------------------------ evaluation
    def orbital_coefficients(self, cells: list[Cell]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Network output for several cells in one batch: per cell ``(C_total, C_magnetization)``.

        With ``learn_moments`` the last column of ``C_magnetization`` is each atom's change of
        its atomic (SAD) magnetisation weight, in units of its valence charge (see :meth:`fourier`).
        """
        dtype, dev = self.log_alpha.dtype, self.log_alpha.device
        species, moments, pos, src, dst, shift, sizes = [], [], [], [], [], [], []
        offset = 0
        for c in cells:
            species.append(c.species)
            moments.append(c.moments)
            pos.append(c.cart)
            s, d, sh = c.edges
            src.append(s + offset)
            dst.append(d + offset)
            shift.append(sh)
            sizes.append(len(c.species))
            offset += len(c.species)
        args = (
            torch.as_tensor(np.concatenate(species), device=dev),
            torch.as_tensor(np.concatenate(pos), dtype=dtype, device=dev),
            torch.as_tensor(np.concatenate(src), device=dev),
            torch.as_tensor(np.concatenate(dst), device=dev),
            torch.as_tensor(np.concatenate(shift), dtype=dtype, device=dev),
        )
        mom = torch.as_tensor(np.concatenate(moments), dtype=dtype, device=dev)
        out = self.network(args[0], mom, *args[1:])
        if torch.any(mom != 0):
            # time reversal: flipping every moment flips m and keeps rho, exactly
            flipped = self.network(args[0], -mom, *args[1:])
            n_tot = self.layout.dim
            out = torch.cat([(out[:, :n_tot] + flipped[:, :n_tot]) / 2, (out[:, n_tot:] - flipped[:, n_tot:]) / 2], dim=1)
        out = out * self.output_scale
        n_tot = self.layout.dim
        return [(o[:, :n_tot], o[:, n_tot:]) for o in torch.split(out, sizes)]

    def alphas(self, magnetization: bool = False) -> torch.Tensor:
        """Exponents ``(n_species, n_radial)`` in Å⁻², clamped to ``ALPHA_RANGE`` and :meth:`alpha_upper`."""
        log_alpha = self.log_alpha_mag if magnetization else self.log_alpha
        upper = torch.as_tensor(
            np.log(self.alpha_upper()), dtype=log_alpha.dtype, device=log_alpha.device
        )[:, None]
        low = math.log(ALPHA_RANGE[0])
        return torch.exp(torch.minimum(log_alpha.clamp(min=low), upper))

    def _magnetization_term(
        self, cell: Cell, c_mag_all: torch.Tensor, s: int, sel: np.ndarray, alphas_mag: torch.Tensor,
        form: torch.Tensor | None,
    ) -> tuple[SpeciesTerm, torch.Tensor]:
        """The magnetisation of the atoms ``sel`` (species ``s``): their atomic (SAD)
        magnetisation weighted by the starting moments (learned ones with ``learn_moments``)
        plus their orbitals; also the starting weights alone (the atomic start's m)."""
        dev, dtype = self.log_alpha.device, self.log_alpha.dtype
        start = torch.as_tensor(cell.moments[sel], dtype=dtype, device=dev)  # fractions
        c_mag = c_mag_all[torch.as_tensor(sel, device=dev)]
        weights = start
        if self.config.learn_moments:
            # the atom's SAD magnetisation is scaled to the moment the network predicts
            # (odd under time reversal like every magnetisation output): a cell that
            # converges non-magnetic needs no orbital cancelling its atomic moments
            weights = start + c_mag[:, -1]
            c_mag = c_mag[:, :-1]
        if cell.sad_scale is not None:  # moments in μB over the reference's valence
            scale = torch.as_tensor(cell.sad_scale[sel], dtype=dtype, device=dev)
            weights, start = weights * scale, start * scale
        has_orb = self.mag_layout.n_radial > 0
        q_max = min(q_cutoff(float(alphas_mag[s].max().detach()), self.mag_layout.lmax),
                    self.species_qmax()[s]) if has_orb else 0.0
        term = SpeciesTerm(self.mag_layout, c_mag if has_orb else None,
                           alphas_mag[s] if has_orb else None, q_max, form, weights)
        return term, start

    def site_moments(self, cell: Cell, coeffs: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
        """Each atom's moment (μB) in the learned magnetisation: its own atomic and orbital
        terms integrated over all space (the ``G = 0`` coefficient of each atom alone).
        Zeros for a cell without magnetisation. ``cell`` keeps its G vectors."""
        moments = np.zeros(len(cell.species))
        if not cell.spin:
            return moments
        if coeffs is None:
            coeffs = self.orbital_coefficients([cell])[0]
        geom = self._geometry(cell, np.zeros((1, 3), dtype=np.int64))
        table = self.table if cell.table is None else cell.table
        alphas_mag = self.alphas(True)
        with torch.no_grad():
            for s in np.unique(cell.species):
                form = torch.as_tensor(table(int(s), geom.q_np), dtype=geom.dtype, device=geom.device) \
                    if self.config.use_sad else None
                for i in np.flatnonzero(cell.species == s):
                    term, _ = self._magnetization_term(cell, coeffs[1], int(s), np.array([i]), alphas_mag, form)
                    moments[i] = float(species_fourier(geom, np.array([i]), [term])[0][0].real) * cell.volume
        return moments

    def atomic_magnetization(self, cell: Cell, moments: np.ndarray) -> torch.Tensor:
        """Coefficients at ``cell.mill`` of the atomic (SAD) magnetisation with ``moments``
        (μB per atom) as the starting moments, as a ``magmom`` site property would give them
        (each clipped to its atom's valence)."""
        if cell.geom is None:
            raise ValueError("cell has no G vectors: call attach_mill first")
        dev, dtype = self.log_alpha.device, self.log_alpha.dtype
        weights = np.clip(np.asarray(moments, dtype=float) / self.table.z_valence[cell.species], -1.0, 1.0)
        if cell.sad_scale is not None:  # moments in μB over the reference's valence
            weights = weights * cell.sad_scale
        out = None
        for s in np.unique(cell.species):
            sel = np.flatnonzero(cell.species == s)
            term = SpeciesTerm(self.mag_layout, sad_form=self._sad_form(cell, int(s)),
                               sad_weights=torch.as_tensor(weights[sel], dtype=dtype, device=dev))
            value = species_fourier(cell.geom, sel, [term])[0]
            out = value if out is None else out + value
        return out

    def fourier(
        self,
        cell: Cell,
        coeffs: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: bool = False,
        rows: np.ndarray | None = None,
        sad_out: list | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Coefficients (e/Å³, complex tensors) of total and magnetisation density at ``cell.mill``.

        SAD plus orbitals, species by species. A list passed as ``sad_out`` receives the
        SAD alone, ``[total, magnetisation or None]`` (sharing the phases, nearly free). ``rows`` restricts the evaluation to those G
        vectors (indices into ``cell.mill``); ``cache`` keeps their phases in the cell
        (training on fixed rows). The ``G = 0`` term of the total is ``n_electrons / V``.
        """
        if cell.geom is None:
            raise ValueError("cell has no G vectors: call attach_mill first")
        if coeffs is None:
            coeffs = self.orbital_coefficients([cell])[0]
        dev, dtype = self.log_alpha.device, self.log_alpha.dtype
        alphas = (self.alphas(False), self.alphas(True))
        qmax = self.species_qmax()
        tot = mag = sad_tot = sad_mag = None
        for s in np.unique(cell.species):
            sel = np.flatnonzero(cell.species == s)
            sel_t = torch.as_tensor(sel, device=dev)
            form = self._sad_form(cell, int(s)) if self.config.use_sad else None
            terms = [
                SpeciesTerm(
                    self.layout, coeffs[0][sel_t], alphas[0][s],
                    min(q_cutoff(float(alphas[0][s].max().detach()), self.layout.lmax), qmax[s]), form,
                )
            ]
            if cell.spin:
                term, start = self._magnetization_term(cell, coeffs[1], int(s), sel, alphas[1], form)
                terms.append(term)
            n_main = len(terms)
            if sad_out is not None and form is not None:
                terms.append(SpeciesTerm(self.layout, sad_form=form))
                if cell.spin:
                    terms.append(SpeciesTerm(self.mag_layout, sad_form=form, sad_weights=start))
            outs = species_fourier(cell.geom, sel, terms, rows, cache_key=int(s) if cache else None)
            tot = outs[0] if tot is None else tot + outs[0]
            if cell.spin:
                mag = outs[1] if mag is None else mag + outs[1]
            if sad_out is not None and form is not None:
                extra = outs[n_main:] + [None]
                sad_tot = extra[0] if sad_tot is None else sad_tot + extra[0]
                if cell.spin:
                    sad_mag = extra[1] if sad_mag is None else sad_mag + extra[1]
        sl = slice(None) if rows is None else rows
        zero = np.flatnonzero((cell.mill[sl] == 0).all(axis=1))
        if zero.size:
            fix = torch.zeros_like(tot)
            fix[zero[0]] = 1.0
            tot = tot * (1 - fix) + fix * (cell.n_electrons / cell.volume)
            if sad_tot is not None:
                sad_tot = sad_tot * (1 - fix) + fix * (cell.n_electrons / cell.volume)
        if sad_out is not None:
            sad_out[:] = [sad_tot, sad_mag]
        return tot, mag
