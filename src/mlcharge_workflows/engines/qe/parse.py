"""Parse pw.x 6.7 text output and ``data-file-schema.xml`` (energies converted to eV here).

Examples
--------
>>> out = parse_pw_output("     convergence has been achieved in   7 iterations\\n")
>>> out.converged, out.scf_iterations
(True, 7)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from mlcharge_workflows.units import HARTREE_TO_EV, RY_TO_EV

_FLOAT = r"[-+]?\d*\.\d+(?:[EeDd][-+]?\d+)?|[-+]?\d+"


class PwOutput(BaseModel):
    """What a pw.x text output says (energies in eV, times in s, moments in μB/cell)."""

    calculation: str | None = None
    version: str | None = None
    job_done: bool = False
    converged: bool = False
    not_converged: bool = Field(False, description="pw.x printed 'convergence NOT achieved'.")
    scf_iterations: int | None = Field(None, description="From 'convergence has been achieved in N'.")
    n_iterations_printed: int = Field(0, description="Number of 'iteration #' blocks.")
    energy_eV: float | None = Field(None, description="Final total energy ('!' line), eV.")
    scf_accuracy_Ry: list[float] = Field(default_factory=list)
    total_magnetization: float | None = None
    absolute_magnetization: float | None = None
    fermi_energy_eV: float | None = None
    homo_eV: float | None = None
    lumo_eV: float | None = None
    wall_time_s: float | None = None
    cpu_time_s: float | None = None
    density_read_from_file: bool = Field(
        False,
        description="pw.x printed 'The initial density is read from file' (scf) or "
        "'The potential is recalculated from file' (nscf/bands).",
    )
    density_file_missing: bool = Field(False, description="pw.x printed 'Cannot read rho'.")
    atomic_start: bool = Field(
        False, description="pw.x printed 'Initial potential from superposition of free atoms'."
    )
    n_electrons: float | None = None
    n_kpoints: int | None = None
    n_symmetry_ops: int | None = None
    nprocs: int | None = None
    errors: list[str] = Field(default_factory=list, description="Messages of %%%% error blocks.")


def _time_s(text: str) -> float:
    """Seconds from a pw.x time like '4.77s', '1m 2.30s' or '1h12m'."""
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text):
        total += float(value) * {"h": 3600.0, "m": 60.0, "s": 1.0}[unit]
    return total


def _last(pattern: str, text: str) -> re.Match | None:
    found = list(re.finditer(pattern, text, re.MULTILINE))
    return found[-1] if found else None


def _float(s: str) -> float:
    return float(s.replace("D", "E").replace("d", "e"))


def scf_accuracy_history(text: str) -> list[float]:
    """pw.x's "estimated scf accuracy" (Ry per cell) of every SCF iteration in ``text``."""
    return [_float(v) for v in re.findall(rf"estimated scf accuracy\s+<\s+({_FLOAT})\s+Ry", text)]


def parse_pw_output(path_or_text: str | Path) -> PwOutput:
    """Parse a pw.x output given as a path or as the text itself."""
    if isinstance(path_or_text, Path) or (
        "\n" not in str(path_or_text) and Path(str(path_or_text)).is_file()
    ):
        text = Path(path_or_text).read_text(errors="replace")
    else:
        text = str(path_or_text)
    out = PwOutput()
    if m := re.search(r"Program PWSCF (v\.\S+)", text):
        out.version = m.group(1)
    if m := re.search(r"running on\s+(\d+) processors", text):
        out.nprocs = int(m.group(1))
    out.job_done = "JOB DONE." in text
    if m := _last(r"convergence has been achieved in\s+(\d+)\s+iterations", text):
        out.converged, out.scf_iterations = True, int(m.group(1))
    out.not_converged = "convergence NOT achieved" in text
    out.n_iterations_printed = len(re.findall(r"^\s*iteration #\s*\d+", text, re.MULTILINE))
    if m := _last(rf"^!\s+total energy\s+=\s+({_FLOAT})\s+Ry", text):
        out.energy_eV = _float(m.group(1)) * RY_TO_EV
    out.scf_accuracy_Ry = scf_accuracy_history(text)
    if m := _last(rf"total magnetization\s+=\s+({_FLOAT})", text):
        out.total_magnetization = _float(m.group(1))
    if m := _last(rf"absolute magnetization\s+=\s+({_FLOAT})", text):
        out.absolute_magnetization = _float(m.group(1))
    if m := _last(rf"the Fermi energy is\s+({_FLOAT})\s+ev", text):
        out.fermi_energy_eV = _float(m.group(1))
    if m := _last(rf"highest occupied, lowest unoccupied level \(ev\):\s+({_FLOAT})\s+({_FLOAT})", text):
        out.homo_eV, out.lumo_eV = _float(m.group(1)), _float(m.group(2))
    elif m := _last(rf"highest occupied level \(ev\):\s+({_FLOAT})", text):
        out.homo_eV = _float(m.group(1))
    if m := _last(r"PWSCF\s+:\s+(.*?)CPU\s+(.*?)WALL", text):
        out.cpu_time_s, out.wall_time_s = _time_s(m.group(1)), _time_s(m.group(2))
    out.density_read_from_file = (
        "The initial density is read from file" in text  # scf, startingpot='file'
        or "The potential is recalculated from file" in text  # nscf / bands
    )
    out.density_file_missing = "Cannot read rho" in text
    out.atomic_start = "Initial potential from superposition of free atoms" in text
    if m := re.search(rf"number of electrons\s+=\s+({_FLOAT})", text):
        out.n_electrons = _float(m.group(1))
    if m := re.search(r"number of k points=\s*(\d+)", text):
        out.n_kpoints = int(m.group(1))
    if m := re.search(r"(\d+) Sym\. Ops\.", text):
        out.n_symmetry_ops = int(m.group(1))
    elif "No symmetry found" in text:
        out.n_symmetry_ops = 1
    if "Self-consistent Calculation" in text:
        out.calculation = "scf"
    elif "Band Structure Calculation" in text:
        out.calculation = "non-scf"
    out.errors = [
        " ".join(block.split())
        for block in re.findall(r"%{20,}\n(.*?)\n\s*%{20,}", text, re.DOTALL)
    ]
    return out


class PwXmlData(BaseModel):
    """What ``data-file-schema.xml`` says (eV, μB/cell); eigenvalues ``(nspin, nk, nbnd)``."""

    energy_eV: float | None = None
    n_electrons: float
    lsda: bool
    fermi_energy_eV: float | None = None
    homo_eV: float | None = None
    lumo_eV: float | None = None
    total_magnetization: float | None = None
    absolute_magnetization: float | None = None
    converged: bool | None = None
    scf_iterations: int | None = None
    kpoints_cart: list[list[float]] = Field(default_factory=list, description="2π/alat units")
    kweights: list[float] = Field(default_factory=list)
    eigenvalues_eV: list[list[list[float]]] = Field(default_factory=list)


def _ftext(node: ET.Element | None) -> float | None:
    return None if node is None or node.text is None else float(node.text)


def parse_pw_xml(path: str | Path) -> PwXmlData:
    """Parse the ``output`` section of a pw.x ``data-file-schema.xml``."""
    path = Path(path)
    try:
        out = ET.parse(path).getroot().find("output")
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"{path}: unreadable pw.x XML ({err})") from None
    if out is None or out.find("band_structure") is None:
        raise ValueError(f"{path}: no output/band_structure section")
    bs = out.find("band_structure")
    lsda = bs.findtext("lsda", "false").strip().lower() == "true"
    nbnd_up = int(bs.findtext("nbnd_up") or bs.findtext("nbnd"))
    kpts, wts, eigs = [], [], []
    for ks in bs.findall("ks_energies"):
        kp = ks.find("k_point")
        kpts.append([float(x) for x in kp.text.split()])
        wts.append(float(kp.get("weight")))
        eigs.append(np.array(ks.findtext("eigenvalues").split(), dtype=float) * HARTREE_TO_EV)
    e = np.array(eigs)
    e = np.stack([e[:, :nbnd_up], e[:, nbnd_up:]]) if lsda else e[None]
    ha = {k: _ftext(bs.find(k)) for k in ("fermi_energy", "highestOccupiedLevel", "lowestUnoccupiedLevel")}
    conv = out.find("convergence_info/scf_conv")
    etot = _ftext(out.find("total_energy/etot"))
    return PwXmlData(
        energy_eV=None if etot is None else etot * HARTREE_TO_EV,
        n_electrons=float(bs.findtext("nelec")),
        lsda=lsda,
        fermi_energy_eV=None if ha["fermi_energy"] is None else ha["fermi_energy"] * HARTREE_TO_EV,
        homo_eV=None if ha["highestOccupiedLevel"] is None else ha["highestOccupiedLevel"] * HARTREE_TO_EV,
        lumo_eV=None if ha["lowestUnoccupiedLevel"] is None else ha["lowestUnoccupiedLevel"] * HARTREE_TO_EV,
        total_magnetization=_ftext(out.find("magnetization/total")),
        absolute_magnetization=_ftext(out.find("magnetization/absolute")),
        converged=None if conv is None else conv.findtext("convergence_achieved", "").strip() == "true",
        scf_iterations=None if conv is None else int(conv.findtext("n_scf_steps", "0")),
        kpoints_cart=kpts,
        kweights=wts,
        eigenvalues_eV=e.tolist(),
    )


def band_edges(eigenvalues_eV: np.ndarray, n_electrons: float) -> tuple[float, float] | None:
    """``(VBM, CBM)`` in eV by filling ``n_electrons`` at every k-point.

    ``eigenvalues_eV`` is ``(nspin, nk, nbnd)``; with one spin channel each state holds two
    electrons. ``None`` for a non-integer electron count or too few bands.
    """
    e = np.asarray(eigenvalues_eV, dtype=float)
    nelec = int(round(n_electrons))
    if abs(n_electrons - nelec) > 1e-6:
        return None
    per_k = np.concatenate([e[0], e[0]] if e.shape[0] == 1 else [e[0], e[1]], axis=1)
    per_k.sort(axis=1)
    if per_k.shape[1] <= nelec or nelec == 0:
        return None
    return float(per_k[:, nelec - 1].max()), float(per_k[:, nelec].min())


def band_gap(eigenvalues_eV: np.ndarray, n_electrons: float) -> float | None:
    """Band gap in eV (0 for a metal) from eigenvalues ``(nspin, nk, nbnd)``; see :func:`band_edges`."""
    edges = band_edges(eigenvalues_eV, n_electrons)
    return None if edges is None else max(0.0, edges[1] - edges[0])
