"""MLStartFallbackHandler on folders built from real VASP outputs, alone and under custodian."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from custodian import Custodian
from custodian.custodian import Job
from custodian.vasp.handlers import UnconvergedErrorHandler
from pymatgen.io.vasp import Incar

from mlcharge_workflows.engines.vasp.handlers import (
    ML_CHGCAR,
    MLStartFallbackHandler,
    new_ml_start_record,
    read_ml_start_record,
    write_ml_start_record,
)
from mlcharge_workflows.engines.vasp.parse import count_attempts

OUT = Path(__file__).resolve().parents[1] / "test_data" / "vasp" / "outputs"  # in the repository
UNCONVERGED = OUT / "unconverged__vasprun.xml.electronic"  # V2O5, 100 = NELM steps
CONVERGED = OUT / "lobster__vasp_lobster_output_v51__vasprun.xml"  # NaCl, 17 steps
CONVERGED_OSZ = OUT / "lobster__vasp_lobster_output_v51__OSZICAR"


def _ml_folder(path: Path, incar: dict, vasprun: Path | None = None, oszicar: Path | None = None):
    path.mkdir(exist_ok=True)
    Incar(incar).write_file(path / "INCAR")
    (path / ML_CHGCAR).write_text("predicted density\n")
    (path / "CHGCAR").write_text("density written by the failed attempt\n")
    if vasprun is not None:
        shutil.copy(vasprun, path / "vasprun.xml")
    if oszicar is not None:
        shutil.copy(oszicar, path / "OSZICAR")
    write_ml_start_record(new_ml_start_record({"source": "test"}), path)
    return path


def test_restore_then_abandon_on_unconverged_vasprun(tmp_path: Path) -> None:
    d = _ml_folder(tmp_path, {"ICHARG": 1, "NELM": 100, "ALGO": "Fast"}, vasprun=UNCONVERGED)
    h = MLStartFallbackHandler(max_ml_restarts=1)
    assert h.check(str(d))
    out = h.correct(str(d))
    assert "restored" in out["errors"][0]
    assert (d / "CHGCAR").read_text() == "predicted density\n"
    assert Incar.from_file(d / "INCAR")["ICHARG"] == 1
    rec = read_ml_start_record(d)
    assert rec["status"] == "restored" and rec["ml_restarts"] == 1 and rec["fallback"] is None
    assert rec["events"][0]["scf_steps"][0] == 100
    assert len(list(d.glob("error.*.tar.gz"))) == 1  # no other handler backed it up

    (d / "CHGCAR").write_text("density written by the second failed attempt\n")
    assert h.check(str(d))
    out = h.correct(str(d))
    rec = read_ml_start_record(d)
    assert rec["status"] == "abandoned"
    assert "did not converge in 2 attempt(s)" in rec["fallback"]
    assert Incar.from_file(d / "INCAR")["ICHARG"] == 2
    assert not (d / "CHGCAR").exists() and (d / ML_CHGCAR).exists()
    assert [e["action"] for e in rec["events"]] == ["restored", "abandoned"]
    assert not h.check(str(d))  # an abandoned start is never touched again


def test_zero_restarts_abandons_at_once(tmp_path: Path) -> None:
    d = _ml_folder(tmp_path, {"ICHARG": 1, "NELM": 100}, vasprun=UNCONVERGED)
    h = MLStartFallbackHandler(max_ml_restarts=0)
    h.correct(str(d))
    assert read_ml_start_record(d)["status"] == "abandoned"
    with pytest.raises(ValueError, match="max_ml_restarts"):
        MLStartFallbackHandler(max_ml_restarts=-1)


def test_nelm_from_oszicar_without_vasprun(tmp_path: Path) -> None:
    """A run killed at NELM: no readable vasprun.xml, OSZICAR shows 10 = NELM steps."""
    d = _ml_folder(tmp_path, {"ICHARG": 1, "NELM": 10}, oszicar=OUT / "nonconv__OSZICAR")
    assert MLStartFallbackHandler().check(str(d))
    d2 = _ml_folder(tmp_path / "b", {"ICHARG": 1, "NELM": 60}, oszicar=OUT / "nonconv__OSZICAR")
    assert not MLStartFallbackHandler().check(str(d2))


def test_icharg_reset_by_other_handler_is_recorded(tmp_path: Path) -> None:
    """NonConvergingErrorHandler-style ICHARG=2 on a converged run: abandon on purpose."""
    d = _ml_folder(tmp_path, {"ICHARG": 2, "NELM": 200}, vasprun=CONVERGED, oszicar=CONVERGED_OSZ)
    h = MLStartFallbackHandler()
    assert h.check(str(d))
    h.correct(str(d))
    rec = read_ml_start_record(d)
    assert rec["status"] == "abandoned" and "ICHARG=2" in rec["fallback"]
    assert not (d / "CHGCAR").exists()


def test_inert_on_converged_and_on_non_ml_runs(tmp_path: Path) -> None:
    d = _ml_folder(tmp_path, {"ICHARG": 1, "NELM": 200}, vasprun=CONVERGED)
    assert not MLStartFallbackHandler().check(str(d))
    plain = tmp_path / "plain"
    plain.mkdir()
    Incar({"ICHARG": 2}).write_file(plain / "INCAR")
    shutil.copy(UNCONVERGED, plain / "vasprun.xml")
    assert not MLStartFallbackHandler().check(str(plain))  # no ml_start.json: not ours


def test_missing_ml_copy_abandons(tmp_path: Path) -> None:
    d = _ml_folder(tmp_path, {"ICHARG": 1, "NELM": 100}, vasprun=UNCONVERGED)
    (d / ML_CHGCAR).unlink()
    MLStartFallbackHandler().correct(str(d))
    assert "missing" in read_ml_start_record(d)["fallback"]


class _FakeVaspJob(Job):
    """Stands in for custodian's VaspJob: each run 'writes' the outputs of one real run."""

    def __init__(self, outputs: list[tuple[Path, Path | None]], log: list) -> None:
        self.outputs = outputs
        self.log = log

    def setup(self, directory: str = "./") -> None:
        pass

    def run(self, directory: str = "./") -> None:
        d = Path(directory)
        n = len(self.log)
        chg = d / "CHGCAR"
        self.log.append(
            {
                "ICHARG": Incar.from_file(d / "INCAR").get("ICHARG"),
                "ALGO": Incar.from_file(d / "INCAR").get("ALGO"),
                "CHGCAR": chg.read_text() if chg.exists() else None,
            }
        )
        vasprun, oszicar = self.outputs[n]
        shutil.copy(vasprun, d / "vasprun.xml")
        if oszicar is not None:
            shutil.copy(oszicar, d / "OSZICAR")
        chg.write_text(f"density after attempt {n + 1}\n")  # LCHARG overwrites CHGCAR

    def postprocess(self, directory: str = "./") -> None:
        pass


@pytest.mark.parametrize("max_restarts", [1, 0])
def test_under_custodian_with_unconverged_handler(tmp_path: Path, max_restarts: int) -> None:
    """Real custodian loop: two failed ML attempts then a converged one."""
    d = _ml_folder(tmp_path, {"ICHARG": 1, "NELM": 100, "ALGO": "Fast", "ISMEAR": -5})
    (d / "CHGCAR").write_text("predicted density\n")
    log: list = []
    job = _FakeVaspJob(
        [(UNCONVERGED, OUT / "nonconv__OSZICAR"), (UNCONVERGED, OUT / "OSZICAR"),
         (CONVERGED, CONVERGED_OSZ)],
        log,
    )
    handlers = [UnconvergedErrorHandler(), MLStartFallbackHandler(max_ml_restarts=max_restarts)]
    Custodian(handlers, [job], max_errors=5, directory=str(d)).run()
    assert len(log) == 3
    assert log[0] == {"ICHARG": 1, "ALGO": "Fast", "CHGCAR": "predicted density\n"}
    assert log[1]["ALGO"] == "Normal"  # UnconvergedErrorHandler's ladder still applies
    rec = read_ml_start_record(d)
    if max_restarts == 1:
        assert log[1]["ICHARG"] == 1 and log[1]["CHGCAR"] == "predicted density\n"
        assert log[2]["ICHARG"] == 2 and log[2]["CHGCAR"] is None
        assert [e["action"] for e in rec["events"]] == ["restored", "abandoned"]
    else:
        assert log[1]["ICHARG"] == 2 and log[1]["CHGCAR"] is None
        assert [e["action"] for e in rec["events"]] == ["abandoned"]
    assert rec["status"] == "abandoned"
    # UnconvergedErrorHandler backed up each failure; the handler did not back up again
    steps = [a["scf_iterations"] for a in count_attempts(d)]
    assert steps == [10, 18, 17]


def test_chgcar_deleted_by_another_handler_is_recorded(tmp_path: Path) -> None:
    """custodian's edddav fix deletes CHGCAR and keeps ICHARG=1: VASP would start from
    atoms while the record still said ML start. The handler detects it and abandons."""
    import numpy as np
    from custodian.vasp.handlers import VaspErrorHandler
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.vasp import Kpoints, Poscar

    from mlcharge_workflows.density.potcar import format_potcar_dataset

    d = _ml_folder(tmp_path, {"ICHARG": 1, "NELM": 100, "ALGO": "Fast"}, vasprun=CONVERGED)
    s = Structure(Lattice.cubic(4.0), ["Si"], [[0, 0, 0]])
    Poscar(s).write_file(d / "POSCAR")
    Kpoints.gamma_automatic((2, 2, 2)).write_file(d / "KPOINTS")
    q = np.arange(1000) * 0.06
    (d / "POTCAR").write_text(format_potcar_dataset("Si", 4.0, 4 * np.exp(-q**2 / 8), 60.0))
    (d / "vasp.out").write_text(" Error EDDDAV: Call to ZHEGV failed. Returncode = 7 1 8\n")
    other = VaspErrorHandler()
    assert other.check(str(d))
    other.correct(str(d))
    assert not (d / "CHGCAR").exists() and Incar.from_file(d / "INCAR")["ICHARG"] == 1
    h = MLStartFallbackHandler()
    assert h.check(str(d))
    h.correct(str(d))
    rec = read_ml_start_record(d)
    assert rec["status"] == "abandoned" and "deleted CHGCAR" in rec["fallback"]
    assert Incar.from_file(d / "INCAR")["ICHARG"] == 2  # the rerun says what it does
    assert not h.check(str(d))
