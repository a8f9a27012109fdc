"""The workflows of the package, by engine and kind: the one place an engine is chosen.

>>> ENGINES, FLOWS
(('qe', 'vasp'), ('compare', 'ml-static', 'ml-bands'))

``mlcharge compare`` (:mod:`mlcharge_workflows.compare`) and ``mlcharge submit``
(:mod:`mlcharge_workflows.submit`) both build their flows here. Engine packages are
imported on use: the VASP one needs the ``vasp`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobflow import Flow, Job
    from pymatgen.core import Structure

    from mlcharge_workflows.common.flows import BaseComparisonMaker
    from mlcharge_workflows.engines.qe.sets import QEProtocol

ENGINES = ("qe", "vasp")
FLOWS = ("compare", "ml-static", "ml-bands")


def check_engine(engine: str) -> None:
    """Raise ``ValueError`` naming the choices for an unknown engine."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")


def read_protocol_fields(source: str | Path) -> dict[str, Any]:
    """QE protocol fields from a JSON/YAML file, or from inline JSON/YAML text.

    Raises
    ------
    ValueError
        Neither a readable file nor valid JSON/YAML, or not a mapping.
    """
    import yaml

    text = str(source)
    try:  # a Path is always a file; a string is a file if one exists by that name
        is_file = isinstance(source, Path) or (
            not text.lstrip().startswith("{") and Path(text).is_file())
    except OSError:  # e.g. an inline JSON longer than a file name may be
        is_file = False
    try:
        data = yaml.safe_load(Path(text).read_text() if is_file else text)  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"protocol {text!r} is neither a readable file nor valid JSON/YAML: "
                         f"{exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"protocol {text!r} must give a mapping of QEProtocol fields, got {data!r}")
    return data


def parse_pseudo_options(values: list[str] | None) -> dict[str, str]:
    """``["Si=/path/Si.UPF", ...]`` (the repeatable ``--pseudo EL=FILE``) as a dict.

    >>> parse_pseudo_options(["Si=Si.pbe-nl-rrkjus_psl.1.0.0.UPF"])
    {'Si': 'Si.pbe-nl-rrkjus_psl.1.0.0.UPF'}
    """
    out: dict[str, str] = {}
    for value in values or []:
        el, sep, path = value.partition("=")
        el, path = el.strip(), path.strip()
        if not sep or not el or not path:
            raise ValueError(f"--pseudo {value!r}: expected ELEMENT=FILE, e.g. Si=Si.pbe-n-rrkjus.UPF")
        if el in out and out[el] != path:
            raise ValueError(f"--pseudo names two files for {el}: {out[el]} and {path}")
        out[el] = path
    return out


def with_pseudo_options(fields: dict | None, pseudo: list[str] | None) -> dict | None:
    """Protocol ``fields`` with the ``--pseudo EL=FILE`` values merged into
    ``pseudopotentials`` (None when neither gives anything)."""
    files = parse_pseudo_options(pseudo)
    if not files:
        return fields
    fields = dict(fields or {})
    fields["pseudopotentials"] = {**(fields.get("pseudopotentials") or {}), **files}
    return fields


def qe_protocol(protocol: QEProtocol | dict | None, pseudo: list[str] | dict | None = None) -> QEProtocol:
    """A :class:`QEProtocol` from itself, a dict of its fields (validated) or None (defaults).

    ``pseudo`` (``--pseudo EL=FILE`` values or ``{element: UPF path}``) is merged into the
    protocol's ``pseudopotentials`` (it wins over the protocol's file for the same element).

    Raises
    ------
    ValueError
        Unknown fields (named, with the known ones) or invalid values.
    """
    from pydantic import ValidationError

    from mlcharge_workflows.engines.qe.sets import QEProtocol
    from mlcharge_workflows.validation import check_known_fields

    if pseudo:
        if isinstance(protocol, QEProtocol):
            protocol = protocol.model_dump()
        files = [f"{el}={path}" for el, path in pseudo.items()] if isinstance(pseudo, dict) else pseudo
        protocol = with_pseudo_options(protocol, files)
    if protocol is None or isinstance(protocol, QEProtocol):
        return protocol or QEProtocol()
    try:  # a typo is refused with the nearest field named, never silently ignored
        check_known_fields(protocol, QEProtocol.model_fields, "QE protocol")
    except ValueError as exc:
        raise ValueError(f"invalid QE protocol override: {exc}") from None
    try:
        return QEProtocol(**protocol)
    except (ValidationError, TypeError) as exc:
        raise ValueError(f"invalid QE protocol override {protocol}: {exc}") from None


def comparison_maker(
    engine: str = "qe",
    oracle: bool = False,
    nscf: bool = False,
    model_path: str | None = None,
    nprocs: int | None = None,
    protocol: QEProtocol | dict | None = None,
    ml_fworker: str | None = None,
) -> BaseComparisonMaker:
    """The comparison Maker of ``engine`` (``protocol``: QE only; ``nprocs``: QE MPI ranks)."""
    check_engine(engine)
    manager = {"_fworker": ml_fworker} if ml_fworker else {}
    common = dict(oracle=oracle, nscf=nscf, model_path=model_path, predict_manager_config=manager)
    if engine == "qe":
        from mlcharge_workflows.engines.qe.flows import QEComparisonMaker

        return QEComparisonMaker(protocol=qe_protocol(protocol), nprocs=nprocs, **common)
    if protocol:
        raise ValueError("--protocol overrides QE protocol fields; it does not apply to VASP")
    try:
        from mlcharge_workflows.engines.vasp.flows import VaspComparisonMaker
    except ImportError as exc:
        raise ValueError(f"the VASP comparison flow is not available: {exc}") from exc
    return VaspComparisonMaker(**common)


def comparison_flow(
    structure: Structure,
    engine: str = "qe",
    label: str | None = None,
    oracle: bool = False,
    nscf: bool = False,
    model_path: str | None = None,
    nprocs: int | None = None,
    protocol: QEProtocol | dict | None = None,
) -> Flow:
    """The comparison flow of one structure (its output is the savings document)."""
    maker = comparison_maker(engine, oracle=oracle, nscf=nscf, model_path=model_path,
                             nprocs=nprocs, protocol=protocol)
    return maker.make(structure, label=label)


def build_flow(structure: Structure, engine: str, flow: str, label: str, **options: Any) -> Flow:
    """The jobflow Flow of kind ``flow`` for one structure.

    * ``compare``: baseline vs ML start and a savings document (``oracle``, ``nscf``);
    * ``ml-static``: predict the density, then one ML-initialised static run;
    * ``ml-bands``: ``ml-static`` followed by a line-mode band structure on its density.

    Options common to all: ``nprocs`` (QE MPI processes), ``model_path``, ``protocol``
    (QE: a :class:`~mlcharge_workflows.engines.qe.sets.QEProtocol` or a dict of its
    fields), ``ml_fworker`` (FireWorks worker name that must run the prediction job,
    e.g. ``"gpu"``).
    """
    check_engine(engine)
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; choose one of {FLOWS}")
    # fail at submission, not hours later on a worker (nor in spglib: both engines)
    if engine == "qe":
        from mlcharge_workflows.pseudo import check_structure

        options["protocol"] = qe_protocol(options.get("protocol"))
        user_files = options["protocol"].pseudopotentials
    else:
        from mlcharge_workflows.validation import validate_structure as check_structure

        user_files = None
    try:
        check_structure(structure, user_files) if user_files else check_structure(structure)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None
    return _BUILDERS[flow](structure, engine, label, **options)


def _compare(structure: Structure, engine: str, label: str, **options: Any) -> Flow:
    maker = comparison_maker(
        engine, oracle=bool(options.get("oracle")), nscf=bool(options.get("nscf")),
        model_path=options.get("model_path"), nprocs=options.get("nprocs"),
        protocol=options.get("protocol") if engine == "qe" else None,
        ml_fworker=options.get("ml_fworker"),
    )
    return maker.make(structure, label=label)


def _ml_static_jobs(structure: Structure, engine: str, options: dict[str, Any]) -> list[Job]:
    """[predict, ML static] for either engine; the static's output has ``dir_name``."""
    manager = {"_fworker": options["ml_fworker"]} if options.get("ml_fworker") else {}
    if engine == "qe":
        from mlcharge_workflows.engines.qe.jobs import MLQEStaticMaker, QEPredictDensityMaker

        protocol = qe_protocol(options.get("protocol"))
        predict = QEPredictDensityMaker(protocol=protocol, model_path=options.get("model_path"),
                                        manager_config=manager).make(structure)
        static = MLQEStaticMaker(protocol=protocol, nprocs=options.get("nprocs")).make(
            structure, prediction=predict.output)
    else:
        from mlcharge_workflows.engines.vasp.jobs import MLDensityMaker, MLStaticMaker

        static_maker = MLStaticMaker()
        predict = MLDensityMaker(input_set_generator=static_maker.input_set_generator,
                                 model_path=options.get("model_path")).make(structure)
        if manager:
            predict.update_config({"manager_config": manager})
        static = static_maker.make(structure, ml_density=predict.output)
    return [predict, static]


def _ml_static(structure: Structure, engine: str, label: str, **options: Any) -> Flow:
    from jobflow import Flow

    predict, static = _ml_static_jobs(structure, engine, options)
    return Flow([predict, static], output=static.output, name=f"{engine} ml static {label}")


def _ml_bands(structure: Structure, engine: str, label: str, **options: Any) -> Flow:
    from jobflow import Flow

    predict, static = _ml_static_jobs(structure, engine, options)
    if engine == "qe":
        from mlcharge_workflows.engines.qe.jobs import QENonSCFMaker
        from mlcharge_workflows.engines.qe.sets import default_nbnd

        protocol = qe_protocol(options.get("protocol"))
        bands = QENonSCFMaker(name="qe bands", mode="line", nbnd=default_nbnd(structure, protocol),
                              protocol=protocol,
                              nprocs=options.get("nprocs")).make(structure, static.output.dir_name)
    else:
        from atomate2.vasp.jobs.core import NonSCFMaker

        bands = NonSCFMaker().make(structure, prev_dir=static.output.dir_name, mode="line")
    return Flow([predict, static, bands], output=bands.output, name=f"{engine} ml bands {label}")


_BUILDERS: dict[str, Callable[..., Flow]] = {
    "compare": _compare, "ml-static": _ml_static, "ml-bands": _ml_bands,
}
