"""A stalled ML start is stopped by pw.x itself and rerun from atoms (real pw.x, Si).

A rule no SCF can satisfy (a 10¹²-fold improvement every iteration) makes every run
"stall" at its second iteration, so the early stop and the fallback run on a cheap cell.
"""

from __future__ import annotations

import pytest

from mlcharge_workflows.common.fallback import FallbackPolicy
from mlcharge_workflows.convergence import StallRule
from mlcharge_workflows.engines.qe.core import run_qe_scf
from mlcharge_workflows.engines.qe.run import EXIT_FILE
from mlcharge_workflows.engines.qe.sets import QEProtocol

pytestmark = pytest.mark.pwx

#: conv_thr far below what pw.x reaches: without the stop it would run all 40 iterations.
#: 56 k-points make an iteration take most of a second, so the output (read every 0.25 s)
#: shows the stall long before pw.x could converge (a cheaper cell converged from the
#: prediction before its first look in CI).
PROTOCOL = QEProtocol(ecutwfc_ry=30.0, ecutrho_ry=240.0, kspacing=0.2, conv_thr_per_atom=1e-16,
                      electron_maxstep=40)
IMPOSSIBLE = StallRule(window=1, factor=1e12, min_iterations=2)


@pytest.fixture(autouse=True)
def _serial(monkeypatch):
    monkeypatch.setenv("MLCHARGE_QE_NPROCS", "1")


def test_pwx_stops_a_stalled_scf_itself(tmp_path, si_primitive) -> None:
    doc = run_qe_scf(si_primitive, tmp_path / "run", protocol=PROTOCOL, nprocs=1,
                     allow_unconverged=True, stall=IMPOSSIBLE)
    assert doc.stalled_at == 2 and "stalled" in doc.stall_reason and not doc.converged
    # pw.x ends the iteration in progress when it sees the file (the output is read every 0.25 s)
    assert 2 <= len(doc.scf_accuracy_Ry) <= 5
    assert doc.energy_eV is not None  # it wrote its data and said JOB DONE
    assert not (tmp_path / "run" / EXIT_FILE).exists()  # never left to stop the next run
    with pytest.raises(RuntimeError, match="did not converge .* the SCF stalled"):
        run_qe_scf(si_primitive, tmp_path / "strict", protocol=PROTOCOL, nprocs=1, stall=IMPOSSIBLE)
    # the same run without the rule goes to electron_maxstep
    free = run_qe_scf(si_primitive, tmp_path / "free", protocol=PROTOCOL.model_copy(
        update={"electron_maxstep": 6}), nprocs=1, allow_unconverged=True)
    assert free.stalled_at is None and len(free.scf_accuracy_Ry) == 6


def test_stalled_ml_start_is_rerun_from_atoms(tmp_path, si_primitive, monkeypatch) -> None:
    from jobflow import Flow, run_locally

    from mlcharge_workflows.engines.qe.jobs import MLQEStaticMaker, QEPredictDensityMaker

    monkeypatch.chdir(tmp_path)
    protocol = PROTOCOL.model_copy(update={"conv_thr_per_atom": 1e-12})  # 10 iterations from atoms
    policy = FallbackPolicy(stall_window=1, stall_factor=1e12, stall_min_iterations=2)
    predict = QEPredictDensityMaker(protocol=protocol).make(si_primitive)
    ml = MLQEStaticMaker(protocol=protocol, nprocs=1, policy=policy).make(si_primitive, predict.output)
    resp = run_locally(Flow([predict, ml]), create_folders=True, log=False, ensure_success=True)
    doc = resp[ml.uuid][1].output
    assert doc.fallback.startswith("stalled: the SCF stalled")
    first, rerun = doc.attempts
    assert (first.start, rerun.start) == ("ml", "atomic")
    assert first.density_read_from_file and first.rejected == doc.fallback and not first.converged
    assert 2 <= first.scf_iterations <= 5 and len(first.scf_accuracy_Ry) == first.scf_iterations
    assert rerun.converged and doc.converged and doc.ml_density_used is False  # never counted as ML
    assert doc.scf_iterations_total == first.scf_iterations + rerun.scf_iterations
