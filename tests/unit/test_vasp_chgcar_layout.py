"""The spin CHGCAR is written in VASP's own layout.

The reference is a CHGCAR written by VASP 6.4.3 itself (``data/vasp/``, trimmed; see its
README): after the total density come the PAW occupancies per ion, then one line of NIONS
moments (VASP's MAGMOM, ``'(5E20.12)'``), then the grid line and the magnetisation with its
occupancies. VASP reads the moment line list-directed before the magnetisation block
(``READCH``), so a file without it has its magnetisation misread.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp import Poscar
from pymatgen.io.vasp.outputs import Chgcar

from mlcharge_workflows.density import DensityGrid
from mlcharge_workflows.density.chgcar import read_chgcar, write_chgcar

FIXTURE = Path(__file__).parent / "data" / "vasp" / "CHGCAR.NO_spin.vasp643.trimmed"
TRIMMED = re.compile(r"^@@ trimmed (\d+) lines @@$")


def fixture_lines() -> list[str]:
    return FIXTURE.read_text().splitlines()


def fixture_structure() -> Structure:
    lines = fixture_lines()
    return Poscar.from_str("\n".join(lines[: lines.index("")])).structure


def fixture_occupancies() -> dict[str, dict[int, np.ndarray]]:
    """The occupancy blocks of the VASP file: the first two belong to the total, the rest
    to the magnetisation."""
    blocks: list[tuple[int, list[float]]] = []
    pending = 0
    for line in fixture_lines():
        if line.startswith("augmentation occupancies"):
            blocks.append((int(line[24:28]), []))
            pending = int(line[28:32])
        elif pending > 0:
            values = [float(x) for x in line.split()]
            blocks[-1][1].extend(values)
            pending -= len(values)
    half = len(blocks) // 2
    return {
        "total": {ion: np.array(v) for ion, v in blocks[:half]},
        "diff": {ion: np.array(v) for ion, v in blocks[half:]},
    }


def layout(lines: list[str]) -> list[tuple]:
    """The line structure of a CHGCAR: each line's kind, runs of data lines collapsed into
    one entry with their count (a trimmed run counts as the lines it stands for)."""
    header_end = lines.index("") if "" in lines else lines.index(" ")
    out: list[tuple] = [("header", header_end), ("blank",)]
    after_occupancies = False
    for line in lines[header_end + 1:]:
        trimmed = TRIMMED.match(line)
        if re.fullmatch(r"(\s*\d+){3}", line):
            kind: tuple = ("grid line", tuple(int(x) for x in line.split()))
            after_occupancies = False
        elif line.startswith("augmentation occupancies"):
            kind = ("occupancies", int(line[24:28]), int(line[28:32]))  # VASP: '(24X,2I4)'
            after_occupancies = True
        elif trimmed:
            out[-1] = ("data", out[-1][1] + int(trimmed.group(1)))
            continue
        elif after_occupancies and all(len(f) == 20 for f in re.findall(r".{20}", line)) \
                and len(line) % 20 == 0 and len(line.split()) <= 5:
            kind = ("moments", len(line.split()))
        else:
            kind = ("data", 1)
        if out[-1][0] == kind[0] == "data":
            out[-1] = ("data", out[-1][1] + 1)
        elif kind[0] == "data" and out[-1][0] == "occupancies":
            out.append(("occupancy values", 1))
        elif kind[0] == "data" and out[-1][0] == "occupancy values":
            out[-1] = ("occupancy values", out[-1][1] + 1)
        else:
            out.append(kind)
    return out


class VaspReadch:
    """VASP's CHGCAR reader as its source reads the file (``READCH``/``INCHG`` in fileio.F,
    ``RD_RHO_PAW`` in paw.F; the fallbacks of main.F), for ISPIN=2 and PAW POTCARs with
    ``counts`` occupancy values per ion. An emulation of the published logic, not VASP:
    list-directed reads take values across records and skip the rest of the last one;
    grid values are read '(1(1X,E17.11))', five a record; occupancy headers '(24X,2I4)'.
    """

    def __init__(self, text: str, counts: list[int]):
        self.records, self.pos, self.counts = text.splitlines(), 0, counts

    def record(self) -> str:
        if self.pos >= len(self.records):
            raise EOFError
        self.pos += 1
        return self.records[self.pos - 1]

    def list_directed(self, n: int, kind=float) -> list:
        values: list[str] = []
        while len(values) < n:
            values += self.record().split()
        return [kind(v) for v in values[:n]]  # ValueError: Fortran's read error

    def inchg(self, n_points: int) -> np.ndarray | None:
        try:
            dims = self.list_directed(3, int)
        except (ValueError, EOFError):
            return None  # IERR=2
        values: list[float] = []
        while len(values) < n_points:
            rec = self.record()
            fields = [rec[1 + 18 * k: 18 + 18 * k] for k in range(5)]
            values += [float(f) for f in fields if f.strip()][: n_points - len(values)]
        return np.array(values).reshape(dims, order="F")

    def rd_rho_paw(self) -> bool:
        try:
            for ion, count in enumerate(self.counts, start=1):
                rec = self.record().ljust(32)
                ni, n = int(rec[24:28] or 0), int(rec[28:32] or 0)
                if n:
                    self.list_directed(n)
                else:
                    self.record()
                if ni != ion or n != count:
                    return False  # "RD_RHO_PAW: ion N data corrupt"
        except (ValueError, EOFError):
            return False
        return True

    def read(self) -> tuple[str, np.ndarray | None, np.ndarray | None]:
        """("read" | "magnetisation from atoms" | "atoms", total, magnetisation)."""
        for _ in range(5):  # title and the four cell lines
            self.record()
        counts = self.record()
        if not counts.split()[0].isdigit():
            counts = self.record()
        n_ions = sum(int(x) for x in counts.split())
        self.record()  # "Direct"
        for _ in range(n_ions):
            self.record()
        try:
            mark = self.pos
            dims = self.list_directed(3, int)
            n_points, self.pos = int(np.prod(dims)), mark
        except (ValueError, EOFError):
            return "atoms", None, None
        total = self.inchg(n_points)
        if total is None or not self.rd_rho_paw():  # "PAW occupancies are missing"
            return "atoms", None, None  # ICHARG=1: overlapping atoms; ICHARG=11: stop
        try:
            self.list_directed(n_ions)  # the moment line (values unused)
        except (ValueError, EOFError):
            return "magnetisation from atoms", total, None
        magnetisation = self.inchg(n_points)
        if magnetisation is None or not self.rd_rho_paw():
            return "magnetisation from atoms", total, None
        return "read", total, magnetisation


def smooth_grid(structure: Structure, shape, n_electrons: float, moment: float) -> DensityGrid:
    f = np.stack(np.meshgrid(*(np.arange(n) / n for n in shape), indexing="ij"), -1)
    rho = np.zeros(shape)
    for site in structure:
        d = f - site.frac_coords
        d -= np.round(d)
        rho += np.exp(-((d @ structure.lattice.matrix) ** 2).sum(-1) / 0.5)
    grid = DensityGrid(structure, rho).normalized(n_electrons)
    grid.magnetization = grid.total * (moment / n_electrons)
    return grid


def test_spin_chgcar_has_the_line_structure_vasp_writes(tmp_path):
    """Same cell, grid, occupancies and MAGMOM as the VASP 6.4.3 file: same layout line by
    line, the same moment line byte for byte, the same occupancy header lines."""
    structure = fixture_structure()
    grid = smooth_grid(structure, (32, 48, 64), 11.0, 1.0)
    path = write_chgcar(grid, tmp_path / "CHGCAR", data_aug=fixture_occupancies(),
                        magmom=[1.0, 1.0])  # the VASP run had no MAGMOM: VASP's default
    ours, vasp = path.read_text().splitlines(), fixture_lines()
    assert layout(ours) == layout(vasp)
    expected = [("header", 10), ("blank",), ("grid line", (32, 48, 64)), ("data", 19661),
                ("occupancies", 1, 33), ("occupancy values", 7),
                ("occupancies", 2, 33), ("occupancy values", 7), ("moments", 2),
                ("grid line", (32, 48, 64)), ("data", 19661),
                ("occupancies", 1, 33), ("occupancy values", 7),
                ("occupancies", 2, 33), ("occupancy values", 7)]
    assert layout(vasp) == expected  # the fixture itself is what the module describes
    moment_vasp = [x for x in vasp if x.startswith("  0.1000")]
    assert moment_vasp == ["  0.100000000000E+01  0.100000000000E+01"]
    assert moment_vasp[0] in ours
    assert [x for x in ours if x.startswith("aug")] == [x for x in vasp if x.startswith("aug")]
    # the last line of each block: VASP ends a partial line with two blanks, as here
    for lines in (ours, vasp):
        last = lines[lines.index("augmentation occupancies   1  33") - 1]
        assert last.endswith("  ") and len(last.split()) == 98304 % 5


def test_spin_chgcar_reads_back_with_pymatgen_and_here(tmp_path):
    structure = fixture_structure()
    grid = smooth_grid(structure, (10, 12, 16), 11.0, 1.0)
    aug = fixture_occupancies()
    path = write_chgcar(grid, tmp_path / "CHGCAR", data_aug=aug, magmom=[0.7, -0.3])
    chg = Chgcar.from_file(str(path))
    v = grid.volume
    # 11 significant digits on file
    np.testing.assert_allclose(chg.data["total"], grid.total * v, rtol=1e-10)
    np.testing.assert_allclose(chg.data["diff"], grid.magnetization * v, rtol=1e-10)
    for block in ("total", "diff"):
        assert sorted(chg.data_aug[block]) == [1, 2]
        for ion in (1, 2):
            np.testing.assert_allclose(chg.data_aug[block][ion], aug[block][ion], rtol=1e-10)
    back = read_chgcar(path)
    assert back.metadata["chgcar_magmom"] == [0.7, -0.3]
    assert back.total_magnetization == pytest.approx(grid.total_magnetization, rel=1e-9)
    write_chgcar(back, tmp_path / "again")  # occupancies and moments kept from the file
    assert (tmp_path / "again").read_text() == path.read_text()


def test_moment_line_holds_magmom_in_site_order(tmp_path):
    """Seven ions: VASP's '(5E20.12)' wraps after five; the order is the POSCAR's."""
    species = ["Fe", "O", "Fe", "O", "Ni", "O", "Fe"]
    coords = [[i / 7, (2 * i % 7) / 7, (3 * i % 7) / 7] for i in range(7)]
    structure = Structure(Lattice.orthorhombic(4.0, 4.5, 5.0), species, coords)
    magmom = [2.5, 0.0, -2.5, 0.125, 0.6, -1e-3, 3.75]
    grid = smooth_grid(structure, (8, 9, 10), 40.0, 2.0)
    lines = write_chgcar(grid, tmp_path / "CHGCAR", magmom=magmom).read_text().splitlines()
    n_lines = math.ceil(8 * 9 * 10 / 5)
    start = lines.index(" ") + 2 + n_lines  # header, grid line, the total density
    moment_lines = lines[start:start + 2]
    assert lines[start + 2].split() == ["8", "9", "10"]  # then the magnetisation's grid line
    assert [len(x) for x in moment_lines] == [100, 40]
    assert moment_lines[0] == ("  0.250000000000E+01  0.000000000000E+00 -0.250000000000E+01"
                               "  0.125000000000E+00  0.600000000000E+00")
    assert moment_lines[1] == " -0.100000000000E-02  0.375000000000E+01"
    values = [float(x) for x in " ".join(moment_lines).split()]
    assert values == magmom
    # without an explicit magmom: the structure's site property
    grid.structure.add_site_property("magmom", magmom)
    again = write_chgcar(grid, tmp_path / "CHGCAR2").read_text().splitlines()
    assert again[start:start + 2] == moment_lines
    with pytest.raises(ValueError, match="7 sites"):
        write_chgcar(grid, tmp_path / "bad", magmom=[1.0] * 6)


def test_non_spin_files_are_unchanged(tmp_path):
    """Non-spin without occupancies: exactly pymatgen's file (as before); with occupancies
    for fewer than ten ions: also pymatgen's bytes (the header formats coincide)."""
    structure = fixture_structure()
    grid = smooth_grid(structure, (10, 12, 16), 11.0, 0.0)
    grid.magnetization = None
    ours = write_chgcar(grid, tmp_path / "ours").read_text()
    Chgcar(Poscar(structure), {"total": grid.total * grid.volume}).write_file(tmp_path / "pmg")
    assert ours == (tmp_path / "pmg").read_text()
    assert "augmentation" not in ours
    aug = {"total": fixture_occupancies()["total"]}
    ours = write_chgcar(grid, tmp_path / "ours_aug", data_aug=aug).read_text()
    Chgcar(Poscar(structure), {"total": grid.total * grid.volume},
           data_aug=aug).write_file(tmp_path / "pmg_aug")
    assert ours == (tmp_path / "pmg_aug").read_text()


def test_occupancy_headers_from_ion_ten_on_read_as_vasp_reads_them(tmp_path):
    """VASP reads the header as '(24X,2I4)': the ion index and the count must sit in
    columns 25-28 and 29-32 also for ion 10 and later."""
    n = 12
    structure = Structure(Lattice.cubic(8.0), ["Si"] * n,
                          [[i / n, (i * 5 % n) / n, (i * 7 % n) / n] for i in range(n)])
    grid = smooth_grid(structure, (8, 8, 8), 48.0, 0.0)
    grid.magnetization = None
    aug = {"total": {i: np.full(18, 0.1 * i) for i in range(1, n + 1)}}
    lines = write_chgcar(grid, tmp_path / "CHGCAR", data_aug=aug).read_text().splitlines()
    headers = [x for x in lines if x.startswith("augmentation")]
    assert [(int(x[24:28]), int(x[28:32])) for x in headers] == [(i, 18) for i in range(1, 13)]
    back = read_chgcar(tmp_path / "CHGCAR")
    np.testing.assert_allclose(back.metadata["data_aug"]["total"][12], aug["total"][12])


def test_incomplete_or_unknown_occupancies_are_refused(tmp_path):
    structure = fixture_structure()
    grid = smooth_grid(structure, (8, 8, 8), 11.0, 1.0)
    aug = fixture_occupancies()
    with pytest.raises(ValueError, match=r"ions \[1\], the cell has 2"):
        write_chgcar(grid, tmp_path / "a", data_aug={"total": {1: aug["total"][1]}})
    with pytest.raises(ValueError, match="without those of the total"):
        write_chgcar(grid, tmp_path / "b", data_aug={"diff": aug["diff"]})
    with pytest.raises(ValueError, match="collinear"):
        write_chgcar(grid, tmp_path / "c", data_aug={**aug, "diff_x": aug["diff"]})
    assert not any((tmp_path / x).exists() for x in "abc")


def test_vasps_reader_logic_takes_both_blocks_only_from_the_full_layout(tmp_path):
    """Through VASP's reading logic (emulated from its source, not run): the file written
    here gives the total and the magnetisation; pymatgen's spin file without the moment
    line loses the magnetisation (VASP: 'magnetization density of overlapping atoms
    calculated', pymatgen issue 709); a file without occupancies is discarded entirely."""
    # the emulation reads VASP's own file (trimmed runs refilled with VASP-format lines)
    filler = " " + " ".join(["0.10000000000E+00"] * 5)
    full = "\n".join(
        "\n".join([filler] * int(m.group(1))) if (m := TRIMMED.match(x)) else x
        for x in fixture_lines())
    status, total, mag = VaspReadch(full, [33, 33]).read()
    assert status == "read" and total.shape == mag.shape == (32, 48, 64)
    assert total[0, 0, 0] == 0.13801616031 and mag[0, 0, 0] == -0.80296862896e-03
    structure = fixture_structure()
    grid = smooth_grid(structure, (10, 12, 16), 11.0, 1.0)
    aug = fixture_occupancies()
    v = grid.volume
    ours = write_chgcar(grid, tmp_path / "ours", data_aug=aug, magmom=[1.0, 1.0])
    status, total, mag = VaspReadch(ours.read_text(), [33, 33]).read()
    assert status == "read"
    np.testing.assert_allclose(total, grid.total * v, rtol=1e-10)
    np.testing.assert_allclose(mag, grid.magnetization * v, rtol=1e-10)
    # pymatgen's own layout: occupancies after each block, no moment line
    Chgcar(Poscar(structure), {"total": grid.total * v, "diff": grid.magnetization * v},
           data_aug=aug).write_file(tmp_path / "pmg")
    status, total, mag = VaspReadch((tmp_path / "pmg").read_text(), [33, 33]).read()
    assert status == "magnetisation from atoms" and mag is None
    # a prediction without occupancies: VASP (PAW) starts from atoms
    bare = write_chgcar(grid, tmp_path / "bare", magmom=[1.0, 1.0])
    assert VaspReadch(bare.read_text(), [33, 33]).read()[0] == "atoms"
    # the moment line is read back with or without occupancies; pymatgen's file has none
    assert read_chgcar(bare).metadata["chgcar_magmom"] == [1.0, 1.0]
    assert "chgcar_magmom" not in read_chgcar(tmp_path / "pmg").metadata
    # occupancy counts of other POTCARs / LMAXMIX: discarded as well
    assert VaspReadch(ours.read_text(), [33, 18]).read()[0] == "atoms"


def test_spin_chgcar_written_without_magnetisation_is_a_non_spin_file(tmp_path):
    """A spin CHGCAR read, its magnetisation dropped (an ISPIN=1 run): the total and the
    total's occupancies only, no moment line."""
    from dataclasses import replace

    structure = fixture_structure()
    grid = smooth_grid(structure, (8, 8, 8), 11.0, 1.0)
    aug = fixture_occupancies()
    back = read_chgcar(write_chgcar(grid, tmp_path / "spin", data_aug=aug))
    text = write_chgcar(replace(back, magnetization=None), tmp_path / "plain").read_text()
    assert [x for x in text.splitlines() if x.startswith("aug")] == [
        "augmentation occupancies   1  33", "augmentation occupancies   2  33"]
    assert Chgcar.from_file(str(tmp_path / "plain")).is_spin_polarized is False
