"""The ML-started VASP static: atomate2's ``StaticMaker`` from a predicted CHGCAR.

:class:`MLStaticMaker` copies the predicted CHGCAR in, sets ``ICHARG = 1``, pins
``NGXF/NGYF/NGZF``, keeps ``CHGCAR.ml`` and adds
:class:`~mlcharge_workflows.engines.vasp.handlers.MLStartFallbackHandler` (a failed SCF is
rerun from ``CHGCAR.ml``, then from atoms). A converged run the
:class:`~mlcharge_workflows.common.fallback.FallbackPolicy` distrusts is kept and replaced
by :class:`~mlcharge_workflows.engines.vasp.baseline.MLFallbackStaticMaker`. Without
``ml_density`` the job replaces itself by predict + static, so it drops into atomate2
flows that call ``static_maker.make(structure, prev_dir=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomate2.vasp.jobs.base import vasp_job
from atomate2.vasp.jobs.core import StaticMaker
from jobflow import Response
from pymatgen.core import Structure

from mlcharge_workflows.common.fallback import FallbackPolicy, RunSummary
from mlcharge_workflows.engines.vasp.base import annotate_attempts, copy_maker
from mlcharge_workflows.engines.vasp.baseline import MLFallbackStaticMaker, donor_record, with_donor
from mlcharge_workflows.engines.vasp.handlers import (
    ACTIVE_STATUSES,
    ML_CHGCAR,
    MLStartFallbackHandler,
    MLStartStallHandler,
    new_ml_start_record,
    record_start_evidence,
    write_ml_start_record,
)
from mlcharge_workflows.engines.vasp.parse import task_field, task_magnetization, task_successful
from mlcharge_workflows.engines.vasp.placement import NO_PAW_OCCUPANCIES, add_paw_occupancies
from mlcharge_workflows.engines.vasp.predict import MLDensityMaker, density_path, predict_then
from mlcharge_workflows.engines.vasp.predict import prediction_info
from mlcharge_workflows.engines.vasp.start import (
    check_paw_mode,
    place_ml_start,
    store_ml_start_record,
)
from mlcharge_workflows.engines.vasp.sets import (
    BASELINE_START_INCAR,
    ML_START_INCAR,
    grid_incar,
    input_fine_grid,
    input_set,
    potcar_functional,
    with_incar,
)

__all__ = ["MLStaticMaker"]


@dataclass
class MLStaticMaker(StaticMaker):
    """atomate2 static SCF started from a predicted (or any given) CHGCAR.

    Parameters
    ----------
    density_maker
        Used when ``make`` gets no ``ml_density`` (the job replaces itself by a
        prediction job followed by this static); None forbids that.
    max_ml_restarts
        Reruns from ``CHGCAR.ml`` after a failed SCF before falling back to atoms.
    zval
        Per-element valence overriding the POTCAR table (electron-count normalisation).
    fallback_policy
        Its stall rule stops an ML-started SCF that has stalled (custodian monitor
        :class:`~mlcharge_workflows.engines.vasp.handlers.MLStartStallHandler`, added to
        the handlers; ``stall_window=None``: none). When a converged ML-started run is distrusted: a different magnetic state or
        energy than ``reference`` (the same static from atoms), or, without a reference,
        a different magnetic state than the predicted density's. A distrusted run is kept
        in the store and rerun from atoms by :class:`MLFallbackStaticMaker`, which
        replaces this job (its output is the rerun, with the rejected attempt recorded).
    paw_occupancies
        Where the PAW occupancies VASP needs come from (a prediction has none, and VASP
        discards a CHGCAR without them for PAW POTCARs): ``"auto"`` (default) those the
        CHGCAR already has (copied from ``prev_dir`` by the prediction, or a VASP CHGCAR's),
        else a one-step donor run's (:class:`OccupancyDonorMaker`, run first: this job
        replaces itself by [occupancy donor, ml static]; its steps and wall time count for
        the ML arm); ``"prev_dir"`` only the CHGCAR's own, else the ML start is refused
        and the run starts from atoms (``fallback = "no_paw_occupancies: ..."``);
        ``"donor"`` always a donor's; ``"none"`` the file as placed (VASP then discards it
        and the run's OUTCAR/stdout record that). Runs on non-PAW POTCARs need none.
    """

    name: str = "ml static"
    density_maker: MLDensityMaker | None = field(default_factory=MLDensityMaker)
    max_ml_restarts: int = 1
    zval: dict[str, float] | None = None
    fallback_policy: FallbackPolicy = field(default_factory=FallbackPolicy)
    paw_occupancies: str = "auto"

    @vasp_job
    def make(
        self,
        structure: Structure,
        prev_dir: str | Path | None = None,
        ml_density: Any = None,
        reference: Any = None,
        occupancy_donor: Any = None,
    ) -> Response:
        """Run the static from ``ml_density`` (CHGCAR path, run folder or MLDensityDocument).

        ``reference``: the same static run from atoms (a TaskDoc, or a dict with
        ``energy_eV`` and ``total_magnetization``), against which the ML-started result
        is checked (see ``fallback_policy``). ``occupancy_donor``: the folder (or task
        document) of an :class:`OccupancyDonorMaker` run whose PAW occupancies go into
        the CHGCAR (see ``paw_occupancies``).
        """
        check_paw_mode(self.paw_occupancies)
        if ml_density is None:
            return predict_then(self, structure, prev_dir, reference=reference)
        source = density_path(ml_density)
        if source is None:  # no ML start: run from atoms, say why
            return self._from_atoms(structure, prev_dir, ml_density)
        gen = with_incar(self.input_set_generator, ML_START_INCAR)
        vis = input_set(gen, structure, prev_dir)
        shape = input_fine_grid(vis)
        functional = potcar_functional(gen)
        names = ("CHGCAR", ML_CHGCAR)
        placed, action, donor = place_ml_start(source, vis, functional, ml_density,
                                               occupancy_donor, self.paw_occupancies,
                                               self.zval, names)
        if action in ("donor", "refuse"):
            for name in names:
                Path(name).unlink(missing_ok=True)
            if action == "donor":  # the reference travels as its two numbers, not a TaskDoc
                energy, mag = _reference_values(reference)
                ref = None if reference is None else {"energy_eV": energy,
                                                      "total_magnetization": mag}
                return with_donor(self, structure, prev_dir, ml_density, reference=ref)
            note = placed.get("paw_occupancies_note") or "no occupancy source"
            return self._from_atoms(structure, prev_dir, ml_density, reason=(
                f"{NO_PAW_OCCUPANCIES}: the CHGCAR has no PAW occupancies and "
                f"paw_occupancies='prev_dir' allows no donor run ({note}); VASP would discard it"))
        record = new_ml_start_record(placed, self.max_ml_restarts)
        if action == "merge":
            try:
                summary = add_paw_occupancies(donor, vis, ".", names)
            except (OSError, ValueError) as err:  # a donor without usable occupancies
                for name in names:
                    Path(name).unlink(missing_ok=True)
                return self._from_atoms(structure, prev_dir, ml_density, reason=(
                    f"{NO_PAW_OCCUPANCIES}: the occupancy donor's CHGCAR lends none ({err})"),
                    donor=donor)
            record["density"]["paw_occupancies"] = {**summary, "how": "donor"}
            record["density"]["has_paw_occupancies"] = True
            record["occupancy_donor"] = donor_record(donor)
        write_ml_start_record(record)
        maker = copy_maker(self, with_incar(gen, grid_incar(shape)))
        handlers = maker.run_vasp_kwargs.get("handlers")
        if handlers is None:
            from atomate2.vasp.run import DEFAULT_HANDLERS

            handlers = DEFAULT_HANDLERS
        handlers = [h for h in handlers if not isinstance(h, (MLStartFallbackHandler, MLStartStallHandler))]
        rule = self.fallback_policy.stall_rule()
        stall = [] if rule is None else [MLStartStallHandler(rule.window, rule.factor, rule.min_iterations)]
        fallback = MLStartFallbackHandler(self.max_ml_restarts)
        maker.run_vasp_kwargs["handlers"] = [*handlers, *stall, fallback]
        response = super(MLStaticMaker, maker).make.original(maker, structure, prev_dir)
        _gzip_ml_copy()
        response = _apply_start_evidence(annotate_attempts(response))
        return self._check_result(response, structure, prev_dir, ml_density, reference)

    def _check_result(
        self, response: Response, structure: Structure, prev_dir: Any, ml_density: Any,
        reference: Any,
    ) -> Response:
        """Accept the ML-started result, or keep it and replace this job by a rerun from atoms."""
        doc = response.output
        extra = dict(getattr(doc, "additional_json", None) or {})
        record = extra.get("ml_start") or {}
        if doc is None or record.get("status") not in ACTIVE_STATUSES:
            return response  # the handler already abandoned the ML start (run from atoms)
        ref_energy, ref_mag = _reference_values(reference)
        reason = self.fallback_policy.check(
            RunSummary(
                converged=task_successful(doc),
                scf_iterations=sum(a["scf_iterations"] for a in extra.get("scf_attempts", [])),
                energy_eV=task_field(doc, "output", "energy"),
                total_magnetization=task_magnetization(doc),
            ),
            n_atoms=len(structure),
            reference_energy_eV=ref_energy,
            reference_magnetization=ref_mag,
            predicted_magnetization=task_field(ml_density, "total_magnetization"),
        )
        if reason is None:
            return response
        record = dict(record)
        record["events"] = [*record.get("events", []), {
            "attempt": len(record.get("events", [])) + 1, "action": "rejected", "reason": reason,
        }]
        record.update(status="rejected", fallback=reason)
        write_ml_start_record(record)
        extra["ml_start"] = record
        doc.additional_json = extra
        rerun_maker = copy_maker(
            MLFallbackStaticMaker(name=f"{self.name} rerun from atoms"),
            self.input_set_generator,
        )
        for attr in ("run_vasp_kwargs", "task_document_kwargs", "write_input_set_kwargs"):
            getattr(rerun_maker, attr).update(getattr(self, attr))
        rejected = {
            "record": record,
            "scf_attempts": extra.get("scf_attempts", []),
            "dir_name": doc.dir_name,
            "energy_eV": task_field(doc, "output", "energy"),
            "total_magnetization": task_magnetization(doc),
        }
        rerun = rerun_maker.make(structure, prev_dir=prev_dir, rejected=rejected)
        return Response(output=doc, replace=rerun)

    def _from_atoms(
        self, structure: Structure, prev_dir: Any, ml_density: Any, reason: str | None = None,
        donor: str | None = None,
    ) -> Response:
        gen = with_incar(self.input_set_generator, BASELINE_START_INCAR)
        shape = input_fine_grid(input_set(gen, structure, prev_dir))
        info = prediction_info(ml_density)
        record = new_ml_start_record(info, 0)
        if donor is not None:  # paid for, though it lent nothing
            record["occupancy_donor"] = donor_record(donor)
        reason = reason or info.get("fallback") or f"prediction failed: {info.get('error')}"
        record.update(status="abandoned", fallback=reason, start="atomic")
        write_ml_start_record(record)
        for stale in ("CHGCAR", "WAVECAR"):
            Path(stale).unlink(missing_ok=True)
        maker = copy_maker(self, with_incar(gen, grid_incar(shape)))
        return annotate_attempts(super(MLStaticMaker, maker).make.original(maker, structure, prev_dir))


def _apply_start_evidence(response: Response) -> Response:
    """Record what VASP's OUTCAR/stdout say about the start; abandon a discarded ML start.

    VASP echoes ``ICHARG = 1`` in vasprun.xml even when it threw the CHGCAR away and
    started from atoms, so only its OUTCAR and stdout tell (``record_start_evidence``).
    """
    doc = response.output
    if doc is None:
        return response
    extra = dict(getattr(doc, "additional_json", None) or {})
    record = extra.get("ml_start")
    if record is None:
        return response
    return store_ml_start_record(response, record_start_evidence(record, extra.get("scf_attempts") or []))


def _reference_values(reference: Any) -> tuple[float | None, float | None]:
    """(energy in eV, total magnetisation in μB/cell) of a reference TaskDoc or dict."""
    if reference is None:
        return None, None
    if isinstance(reference, dict) and ("energy_eV" in reference or "total_magnetization" in reference):
        energy, mag = reference.get("energy_eV"), reference.get("total_magnetization")
    else:
        energy, mag = task_field(reference, "output", "energy"), task_magnetization(reference)
        if task_successful(reference) is False:
            return None, None  # an unconverged baseline is no reference
    return (None if energy is None else float(energy)), (None if mag is None else float(mag))


def _gzip_ml_copy() -> None:
    """Compress CHGCAR.ml once the run is over (atomate2 only zips VASP's own files)."""
    from atomate2 import SETTINGS
    from monty.shutil import compress_file

    if SETTINGS.VASP_ZIP_FILES and Path(ML_CHGCAR).exists():
        compress_file(ML_CHGCAR)
