"""Custodian handler that keeps or deliberately drops the ML start of a VASP SCF.

Two ways an ML start is silently lost under custodian:

* with ``LCHARG = .TRUE.`` a failed attempt overwrites CHGCAR, so the rerun starts
  from the failed density, not the predicted one;
* some custodian corrections set ``ICHARG = 2`` (``NonConvergingErrorHandler``), so
  the rerun starts from atoms while the task still looks ML-started;
* some delete CHGCAR and keep ``ICHARG = 1`` (``VaspErrorHandler``'s brmix, edddav and
  aliasing fixes), so VASP rereads no density and starts from atoms just the same;
* VASP itself discards a CHGCAR it cannot use (no or other PAW occupancies, another grid
  or cell) and starts from atoms with ``ICHARG = 1`` still echoed: its OUTCAR/stdout say
  so (:func:`~mlcharge_workflows.engines.vasp.parse.read_start_evidence`), and a failed
  attempt whose CHGCAR was discarded is not restored (it would be discarded again).
  :func:`record_start_evidence` records the same for the accepted run after custodian.

:class:`MLStartStallHandler` (a custodian monitor) stops an ML-started SCF that has stalled
and abandons the ML start, as the QE engine does (docs/compare.md, ``stalled:``).

:class:`MLStartFallbackHandler` goes last in the handler list. After a failed attempt
it restores CHGCAR from the pristine copy ``CHGCAR.ml`` (up to ``max_ml_restarts``
times), then abandons the ML start on purpose (``ICHARG = 2``, CHGCAR deleted).
Everything it does is written to ``ml_start.json`` in the run folder; atomate2's
task-document parsing stores it as ``TaskDoc.additional_json["ml_start"]``.

The record (status ``active`` -> ``restored`` -> ``abandoned``)::

    {"status": "active", "ml_chgcar": "CHGCAR.ml", "ml_restarts": 0,
     "max_ml_restarts": 1, "fallback": null, "events": [], "density": {...}}
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from custodian.custodian import ErrorHandler
from custodian.utils import backup
from custodian.vasp.handlers import VASP_BACKUP_FILES
from custodian.vasp.interpreter import VaspModder
from custodian.vasp.io import load_vasprun
from monty.os.path import zpath

from mlcharge_workflows.common.fallback import NOT_READ, STALLED
from mlcharge_workflows.convergence import StallRule
from mlcharge_workflows.engines.vasp.parse import (
    is_backed_up,
    read_start_evidence,
    scf_steps_from_oszicar,
)

__all__ = [
    "ML_CHGCAR",
    "ML_START_FILE",
    "MLStartFallbackHandler",
    "MLStartStallHandler",
    "discarded_reason",
    "read_ml_start_record",
    "record_start_evidence",
    "write_ml_start_record",
]

#: Record of the ML start, read back into ``TaskDoc.additional_json["ml_start"]``.
ML_START_FILE = "ml_start.json"
#: Pristine copy of the predicted CHGCAR (VASP overwrites CHGCAR at the end of a run).
ML_CHGCAR = "CHGCAR.ml"
#: Statuses in which the predicted density is (still) the start of the next attempt.
ACTIVE_STATUSES = ("active", "restored")


def read_ml_start_record(directory: str | Path = ".") -> dict[str, Any] | None:
    """The ``ml_start.json`` record of a run folder, or None if there is none."""
    path = Path(zpath(str(Path(directory) / ML_START_FILE)))
    if not path.exists():
        return None
    from monty.serialization import loadfn

    return loadfn(path, cls=None)


def write_ml_start_record(record: dict[str, Any], directory: str | Path = ".") -> Path:
    """Write ``ml_start.json`` (plain JSON) into ``directory``."""
    path = Path(directory) / ML_START_FILE
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


def new_ml_start_record(density: dict[str, Any], max_ml_restarts: int = 1) -> dict[str, Any]:
    """The record written before the first attempt (``density``: how CHGCAR was made)."""
    return {
        "status": "active",
        "ml_chgcar": ML_CHGCAR,
        "ml_restarts": 0,
        "max_ml_restarts": int(max_ml_restarts),
        "fallback": None,
        "events": [],
        "density": density,
    }


def discarded_reason(evidence: dict[str, Any]) -> str:
    """The ``fallback`` of an ML start VASP discarded (``evidence``: a StartEvidence dict)."""
    return f"{NOT_READ}: VASP discarded the CHGCAR and started from atoms ({evidence['evidence']})"


def record_start_evidence(record: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The ML-start record with what VASP's output says about the accepted run's start.

    ``attempts``: :func:`~mlcharge_workflows.engines.vasp.parse.count_attempts` of the
    run folder (each with its ``start_evidence``). The last attempt's evidence is kept as
    ``record["start_evidence"]``. If the record still counts the run as ML-started and
    VASP discarded the CHGCAR (OUTCAR/stdout: overlapping atoms, PAW occupancies missing
    ...), the start is abandoned: ``status = "abandoned"``, ``start = "atomic"`` and
    ``fallback = "ml_density_not_read: ..."``. Without OUTCAR start block or stdout the
    evidence is ``"unverified"`` and the record is otherwise unchanged.
    """
    record = dict(record)
    last = attempts[-1].get("start_evidence") if attempts else None
    record["start_evidence"] = last or {
        "density_read": None, "status": "unverified",
        "evidence": "unverified: no attempt of the run could be parsed"}
    if record.get("status") in ACTIVE_STATUSES and last and last.get("density_read") is False:
        reason = discarded_reason(last)
        record["events"] = [*record.get("events", []), {
            "attempt": len(attempts), "action": "discarded_by_vasp", "reason": reason}]
        record.update(status="abandoned", start="atomic", fallback=reason)
    return record


def _has_chgcar(directory: Path) -> bool:
    return Path(zpath(str(directory / "CHGCAR"))).exists()


def _incar(directory: Path):
    from pymatgen.io.vasp import Incar

    return Incar.from_file(zpath(str(directory / "INCAR")))


def _scf_failed(directory: str, nelm: int) -> tuple[bool, list[int]]:
    """Whether the last attempt stopped at NELM; also its SCF steps per ionic step.

    vasprun.xml decides when it can be read (pymatgen's ``converged_electronic``,
    through custodian's cached loader, so the file is parsed once per check round);
    otherwise OSZICAR and the INCAR's NELM do (a killed run leaves a broken vasprun).
    """
    steps: list[int] = []
    osz = Path(zpath(os.path.join(directory, "OSZICAR")))
    if osz.exists():
        try:
            steps = scf_steps_from_oszicar(osz)
        except Exception:  # noqa: BLE001 - a half-written OSZICAR
            steps = []
    vr = os.path.join(directory, "vasprun.xml")
    if Path(vr).exists():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = load_vasprun(vr)
            if not steps:
                steps = [len(s["electronic_steps"]) for s in v.ionic_steps]
            return (not v.converged_electronic), steps
        except Exception:  # noqa: BLE001 - unreadable vasprun: decide from OSZICAR
            pass
    return (bool(steps) and steps[-1] >= nelm), steps


class MLStartFallbackHandler(ErrorHandler):
    """Restore the predicted CHGCAR after a failed attempt, then fall back to atoms.

    Parameters
    ----------
    max_ml_restarts
        How many reruns may start again from ``CHGCAR.ml`` before the ML start is
        abandoned (``ICHARG = 2``, CHGCAR deleted). 0: abandon at the first failure.

    Notes
    -----
    Put it after atomate2's default handlers (``UnconvergedErrorHandler`` changes
    ALGO first; this handler then decides which density the rerun starts from).
    It backs up the failed attempt (``error.N.tar.gz``) only when no other handler
    did, so :func:`~mlcharge_workflows.engines.vasp.parse.count_attempts` counts
    every SCF step once.
    """

    is_monitor = False
    raises_runtime_error = False

    def __init__(self, max_ml_restarts: int = 1) -> None:
        if max_ml_restarts < 0:
            raise ValueError(f"max_ml_restarts must be >= 0, got {max_ml_restarts}")
        self.max_ml_restarts = int(max_ml_restarts)

    def check(self, directory: str = "./") -> bool:
        """True if an ML-started attempt failed, or another handler changed ICHARG or
        deleted CHGCAR."""
        directory_p = Path(directory)
        record = read_ml_start_record(directory_p)
        if record is None or record.get("status") not in ACTIVE_STATUSES:
            return False
        incar = _incar(directory_p)
        if int(incar.get("ICHARG", 1)) != 1 or not _has_chgcar(directory_p):
            return True
        failed, _ = _scf_failed(str(directory), int(incar.get("NELM", 60)))
        return failed

    def correct(self, directory: str = "./") -> dict[str, Any]:
        """Restore ``CHGCAR.ml`` or abandon the ML start; record it in ``ml_start.json``."""
        directory_p = Path(directory)
        record = read_ml_start_record(directory_p) or new_ml_start_record({})
        incar = _incar(directory_p)
        icharg = int(incar.get("ICHARG", 1))
        failed, steps = _scf_failed(str(directory), int(incar.get("NELM", 60)))

        # keep the failed attempt for step counting, unless another handler already did
        if not is_backed_up(directory_p):
            backup(VASP_BACKUP_FILES, directory=str(directory_p))

        ml_copy = directory_p / record.get("ml_chgcar", ML_CHGCAR)
        event: dict[str, Any] = {
            "attempt": len(record["events"]) + 1,
            "scf_steps": steps,
            "scf_failed": failed,
            "icharg_found": icharg,
        }
        restore = False
        evidence = read_start_evidence(directory_p)
        if evidence.density_read is not None:
            event["start_evidence"] = evidence.status
        if evidence.density_read is False:
            # VASP threw the CHGCAR away (no/other PAW occupancies, other grid or cell):
            # restoring it would only be thrown away again
            reason = discarded_reason(evidence.as_dict())
        elif icharg != 1:
            reason = f"another custodian handler set ICHARG={icharg}"
        elif not _has_chgcar(directory_p):
            reason = (
                "another custodian handler deleted CHGCAR while ICHARG=1 (its fix restarts "
                "from a fresh density): the rerun starts from atoms"
            )
        elif not ml_copy.exists():
            reason = f"{ml_copy.name} is missing, the predicted density cannot be restored"
        elif record["ml_restarts"] < self.max_ml_restarts:
            reason = (
                f"SCF from the predicted density stopped at NELM "
                f"({steps[-1] if steps else '?'} steps): CHGCAR.ml restored"
            )
            restore = True
        else:
            reason = (
                f"SCF from the predicted density did not converge in "
                f"{record['ml_restarts'] + 1} attempt(s)"
            )
        if restore:
            actions = [{"file": ml_copy.name, "action": {"_file_copy": {"dest": "CHGCAR"}}}]
            record["ml_restarts"] += 1
            record["status"] = "restored"
            return _apply(directory_p, incar, record, event, reason, actions)
        return _abandon(directory_p, incar, record, event, reason)


def _apply(directory: Path, incar, record: dict[str, Any], event: dict[str, Any], reason: str,
           actions: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply a handler's ``actions`` and record them (``event``) in ``ml_start.json``."""
    event.update(action=record["status"], reason=reason)
    record["events"].append(event)
    VaspModder(vi={"INCAR": incar}, directory=str(directory)).apply_actions(actions)
    write_ml_start_record(record, directory)
    return {"errors": [f"ML start: {reason}"], "actions": actions}


def _abandon(directory: Path, incar, record: dict[str, Any], event: dict[str, Any],
             reason: str) -> dict[str, Any]:
    """Give up the ML start on purpose: the rerun starts from atoms (``ICHARG = 2``)."""
    actions = [
        {"dict": "INCAR", "action": {"_set": {"ICHARG": 2}}},
        {"file": "CHGCAR", "action": {"_file_delete": {"mode": "actual"}}},
    ]
    record["status"] = "abandoned"
    record["fallback"] = reason
    return _apply(directory, incar, record, event, reason, actions)


def _de_history(directory: Path) -> list[float]:
    """``|dE|`` (eV) of every electronic step of the last ionic step in OSZICAR so far."""
    from pymatgen.io.vasp import Oszicar

    osz = Path(zpath(str(directory / "OSZICAR")))
    if not osz.exists():
        return []
    try:
        steps = Oszicar(str(osz)).electronic_steps
    except Exception:  # noqa: BLE001 - a half-written line: look again at the next check
        return []
    return [abs(float(step["dE"])) for step in steps[-1]] if steps else []


class MLStartStallHandler(ErrorHandler):
    """Monitor: stop an ML-started VASP SCF that has stalled and fall back to atoms.

    The QE engine's stall stop for VASP (:class:`~mlcharge_workflows.convergence.StallRule`
    on the ``|dE|`` of OSZICAR's electronic steps, where pw.x's rule reads its "estimated
    scf accuracy"): custodian kills VASP, and the rerun starts from atoms (``ICHARG = 2``,
    CHGCAR deleted; ``ml_start.json``: status ``abandoned``, fallback ``stalled: ...``).
    Without it a stalled ML start runs to ``NELM``, and :class:`MLStartFallbackHandler`
    restores the predicted density for another full attempt first.

    Parameters
    ----------
    window, factor, min_iterations
        The :class:`~mlcharge_workflows.convergence.StallRule`.
    """

    is_monitor = True
    raises_runtime_error = False

    def __init__(self, window: int = StallRule.window, factor: float = StallRule.factor,
                 min_iterations: int = StallRule.min_iterations) -> None:
        self.window, self.factor, self.min_iterations = int(window), float(factor), int(min_iterations)
        self.rule = StallRule(self.window, self.factor, self.min_iterations)

    def check(self, directory: str = "./") -> bool:
        """True while an ML start is active and its current SCF counts as stalled."""
        record = read_ml_start_record(Path(directory))
        if record is None or record.get("status") not in ACTIVE_STATUSES:
            return False
        return self.rule.stalled_at(_de_history(Path(directory))) is not None

    def correct(self, directory: str = "./") -> dict[str, Any]:
        """Abandon the ML start (the killed attempt is backed up for step counting)."""
        directory_p = Path(directory)
        record = read_ml_start_record(directory_p) or new_ml_start_record({})
        history = _de_history(directory_p)
        at = self.rule.stalled_at(history) or len(history)
        if not is_backed_up(directory_p):
            backup(VASP_BACKUP_FILES, directory=str(directory_p))
        event: dict[str, Any] = {"attempt": len(record["events"]) + 1, "scf_steps": [len(history)],
                                 "scf_failed": True}
        reason = f"{STALLED}: {self.rule.describe(at, history, '|dE| (eV)')}"
        return _abandon(directory_p, _incar(directory_p), record, event, reason)
