"""SCF-step counting on real VASP outputs (custodian test files).

See tests/test_data/vasp/outputs/README.md for what each file is.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
from pathlib import Path

import pytest

from mlcharge_workflows.engines.vasp.parse import (
    count_attempts,
    parse_vasp_scf,
    scf_steps_from_oszicar,
    scf_steps_from_vasprun,
    wall_time_from_outcar,
)

OUT = Path(__file__).resolve().parents[1] / "test_data" / "vasp" / "outputs"  # in the repository


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("lobster__vasp_lobster_output_v51__vasprun.xml", [17]),
        ("fermi_smearing__vasprun.xml", [6, 8]),
        ("static_smearing__vasprun.xml", [6, 8]),
        ("max_force__vasprun.xml", [15, 6, 6]),
    ],
)
def test_vasprun_counts(name: str, steps: list[int]) -> None:
    assert scf_steps_from_vasprun(OUT / name) == steps


def test_oszicar_counts_match_vasprun() -> None:
    assert scf_steps_from_oszicar(OUT / "lobster__vasp_lobster_output_v51__OSZICAR") == [17]
    osz = scf_steps_from_oszicar(OUT / "postprocess__OSZICAR")
    assert len(osz) == 28 and osz[:5] == [40, 14, 21, 20, 11]
    assert scf_steps_from_vasprun(OUT / "postprocess__vasprun.xml") == osz
    assert scf_steps_from_oszicar(OUT / "OSZICAR")[:3] == [18, 9, 8]
    assert scf_steps_from_oszicar(OUT / "nonconv__OSZICAR") == [10, 10, 10, 10]


def test_summary_of_static(tmp_path: Path) -> None:
    shutil.copy(OUT / "lobster__vasp_lobster_output_v51__vasprun.xml", tmp_path / "vasprun.xml")
    s = parse_vasp_scf(tmp_path)
    assert s.source == "vasprun.xml"
    assert s.scf_iterations == 17 and s.electronic_steps == [17]
    assert (s.nelm, s.nelmdl, s.icharg, s.istart) == (200, -5, 2, 0)
    assert s.ngf == (84, 84, 84)
    assert s.converged_electronic is True and not s.hit_nelm
    assert s.energy_eV == pytest.approx(-27.11090125, abs=1e-6)
    # 17 <time name="totalsc"> wall seconds as VASP wrote them (88.08 s)
    assert s.scf_wall_s == pytest.approx(88.08)
    assert s.wall_s is None  # no OUTCAR in the folder
    assert s.as_dict()["scf_iterations"] == 17


def test_summary_of_unconverged_run(tmp_path: Path) -> None:
    with open(OUT / "unconverged__vasprun.xml.electronic", "rb") as src, gzip.open(
        tmp_path / "vasprun.xml.gz", "wb"
    ) as dst:
        shutil.copyfileobj(src, dst)  # gzipped as atomate2 leaves it
    s = parse_vasp_scf(tmp_path)
    assert s.electronic_steps[0] == 100 == s.nelm
    assert s.converged_electronic is False and s.hit_nelm
    assert s.icharg == 1


def test_oszicar_only_and_missing(tmp_path: Path) -> None:
    shutil.copy(OUT / "nonconv__OSZICAR", tmp_path / "OSZICAR")
    s = parse_vasp_scf(tmp_path)
    assert s.source == "OSZICAR" and s.electronic_steps == [10, 10, 10, 10]
    assert s.nelm is None and not s.hit_nelm
    with pytest.raises(FileNotFoundError, match="no vasprun.xml or OSZICAR"):
        parse_vasp_scf(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="VASP output not found"):
        scf_steps_from_vasprun(tmp_path / "vasprun.xml")


def test_outcar_wall_time(tmp_path: Path) -> None:
    (tmp_path / "OUTCAR").write_text(
        " General timing and accounting informations for this job:\n"
        "                  Total CPU time used (sec):       86.123\n"
        "                         Elapsed time (sec):       89.456\n"
    )
    assert wall_time_from_outcar(tmp_path / "OUTCAR") == pytest.approx(89.456)
    assert wall_time_from_outcar(tmp_path / "missing") is None


def test_count_attempts_adds_custodian_backups(tmp_path: Path) -> None:
    """Two failed attempts backed up by custodian (one twice) + the final run."""
    for num, src in ((1, "nonconv__OSZICAR"), (2, "nonconv__OSZICAR"), (3, "OSZICAR")):
        (tmp_path / "OSZICAR").write_bytes((OUT / src).read_bytes())
        with tarfile.open(tmp_path / f"error.{num}.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "OSZICAR", arcname=f"error.{num}/OSZICAR")
    (tmp_path / "OSZICAR").write_bytes(
        (OUT / "lobster__vasp_lobster_output_v51__OSZICAR").read_bytes()
    )
    attempts = count_attempts(tmp_path)
    assert [a["source"] for a in attempts] == ["error.1.tar.gz", "error.3.tar.gz", "OSZICAR"]
    assert [a["scf_iterations"] for a in attempts] == [10, 18, 17]
