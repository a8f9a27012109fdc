"""Build the reference folders that atomate2's ``monkeypatch_vasp`` copies instead of running VASP.

Run from the repository root: ``python tests/test_data/vasp/build_reference.py``.

Inputs (``inputs/``): the INCAR, KPOINTS, POSCAR and POTCAR.spec that atomate2's own
generators write for the test structure, with the start settings each arm must have
written **by hand here** (ICHARG, ISTART, NGXF/NGYF/NGZF), so the mock checks what our
makers write against values fixed independently of them.

Outputs (``outputs/``): adapted from a real VASP 5.4.4 run, the NaCl static in
``tests/test_data/vasp/outputs/lobster__vasp_lobster_output_v51__vasprun.xml`` and its OSZICAR
(17 SCF steps, EDIFF 1e-8): species, cell, positions and forces are replaced by the test
structure's, the parameters VASP echoes (ICHARG, ISTART, NGXF...) by the arm's, and the
SCF is cut to the arm's number of steps (first steps kept, last step kept). Energies,
eigenvalues and DOS stay NaCl's: these folders test inputs and parsing, not physics.
The OUTCAR holds only the array dimensions pymatgen needs and VASP's timing block
(wall time = the vasprun's ``totalsc``).

Two ML-static variants carry what shows whether VASP read the CHGCAR (:data:`START_LOGS`):
``ml_static_read`` (OUTCAR start block without "overlapping atoms", stdout "charge-density
read from file") and ``ml_static_discarded`` (the CHGCAR has no PAW occupancies: stdout
``RD_RHO_PAW ... data corrupt`` / ``PAW occupancies are missing``, OUTCAR "charge density of
overlapping atoms calculated", the baseline's 17 steps). Their lines are written from
VASP's source as docs/vasp-guide.md quotes it ("The CHGCAR VASP reads"), not copied from
a run. ``occupancy_donor`` is the one-step ICHARG=2 run that writes PAW occupancies for
the ML start; its CHGCAR is a stand-in on a 4x4x4 grid (only its occupancy lines and
cell are read) with made-up occupancy values.

Build one arm: ``python tests/test_data/vasp/build_reference.py ml_static_read``.
"""

from __future__ import annotations

import copy
import gzip
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Lattice, Structure

HERE = Path(__file__).resolve().parent
SHARED = Path(__file__).parent / "outputs"  # custodian test files, kept in the repository
TEMPLATE = SHARED / "lobster__vasp_lobster_output_v51__vasprun.xml"
TEMPLATE_OSZ = SHARED / "lobster__vasp_lobster_output_v51__OSZICAR"

#: ENCUT of every test arm (eV): fine grid 36x36x36 for the SiC cell below at PREC=Accurate.
ENCUT = 300
#: VASP 6 rule (pymatgen calculate_ng): |a| = 3.0829 Å, sqrt(300/13.6057) / (2π/(3.0829/0.529177))
#: = 4.35 -> 4*4.35 + 0.5 -> 17 -> 18 (even, factors <= 7); fine grid 2*18 = 36.
NGF = {"NGXF": 36, "NGYF": 36, "NGZF": 36}
NELECT = 8.0  # Si (ZVAL 4) + C (ZVAL 4), PBE_54


def sic() -> Structure:
    """Zincblende SiC, primitive cell, a = 4.36 Å, listed C first."""
    a = 4.36
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, ["C", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


#: arm -> (generator kind, mode, INCAR start settings written by hand, SCF steps)
ARMS = {
    "baseline_static": ("static", None, {"ICHARG": 2, "ISTART": 0, **NGF}, 17),
    "ml_static": ("static", None, {"ICHARG": 1, "ISTART": 0, **NGF}, 11),
    "oracle_static": ("static", None, {"ICHARG": 1, "ISTART": 0, **NGF}, 6),
    "converged_nscf_line": ("nscf", "line", {"ICHARG": 11, "ISTART": 0, **NGF}, 9),
    "ml_nscf_line": ("nscf", "line", {"ICHARG": 11, "ISTART": 0, **NGF}, 9),
    "atomic_nscf_line": ("nscf", "line", {"ICHARG": 12, "ISTART": 0, **NGF}, 9),
    "ml_nscf_uniform": ("nscf", "uniform", {"ICHARG": 11, "ISTART": 0, **NGF}, 9),
    "atomic_nscf_uniform": ("nscf", "uniform", {"ICHARG": 12, "ISTART": 0, **NGF}, 9),
    "ml_static_read": ("static", None, {"ICHARG": 1, "ISTART": 0, **NGF}, 11),
    "ml_static_discarded": ("static", None, {"ICHARG": 1, "ISTART": 0, **NGF}, 17),
    "occupancy_donor": ("static", None, {"ICHARG": 2, "ISTART": 0, "NELM": 1, "NSW": 0,
                                         "LCHARG": True, "LWAVE": False, "LAECHG": False,
                                         "LVTOT": False, "LELF": False, **NGF}, 1),
    # atomate2's own NonSCFMaker after the ML static in BandStructureMaker (no pinned grid)
    "bs_nscf_line": ("nscf", "line", {"ICHARG": 11}, 9),
}
#: arms whose outputs include a converged CHGCAR (read by later jobs)
WRITES_CHGCAR = ("baseline_static", "ml_static")


def _set_i(parent: ET.Element, name: str, value: object) -> None:
    """Set every ``<i name=...>`` below ``parent`` (adding one if absent)."""
    found = [e for e in parent.iter("i") if e.get("name") == name]
    logical = isinstance(value, bool)
    text = (" T " if value else " F ") if logical else f" {value} "
    for e in found:
        e.text = text
        if logical:
            e.set("type", "logical")
    if not found:
        e = ET.SubElement(parent, "i", {"type": "logical" if logical else "int", "name": name})
        e.text = text


def _varray(elem: ET.Element, rows: np.ndarray) -> None:
    for child in list(elem):
        elem.remove(child)
    for row in rows:
        v = ET.SubElement(elem, "v")
        v.text = " ".join(f"{x:16.8f}" for x in row)


def _structure_block(block: ET.Element, s: Structure) -> None:
    for va in block.iter("varray"):
        if va.get("name") == "basis":
            _varray(va, s.lattice.matrix)
        elif va.get("name") == "rec_basis":
            _varray(va, s.lattice.reciprocal_lattice_crystallographic.matrix)
        elif va.get("name") == "positions":
            _varray(va, s.frac_coords)
    for i in block.iter("i"):
        if i.get("name") == "volume":
            i.text = f" {s.volume:.8f} "


def _atominfo(root: ET.Element, s: Structure) -> None:
    info = root.find("atominfo")
    info.find("atoms").text = f" {len(s)} "
    species = list(dict.fromkeys(site.specie.symbol for site in s))
    info.find("types").text = f" {len(species)} "
    for arr in info.findall("array"):
        rows = arr.find("set")
        for child in list(rows):
            rows.remove(child)
        if arr.get("name") == "atoms":
            for site in s:
                rc = ET.SubElement(rows, "rc")
                for text in (site.specie.symbol, str(species.index(site.specie.symbol) + 1)):
                    ET.SubElement(rc, "c").text = text
        else:
            for el in species:
                n = sum(site.specie.symbol == el for site in s)
                rc = ET.SubElement(rows, "rc")
                mass = f"{float(Element(el).atomic_mass):.8f}"
                for text in (str(n), el, mass, "4.0", f"PAW_PBE {el} 05Jan2001"):
                    ET.SubElement(rc, "c").text = text


def adapt_vasprun(s: Structure, incar: dict, n_steps: int) -> tuple[bytes, float]:
    """NaCl vasprun.xml -> the test structure, ``incar`` echoed, ``n_steps`` SCF steps."""
    tree = ET.parse(TEMPLATE)
    root = tree.getroot()
    for key, value in incar.items():
        _set_i(root.find("incar"), key, value)
        _set_i(root.find("parameters"), key, value)
    _atominfo(root, s)
    for block in root.iter("structure"):
        _structure_block(block, s)
    calc = root.find("calculation")
    steps = calc.findall("scstep")
    keep = steps[: n_steps - 1] + [steps[-1]]
    for st in steps:
        calc.remove(st)
    for i, st in enumerate(keep):
        calc.insert(i, st)
    wall = sum(float(st.find("time[@name='total']").text.split()[-1]) for st in keep)
    calc.find("time[@name='totalsc']").text = f" {wall:8.2f} {wall:8.2f}"
    for va in calc.findall("varray"):
        if va.get("name") == "forces":
            _varray(va, np.zeros((len(s), 3)))
    return ET.tostring(root, encoding="ISO-8859-1", xml_declaration=True), wall


def adapt_oszicar(n_steps: int) -> str:
    lines = TEMPLATE_OSZ.read_text().splitlines()
    dav = [ln for ln in lines if ln.startswith("DAV:")]
    kept = dav[: n_steps - 1] + [dav[-1]]
    kept = [f"DAV: {i + 1:3d}{ln[8:]}" for i, ln in enumerate(kept)]
    return "\n".join([lines[0], *kept, lines[-1]]) + "\n"


_START_HEAD = (
    " initial charge density was supplied:\n"
)
_START_TAIL = (
    " number of electron       8.0000000 magnetization       0.0000000\n"
    " keeping initial charge density in first step\n\n"
)
_ATOMS = " charge density of overlapping atoms calculated\n"
#: arm -> (OUTCAR start block, VASP stdout as custodian keeps it in vasp.out)
START_LOGS = {
    "ml_static_read": (
        _START_HEAD + _START_TAIL,
        " POSCAR, INCAR and KPOINTS ok, starting setup\n WAVECAR not read\n"
        " charge-density read from file: C Si\n entering main loop\n",
    ),
    "ml_static_discarded": (
        _START_HEAD + _ATOMS + _START_TAIL,
        " POSCAR, INCAR and KPOINTS ok, starting setup\n WAVECAR not read\n"
        " RD_RHO_PAW: ion           1  data corrupt\n"
        " WARNING: PAW occupancies are missing on CHGCAR \n entering main loop\n",
    ),
    "occupancy_donor": (
        _START_HEAD + _ATOMS + _START_TAIL,
        " POSCAR, INCAR and KPOINTS ok, starting setup\n WAVECAR not read\n"
        " entering main loop\n",
    ),
}


def outcar(wall: float, start: str = "") -> str:
    return (
        " vasp.5.4.4.18Apr17-6-g9f103f2a35 (build Apr 25 2017 15:45:40) complex\n"
        " running on    1 total cores\n\n"
        " Dimension of arrays:\n"
        "   k-points           NKPTS =     10   k-points in BZ     NKDIM =     10"
        "   number of bands    NBANDS=     32\n"
        "   number of dos      NEDOS =    301   number of ions     NIONS =      2\n"
        "   total plane-waves  NPLWV =  46656\n\n"
        "   NSW    =      0    number of steps for IOM\n"
        "   IBRION =     -1    ionic relax: 0-MD 1-quasi-New 2-CG\n"
        "   ISPIN  =      1    spin polarized calculation?\n\n"
        f"{start}"
        " General timing and accounting informations for this job:\n"
        " ========================================================\n\n"
        f"                  Total CPU time used (sec):     {wall:10.3f}\n"
        f"                            User time (sec):     {wall:10.3f}\n"
        "                          System time (sec):          0.000\n"
        f"                         Elapsed time (sec):     {wall:10.3f}\n\n"
        "                   Maximum memory used (kb):      100000.\n"
        "                   Average memory used (kb):          N/A\n"
    )


def converged_chgcar(s: Structure, path: Path) -> None:
    """Stand-in for the baseline's converged CHGCAR: the QE-pseudopotential superposition
    density on the pinned grid, scaled to NELECT, with a PAW-occupancy block per atom (made
    up, 8 numbers each) so tests can see that the oracle copy keeps it byte for byte."""
    import tempfile

    from mlcharge_workflows.density.chgcar import write_chgcar
    from mlcharge_workflows.density.sad import superposition_density
    from mlcharge_workflows.pseudo import get_pseudo, stage_pseudos

    elements = sorted({site.specie.symbol for site in s})
    with tempfile.TemporaryDirectory() as tmp:
        folder = stage_pseudos(elements, tmp)
        pseudos = {el: folder / get_pseudo(el).filename for el in elements}
        grid = superposition_density(s, tuple(NGF.values()), pseudos).normalized(NELECT)
    aug = []
    for i in range(len(s)):
        aug.append(f"augmentation occupancies {i + 1:3d}   8")
        aug.append("  " + "  ".join(f"{0.1 * (i + 1) + 0.01 * k:.7E}" for k in range(8)))
    tmp_path = path.with_suffix(".tmp")
    write_chgcar(grid, tmp_path, data_aug={"total": aug})
    with open(tmp_path, "rb") as src, gzip.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    tmp_path.unlink()


def generator(kind: str, mode: str | None):
    from atomate2.vasp.sets.core import NonSCFSetGenerator, StaticSetGenerator

    if kind == "static":
        return StaticSetGenerator(user_incar_settings={"ENCUT": ENCUT})
    return NonSCFSetGenerator(mode=mode, user_incar_settings={"ENCUT": ENCUT})


def donor_chgcar(s: Structure, path: Path) -> None:
    """Stand-in for the occupancy donor's CHGCAR: a flat density, no magnetisation, on a
    4x4x4 grid (only its cell and occupancy lines are read), with made-up occupancies (8
    numbers per ion) for both spin blocks."""
    from mlcharge_workflows.density.chgcar import write_chgcar
    from mlcharge_workflows.density.grid import DensityGrid

    grid = DensityGrid(structure=s, total=np.full((4, 4, 4), NELECT / s.volume),
                       magnetization=np.zeros((4, 4, 4)))  # ISPIN=2, MAGMOM 0.6 (the set's)
    aug: dict[str, list[str]] = {"total": [], "diff": []}
    for block, offset in (("total", 0.2), ("diff", 0.0)):
        for i in range(len(s)):
            aug[block].append(f"augmentation occupancies {i + 1:3d}   8")
            aug[block].append("  " + "  ".join(
                f"{offset * (i + 1) + 0.01 * k:.7E}" for k in range(8)))
    write_chgcar(grid, path, data_aug=aug, magmom=[0.6] * len(s))


def build(root: Path = HERE / "SiC", arms: list[str] | None = None) -> None:
    """Write ``root/<arm>/{inputs,outputs}`` for every arm of :data:`ARMS` (or ``arms``)."""
    s = sic()
    for arm, (kind, mode, start, n_steps) in ARMS.items():
        if arms and arm not in arms:
            continue
        folder = root / arm
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "inputs").mkdir(parents=True)
        (folder / "outputs").mkdir()
        vis = generator(kind, mode).get_input_set(copy.deepcopy(s), potcar_spec=True)
        vis["INCAR"].update(start)
        vis.write_input(folder / "inputs")
        vis.write_input(folder / "outputs")
        xml, wall = adapt_vasprun(vis["POSCAR"].structure, start, n_steps)
        with gzip.open(folder / "outputs" / "vasprun.xml.gz", "wb") as fh:
            fh.write(xml)
        (folder / "outputs" / "OSZICAR").write_text(adapt_oszicar(n_steps))
        start_block, stdout = START_LOGS.get(arm, ("", None))
        (folder / "outputs" / "OUTCAR").write_text(outcar(wall, start_block))
        if stdout is not None:
            (folder / "outputs" / "vasp.out").write_text(stdout)
        if arm == "occupancy_donor":
            donor_chgcar(vis["POSCAR"].structure, folder / "outputs" / "CHGCAR")
        shutil.copy(folder / "inputs" / "POSCAR", folder / "outputs" / "CONTCAR")
        if arm in WRITES_CHGCAR:
            converged_chgcar(vis["POSCAR"].structure, folder / "outputs" / "CHGCAR.gz")


#: a non-SCF run VASP stopped at once: the CHGCAR could not be read for ICHARG=11
#: (stdout as VASP's main.F prints it; no vasprun.xml, an OUTCAR cut after its header)
NSCF_STOPPED = "ml_nscf_uniform_stopped"


def build_nscf_stopped(root: Path = HERE / "SiC") -> None:
    """``root/ml_nscf_uniform_stopped``: the inputs of ``ml_nscf_uniform``, outputs of a
    VASP that stopped before the first step."""
    folder = root / NSCF_STOPPED
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(root / "ml_nscf_uniform" / "inputs", folder / "inputs")
    shutil.copytree(root / "ml_nscf_uniform" / "inputs", folder / "outputs")
    (folder / "outputs" / "OUTCAR").write_text(outcar(0.0).split(" General timing")[0])
    (folder / "outputs" / "vasp.out").write_text(
        " POSCAR, INCAR and KPOINTS ok, starting setup\n WAVECAR not read\n"
        " RD_RHO_PAW: ion           1  data corrupt\n"
        " ERROR: charge density could not be read from file CHGCAR for ICHARG>10\n")


if __name__ == "__main__":
    import sys

    names = sys.argv[1:]
    if not names or [n for n in names if n != NSCF_STOPPED]:
        build(arms=[n for n in names if n != NSCF_STOPPED] or None)
    if not names or NSCF_STOPPED in names:
        build_nscf_stopped()
