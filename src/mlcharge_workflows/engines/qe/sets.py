"""The fixed QE comparison protocol and pw.x input writing.

Every arm of a comparison uses the same :class:`QEProtocol`; only ``startingpot``
(``'atomic'`` or ``'file'``) differs, so two runs differ only in their starting density.
Inputs are written with pymatgen's :class:`~pymatgen.io.pwscf.PWInput`
(``CELL_PARAMETERS angstrom``, ``ATOMIC_POSITIONS crystal``, ``K_POINTS automatic`` or
``crystal_b``), which expresses everything the protocol needs.

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> si = Structure(Lattice.cubic(5.43), ["Si"] * 8, Structure.from_spacegroup(
...     "Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]).frac_coords)
>>> QEProtocol().kpoint_grid(si)
(4, 4, 4)
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from mlcharge_workflows.density.sad import DEFAULT_STARTING_MAGNETIZATION
from mlcharge_workflows.pseudo import (
    PseudoInfo,
    n_valence_electrons,
    resolve_pseudos,
    structure_elements,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from pymatgen.io.pwscf import PWInput

#: Prefix of every run (``outdir/<prefix>.save``).
PREFIX = "pwscf"
#: ``outdir`` relative to the run folder.
OUTDIR = "out"
#: Folder (relative to the run folder) holding the staged UPF files.
PSEUDO_SUBDIR = "pseudo"


class QEProtocol(BaseModel):
    """Settings shared by every arm of a comparison (cutoffs in Ry, k-spacing in Å⁻¹).

    ``ecutwfc_ry`` / ``ecutrho_ry`` of ``None`` take the maximum of the pseudopotentials'
    suggestions over the species of the structure. ``pseudopotentials`` (element -> UPF
    path, any NC/US file) replaces the registry's file of those elements in every run.
    """

    ecutwfc_ry: float | None = Field(
        None, gt=0, description="Wavefunction cutoff (Ry); None: registry max."
    )
    ecutrho_ry: float | None = Field(None, gt=0, description="Density cutoff (Ry); None: registry max.")
    kspacing: float = Field(
        0.3, gt=0, description="Largest k-point spacing (Å⁻¹, 2π included); Γ-centred MP grid."
    )
    occupations: Literal["smearing", "fixed"] = "smearing"
    smearing: str = "mv"
    degauss_ry: float = Field(0.01, gt=0, description="Smearing width (Ry).")
    conv_thr_per_atom: float = Field(5e-10, gt=0, description="conv_thr (Ry) per atom.")
    mixing_beta: float = Field(0.4, gt=0, le=1)
    mixing_mode: str = "plain"
    diago_thr_init: float = Field(
        1e-5, gt=0, description="First diagonalisation threshold; pw.x's default depends on startingpot."
    )
    electron_maxstep: int = Field(100, ge=1)
    starting_magnetization: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_STARTING_MAGNETIZATION),
        description="Species that make a run spin-polarised (nspin=2), with their starting moments.",
    )
    standard_orientation: bool = Field(
        True,
        description="Rotate the Cartesian frame (same basis, same fractional coordinates) to "
        "spglib's standard orientation so that pw.x finds the full point group.",
    )
    nscf_kspacing: float = Field(0.15, gt=0, description="k-spacing of uniform (DOS) nscf runs.")
    line_density: int = Field(20, gt=0, description="Band-path points per Å⁻¹ (line mode).")
    pseudopotentials: dict[str, str] = Field(
        default_factory=dict,
        description="Element -> UPF file (NC or US) replacing the registry's file of that element.",
    )

    @field_validator("pseudopotentials")
    @classmethod
    def _check_pseudos(cls, value: dict[str, str]) -> dict[str, str]:
        from mlcharge_workflows.pseudo import pseudo_from_file

        out = {}
        for el, path in value.items():
            resolved = str(Path(path).expanduser().resolve())
            pseudo_from_file(resolved, el)  # ValueError naming the file: missing, PAW, other element
            out[el] = resolved
        return out

    @field_validator("starting_magnetization")
    @classmethod
    def _check_moments(cls, value: dict[str, float]) -> dict[str, float]:
        for el, m in value.items():
            if not -1.0 <= m <= 1.0:
                raise ValueError(f"starting_magnetization[{el!r}] = {m} is outside [-1, 1]")
        return value

    # ------------------------------------------------------------------ serialisation
    def as_dict(self) -> dict[str, Any]:
        """JSON dict with ``@module``/``@class``, so the protocol stays a :class:`QEProtocol`
        wherever jobflow or FireWorks serialise a Maker (monty calls ``as_dict``)."""
        cls = type(self)
        return {"@module": cls.__module__, "@class": cls.__name__, **self.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QEProtocol:
        """Inverse of :meth:`as_dict` (validated)."""
        return cls.model_validate({k: v for k, v in d.items() if not k.startswith("@")})

    # ------------------------------------------------------------------ derived values
    def pseudos(self, structure: Structure) -> dict[str, PseudoInfo]:
        """The pseudopotential of each element of ``structure``: the protocol's
        ``pseudopotentials``, else the registry's (:func:`~mlcharge_workflows.pseudo.resolve_pseudos`)."""
        return resolve_pseudos(structure, self.pseudopotentials)

    def n_electrons(self, structure: Structure) -> float:
        """Valence electrons of the neutral structure with the protocol's pseudopotentials."""
        return n_valence_electrons(structure, self.pseudos(structure))

    def cutoffs(self, structure: Structure) -> tuple[float, float]:
        """``(ecutwfc, ecutrho)`` in Ry for a structure."""
        infos = list(self.pseudos(structure).values())
        wfc = self.ecutwfc_ry or max(i.ecutwfc_ry for i in infos)
        rho = self.ecutrho_ry or max(max(i.ecutrho_ry for i in infos), 4 * wfc)
        if rho < 4 * wfc:
            raise ValueError(f"ecutrho {rho} Ry is below 4 x ecutwfc ({4 * wfc} Ry)")
        return float(wfc), float(rho)

    def is_spin_polarized(self, structure: Structure) -> bool:
        """Whether the structure contains a species with a starting moment."""
        return any(el in self.starting_magnetization for el in structure_elements(structure))

    def starting_moments(self, structure: Structure) -> list[float]:
        """Starting moment per site (μB): the species' fraction x its valence electrons."""
        pseudos = self.pseudos(structure)
        return [
            self.starting_magnetization.get(site.specie.symbol, 0.0)
            * pseudos[site.specie.symbol].z_valence
            for site in structure
        ]

    def kpoint_grid(self, structure: Structure, kspacing: float | None = None) -> tuple[int, ...]:
        """Γ-centred Monkhorst-Pack divisions ``ceil(|b_i| / kspacing)`` (|b| with 2π)."""
        spacing = kspacing or self.kspacing
        lengths = structure.lattice.reciprocal_lattice.abc
        return tuple(max(1, math.ceil(b / spacing - 1e-6)) for b in lengths)

    def conv_thr(self, structure: Structure) -> float:
        """Total ``conv_thr`` in Ry."""
        return self.conv_thr_per_atom * len(structure)


def default_nbnd(structure: Structure, protocol: QEProtocol | None = None) -> int:
    """Bands for gap checks: ``ceil(0.6 * nelec) + 4`` (occupied bands plus a margin);
    ``nelec`` with the protocol's pseudopotentials (default: the registry's)."""
    nelec = (protocol or QEProtocol()).n_electrons(structure)
    return int(np.ceil(0.6 * nelec)) + 4


def qe_oriented(structure: Structure, symprec: float = 0.01) -> Structure:
    """``structure`` with its Cartesian frame rotated to spglib's standard orientation.

    The lattice vectors keep their lengths and angles and the fractional coordinates are
    unchanged (so a density on the cell's grid is unchanged); only the frame turns. pw.x
    looks for symmetry among rotations fixed in Cartesian space, so e.g. an fcc cell read
    from a CIF (a along x) shows 4 of its 48 operations and needs 5x more k-points.
    Coordinates are rounded to the 10 decimals the input file carries.
    """
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        rot = np.asarray(SpacegroupAnalyzer(structure, symprec=symprec)
                         .get_symmetry_dataset().std_rotation_matrix)
    except Exception:  # spglib failure: keep the frame
        rot = np.eye(3)
    lattice = np.round(structure.lattice.matrix @ rot.T, 10) + 0.0
    return Structure(
        Lattice(lattice),
        structure.species,
        np.round(structure.frac_coords, 10) + 0.0,
        site_properties=structure.site_properties,
    )


def band_path(structure: Structure, line_density: int) -> list[tuple[float, float, float, int]]:
    """High-symmetry path as ``crystal_b`` entries ``(k1, k2, k3, n)`` in the structure's own
    reciprocal basis; ``n`` is the number of points to the next entry (1 at a path break).

    The path is Setyawan-Curtarolo's, defined on pymatgen's standard primitive cell; its
    k-points are rotated into this cell's frame with :meth:`Lattice.find_mapping`.
    """
    import warnings

    from pymatgen.symmetry.bandstructure import HighSymmKpath

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*standard primitive.*")
        kpath = HighSymmKpath(structure, path_type="setyawan_curtarolo")
    # no path for this cell (kpath None: pymatgen's symmetry finder and the lattice disagree,
    # e.g. a rattled hexagonal cell) or no mapping onto it: build a path on the cell itself
    mapping = None
    if kpath.kpath is not None:
        mapping = structure.lattice.find_mapping(kpath.prim.lattice, ltol=1e-3, atol=0.5)
    if mapping is None:
        kpath = HighSymmKpath(structure, path_type="latimer_munro")
        rot = np.eye(3)
        if kpath.kpath is None or not kpath.kpath.get("path"):
            raise ValueError(f"no high-symmetry band path found for {structure.composition.reduced_formula}")
    else:
        rot = mapping[1]
    rec = kpath.rec_lattice.matrix  # fractional coords of the path refer to this basis
    to_own = np.linalg.inv(structure.lattice.reciprocal_lattice.matrix)
    entries: list[tuple[float, float, float, int]] = []
    for branch in kpath.kpath["path"]:
        carts = [np.asarray(kpath.kpath["kpoints"][label]) @ rec @ rot.T for label in branch]
        for a, b in zip(carts, carts[1:]):
            n = max(2, int(round(np.linalg.norm(b - a) * line_density)))
            entries.append((*(a @ to_own), n))
        entries.append((*(carts[-1] @ to_own), 1))
    return [(float(x), float(y), float(z), int(n)) for x, y, z, n in entries]


def antiparallel_signs(structure: Structure, protocol: QEProtocol) -> list[int] | None:
    """+1 / -1 per site when the ``magmom`` (or ``spin_sign``) site property points the
    moments of the protocol's magnetic elements both ways (an antiferromagnetic or
    ferrimagnetic start: Fe up and Fe down, or Fe up and Co down), else None.

    pw.x takes starting moments per species, so such a start needs a species kind per
    element and sign (``pw_input`` writes them, e.g. ``Fe1`` up and ``Fe2`` down, with the
    protocol's moment and its negative); all moments up is the protocol's ferromagnetic start.
    """
    props = structure.site_properties
    values = props.get("spin_sign", props.get("magmom"))
    if values is None or not protocol.is_spin_polarized(structure):
        return None
    signs = [-1 if float(np.sum(v)) < 0 else 1 for v in values]
    got = {sg for site, sg in zip(structure, signs)
           if site.specie.symbol in protocol.starting_magnetization}
    if len(got) < 2:
        return None
    return [sg if site.specie.symbol in protocol.starting_magnetization else 1
            for site, sg in zip(structure, signs)]


def pw_input(
    structure: Structure,
    protocol: QEProtocol | None = None,
    calculation: Literal["scf", "nscf", "bands"] = "scf",
    startingpot: Literal["atomic", "file"] = "atomic",
    kpoints: Literal["scf", "uniform", "line"] | None = None,
    electron_maxstep: int | None = None,
    nbnd: int | None = None,
) -> PWInput:
    """pymatgen ``PWInput`` for one run of the protocol (run folder layout: ``pseudo/``, ``out/``).

    ``kpoints``: ``'scf'`` (protocol grid, default for scf), ``'uniform'`` (denser grid,
    default for nscf) or ``'line'`` (band path, default for bands).
    """
    from pymatgen.io.pwscf import PWInput

    protocol = protocol or QEProtocol()
    signs = antiparallel_signs(structure, protocol)
    structure = structure.copy()
    structure.remove_oxidation_states()
    for key in ("magmom", "spin_sign"):
        structure.remove_site_property(key) if key in structure.site_properties else None
    elements = sorted(structure_elements(structure))  # PWInput prints species sorted
    pseudos = protocol.pseudos(structure)
    ecutwfc, ecutrho = protocol.cutoffs(structure)
    control = {
        "calculation": calculation,
        "prefix": PREFIX,
        "outdir": OUTDIR,
        "pseudo_dir": PSEUDO_SUBDIR,
        "disk_io": "low",
    }
    system: dict = {"ecutwfc": ecutwfc, "ecutrho": ecutrho}
    if protocol.occupations == "smearing":
        system.update(occupations="smearing", smearing=protocol.smearing, degauss=protocol.degauss_ry)
    else:
        system["occupations"] = "fixed"
    kinds = None
    if protocol.is_spin_polarized(structure):
        system["nspin"] = 2
        system["starting_magnetization"] = [
            float(protocol.starting_magnetization.get(el, 0.0)) for el in elements
        ]
        if signs is not None:  # antiferromagnetic start: one species kind per element and sign
            structure.add_site_property("pseudo", [pseudos[s.specie.symbol].filename
                                                   for s in structure])
            structure.add_site_property("spin", signs)
            kinds = _kind_labels(structure)
            system["starting_magnetization"] = [
                sign * float(protocol.starting_magnetization.get(el, 0.0))
                for el, sign in kinds
            ]
    if nbnd is not None:
        system["nbnd"] = int(nbnd)
    electrons = {
        "conv_thr": protocol.conv_thr(structure),
        "mixing_beta": protocol.mixing_beta,
        "mixing_mode": protocol.mixing_mode,
        "diago_thr_init": protocol.diago_thr_init,
        "electron_maxstep": protocol.electron_maxstep if electron_maxstep is None else electron_maxstep,
        "startingpot": startingpot,
    }
    if calculation != "scf":
        electrons.pop("startingpot")
    mode = kpoints or {"scf": "scf", "nscf": "uniform", "bands": "line"}[calculation]
    if mode == "line":
        kw = {"kpoints_mode": "crystal_b", "kpoints_grid": band_path(structure, protocol.line_density)}
    else:
        spacing = protocol.nscf_kspacing if mode == "uniform" else protocol.kspacing
        kw = {"kpoints_mode": "automatic", "kpoints_grid": protocol.kpoint_grid(structure, spacing)}
    return PWInput(
        structure,
        pseudo=None if kinds else {el: pseudos[el].filename for el in elements},
        control=control,
        system=system,
        electrons=electrons,
        format_options={"coord_decimals": 10, "kpoints_grid_decimals": 10},
        **kw,
    )


def _kind_labels(structure: Structure) -> list[tuple[str, int]]:
    """``(element, spin sign)`` of each species kind in the order pw.x will number them.

    pymatgen's ``PWInput`` (sites carrying ``pseudo``) names a kind ``{symbol}{n}`` for each
    distinct set of site properties, in site order, and writes ATOMIC_SPECIES sorted by name.
    """
    names: dict[str, dict] = {}
    for site in structure:
        if not any(v == site.properties for v in names.values()):
            names[f"{site.specie.symbol}{len(names) + 1}"] = site.properties
    return [(re.match(r"[A-Z][a-z]?", k)[0], int(names[k]["spin"])) for k in sorted(names)]


def write_pw_input(pwin: PWInput, path: str | Path) -> Path:
    """Write ``pwin`` to ``path`` (pymatgen's writer; ``K_POINTS crystal_b`` counts as integers)."""
    text = str(pwin)
    if pwin.kpoints_mode == "crystal_b":  # pw.x wants the point count, not '20.0000000000'
        head, _, tail = text.partition("K_POINTS crystal_b\n")
        body, _, cell = tail.partition("CELL_PARAMETERS")
        rows = body.strip().splitlines()
        fixed = [rows[0]] + [" ".join(r.split()[:3] + [str(int(float(r.split()[3])))]) for r in rows[1:]]
        text = f"{head}K_POINTS crystal_b\n" + "\n".join(fixed) + "\nCELL_PARAMETERS" + cell
    path = Path(path)
    path.write_text(text + "\n")
    return path
