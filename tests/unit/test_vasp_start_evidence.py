"""Did VASP read the supplied CHGCAR? Decided from its OUTCAR and stdout, never from the
vasprun.xml echo (VASP keeps ``ICHARG = 1`` there when it falls back to atoms).

The fragments below are written from the messages of VASP's source quoted in
docs/vasp-guide.md ("The CHGCAR VASP reads": READCH, RD_RHO_PAW, main.F 5.4.4; the OUTCAR
start block of a VASP 6.4.3 ICHARG=2 run), laid out as VASP prints them; no VASP run here.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("atomate2")

from pymatgen.io.vasp import Incar  # noqa: E402

from mlcharge_workflows.common.documents import savings_document  # noqa: E402
from mlcharge_workflows.engines.vasp.flows import VaspArmReader  # noqa: E402
from mlcharge_workflows.engines.vasp.handlers import (  # noqa: E402
    ML_CHGCAR,
    MLStartFallbackHandler,
    new_ml_start_record,
    read_ml_start_record,
    record_start_evidence,
    write_ml_start_record,
)
from mlcharge_workflows.engines.vasp.parse import (  # noqa: E402
    count_attempts,
    read_start_evidence,
    start_evidence,
)

OUT = Path(__file__).resolve().parents[1] / "test_data" / "vasp" / "outputs"
UNCONVERGED = OUT / "unconverged__vasprun.xml.electronic"  # V2O5, 100 = NELM steps
CONVERGED_OSZ = OUT / "lobster__vasp_lobster_output_v51__OSZICAR"  # NaCl, 17 steps

_HEAD = (
    " Broyden mixing: mesh for mixing (old mesh)\n"
    "   NGX = 15   NGY = 15   NGZ = 15\n"
    "  (NGX  = 36   NGY  = 36   NGZ  = 36)\n"
    "  gives a total of  3375 points\n\n"
    " initial charge density was supplied:\n"
)
_TAIL = (
    " number of electron       8.0000000 magnetization       0.0000000\n"
    " keeping initial charge density in first step\n\n"
    "--------------------------------------------------------------------------------\n"
)
#: OUTCAR start block of a run that read CHGCAR (no overlapping-atoms line)
OUTCAR_READ = _HEAD + _TAIL
#: ... of a run that started from atoms (ICHARG=2, or ICHARG=1 after VASP gave the file up)
OUTCAR_ATOMS = _HEAD + " charge density of overlapping atoms calculated\n" + _TAIL
STDOUT_PAW_MISSING = (
    " POSCAR, INCAR and KPOINTS ok, starting setup\n"
    " FFT: planning ...\n"
    " WAVECAR not read\n"
    " RD_RHO_PAW: ion           1  data corrupt\n"
    " WARNING: PAW occupancies are missing on CHGCAR \n"
    " entering main loop\n"
)
STDOUT_READ = (
    " WAVECAR not read\n"
    " charge-density read from file: C Si\n"
    " magnetization density read from file 1\n"
    " entering main loop\n"
)
STDOUT_NSCF_STOP = (
    " WAVECAR not read\n"
    " RD_RHO_PAW: ion           1  data corrupt\n"
    " ERROR: charge density could not be read from file CHGCAR for ICHARG>10\n"
)
#: a VASP 6 style boxed warning whose text wraps over two lines
STDOUT_BOXED = (
    " -----------------------------------------------------------------------------\n"
    "|                                                                             |\n"
    "|     W    W    AA    RRRRR   N    N  II  N    N   GGGG   !!!                 |\n"
    "|     The PAW occupancies are missing on                                      |\n"
    "|     CHGCAR; the charge density is not used.                                 |\n"
    " -----------------------------------------------------------------------------\n"
)


def test_outcar_start_block_decides() -> None:
    read = start_evidence(OUTCAR_READ)
    assert read.density_read is True and read.status == "read"
    assert "initial charge density was supplied" in read.evidence
    atoms = start_evidence(OUTCAR_ATOMS)
    assert atoms.density_read is False and atoms.status == "discarded"
    assert "overlapping atoms" in atoms.evidence


def test_stdout_messages_name_the_cause() -> None:
    ev = start_evidence(OUTCAR_ATOMS, STDOUT_PAW_MISSING)
    assert ev.density_read is False
    assert ev.evidence.startswith("stdout: PAW occupancies are missing on CHGCAR")
    assert any("data corrupt" in m for m in ev.messages)
    assert any(m.startswith("OUTCAR: charge density of overlapping atoms") for m in ev.messages)
    # without an OUTCAR block (a killed run) the stdout alone decides
    assert start_evidence(None, STDOUT_PAW_MISSING).density_read is False
    stop = start_evidence("", STDOUT_NSCF_STOP)
    assert stop.density_read is False and "ICHARG>10" in " ".join(stop.messages)
    assert start_evidence(None, STDOUT_BOXED).density_read is False  # wrapped box text


def test_read_start_and_replaced_magnetisation() -> None:
    assert start_evidence(None, STDOUT_READ).density_read is True
    mag = start_evidence(
        OUTCAR_READ, " charge-density read from file: C Si\n"
        " magnetization density of overlapping atoms calculated\n")
    assert mag.density_read is True and mag.magnetization_from_atoms is True


def test_without_start_lines_the_evidence_is_unverified() -> None:
    mock_outcar = (OUT.parent / "SiC" / "ml_static" / "outputs" / "OUTCAR").read_text()
    ev = start_evidence(mock_outcar, None)
    assert ev.density_read is None and ev.status == "unverified"
    assert ev.evidence.startswith("unverified")
    assert start_evidence(None, None).status == "unverified"


def test_folder_with_gzipped_outcar_and_stdout(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "OUTCAR.gz", "wt") as fh:
        fh.write(OUTCAR_ATOMS)
    (tmp_path / "vasp.out").write_text(STDOUT_PAW_MISSING)
    ev = read_start_evidence(tmp_path)
    assert ev.density_read is False and ev.files == ["OUTCAR", "vasp.out"]
    assert "PAW occupancies" in ev.evidence


def _tar(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_count_attempts_reads_each_attempts_start(tmp_path: Path) -> None:
    """custodian's backup holds the first attempt's OUTCAR and vasp.out: each attempt
    gets its own evidence."""
    lines = CONVERGED_OSZ.read_text().splitlines()
    first = "\n".join([*lines[:3], lines[-1]]) + "\n"  # 2 steps, then the ionic line
    _tar(tmp_path / "error.1.tar.gz",
         {"OSZICAR": first, "OUTCAR": OUTCAR_ATOMS, "vasp.out": STDOUT_PAW_MISSING})
    (tmp_path / "OSZICAR").write_text(CONVERGED_OSZ.read_text())
    (tmp_path / "OUTCAR").write_text(OUTCAR_READ)
    attempts = count_attempts(tmp_path)
    assert [a["scf_iterations"] for a in attempts] == [2, 17]
    assert [a["start_evidence"]["status"] for a in attempts] == ["discarded", "read"]
    assert attempts[0]["start_evidence"]["files"] == ["OUTCAR", "vasp.out"]


def _ml_folder(path: Path, outcar: str, stdout: str) -> Path:
    path.mkdir(exist_ok=True)
    Incar({"ICHARG": 1, "NELM": 100}).write_file(path / "INCAR")
    (path / ML_CHGCAR).write_text("predicted density\n")
    (path / "CHGCAR").write_text("density written by the failed attempt\n")
    (path / "vasprun.xml").write_bytes(UNCONVERGED.read_bytes())
    (path / "OUTCAR").write_text(outcar)
    (path / "vasp.out").write_text(stdout)
    write_ml_start_record(new_ml_start_record({"source": "test"}), path)
    return path


def test_handler_does_not_restore_a_chgcar_vasp_discarded(tmp_path: Path) -> None:
    d = _ml_folder(tmp_path / "discarded", OUTCAR_ATOMS, STDOUT_PAW_MISSING)
    h = MLStartFallbackHandler(max_ml_restarts=1)
    assert h.check(str(d))
    h.correct(str(d))
    rec = read_ml_start_record(d)
    assert rec["status"] == "abandoned"
    assert rec["fallback"].startswith("ml_density_not_read: VASP discarded the CHGCAR")
    assert "PAW occupancies are missing" in rec["fallback"]
    assert rec["events"][0]["start_evidence"] == "discarded"
    assert Incar.from_file(d / "INCAR")["ICHARG"] == 2 and not (d / "CHGCAR").exists()
    # the same failure after a read start is restored as before
    d2 = _ml_folder(tmp_path / "read", OUTCAR_READ, STDOUT_READ)
    h.correct(str(d2))
    assert read_ml_start_record(d2)["status"] == "restored"


def _attempt(n: int, outcar: str | None, stdout: str | None = None) -> dict:
    return {"scf_iterations": n, "wall_s": 10.0,
            "start_evidence": start_evidence(outcar, stdout).as_dict()}


def test_record_start_evidence() -> None:
    rec = new_ml_start_record({"source": "x"})
    discarded = record_start_evidence(rec, [_attempt(17, OUTCAR_ATOMS, STDOUT_PAW_MISSING)])
    assert discarded["status"] == "abandoned" and discarded["start"] == "atomic"
    assert discarded["fallback"].startswith("ml_density_not_read: VASP discarded the CHGCAR")
    assert discarded["events"][-1]["action"] == "discarded_by_vasp"
    assert discarded["start_evidence"]["status"] == "discarded"
    read = record_start_evidence(rec, [_attempt(11, OUTCAR_READ)])
    assert read["status"] == "active" and read["start_evidence"]["status"] == "read"
    unverified = record_start_evidence(rec, [_attempt(11, None)])
    assert unverified["status"] == "active" and unverified["fallback"] is None
    assert unverified["start_evidence"]["status"] == "unverified"
    assert rec["status"] == "active" and "start_evidence" not in rec  # not mutated


def _task(attempts: list[dict], record: dict) -> dict:
    return {
        "dir_name": "host:/runs/x", "state": "successful",
        "output": {"energy": -10.0},
        "calcs_reversed": [{"input": {"parameters": {"ICHARG": 1, "NELMDL": -5}},
                            "output": {"outcar": {"total_magnetization": 0.0}}}],
        "additional_json": {"scf_attempts": attempts, "ml_start": record},
    }


PRED = {"path": "/p/CHGCAR", "predict_wall_s": 3.0, "predictor": "model", "nelect": 8.0}


@pytest.mark.parametrize(
    ("outcar", "stdout", "used", "start", "read", "status"),
    [
        (OUTCAR_ATOMS, STDOUT_PAW_MISSING, False, "atomic", False, "discarded"),
        (OUTCAR_READ, STDOUT_READ, True, "ml", True, "read"),
        (None, None, True, "ml", None, "unverified"),  # today's mock runs: kept, marked
    ],
)
def test_savings_document_counts_only_a_read_start(si, outcar, stdout, used, start, read,
                                                   status) -> None:
    """The vasprun echo says ICHARG=1 in all three; the OUTCAR/stdout decide."""
    attempts = [_attempt(17, outcar, stdout)]
    # the record as the ML static leaves it (a discarded start abandoned there) ...
    record = record_start_evidence(new_ml_start_record({"written": "copied"}), attempts)
    # ... and as an older document without the evidence step would hold it
    for rec in (record, new_ml_start_record({"written": "copied"})):
        doc = savings_document.original(
            "Si", si, VaspArmReader(), _task([_attempt(17, None)], new_ml_start_record({})),
            PRED, _task(attempts, rec), requested={"baseline": True, "ml": True, "predict": True},
        )
        assert doc.ml_density_used is used
        assert (doc.fallback or "").startswith("ml_density_not_read") is (not used)
        (attempt,) = doc.details.ml_attempts
        assert attempt.start == start and attempt.density_read_from_file is read
        assert attempt.start_evidence.startswith(
            {"discarded": "stdout: PAW", "read": "OUTCAR", "unverified": "unverified"}[status])
        assert doc.details.ml_start_evidence["status"] == status
