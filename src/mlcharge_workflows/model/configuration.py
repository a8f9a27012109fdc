"""The atomic configuration of an atomic reference, and a foreign file's density in the
training configuration.

The learned deformation is relative to the atomic densities of the training
pseudopotentials, each the density of one atomic configuration (the registry's Fe:
``4s1 3d7``). Another file of the same element may describe another configuration
(pslibrary 0.2.1's semicore Fe: ``3s2 4s2 3p6 3d6``): its ``PP_RHOATOM`` plus the learned
deformation then starts one electron away from where the model learned to start
(docs/benchmarks.md, "ML start on other pseudopotentials").

:func:`run_references` gives the run's files as atomic references in the *training*
configuration: QE's atomic code ``ld1.x`` solves the foreign pseudopotential's own atom
(``iswitch=2``, its ultrasoft augmentation included) in the training configuration and in
the file's, and the reference is the file's ``PP_RHOATOM`` plus the difference of the two::

    rho_used = PP_RHOATOM + rho_ld1(training configuration) - rho_ld1(file configuration)

The shells the file has and the training file treats as core (semicore 3s 3p) keep the
file's occupations, so both ld1.x densities integrate to the file's valence and so does
``rho_used``: nothing is rescaled. ld1.x in the file's own configuration must reproduce
its ``PP_RHOATOM`` (checked, :data:`CONSISTENCY`); when it does not, when ld1.x is missing
or fails, or when the configurations cannot be matched, the file's own density is used
and the record says why (``identity["configuration"]["fallback"]``), never silently.

``MLCHARGE_REFERENCE_CONFIGURATION``: ``file`` (each file's own ``PP_RHOATOM``, the
default) or ``training`` (match). Matching is off by default because it did not save
iterations: with the semicore Fe file it brings the first SCF step's error close to the
registry file's, but the iteration counts of nine Fe cells did not improve (the
magnetisation and the core region cost them; docs/benchmarks.md, "ML start on other
pseudopotentials").
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcharge_workflows.model.atomic import AtomicDensityTable, AtomicReference

if TYPE_CHECKING:
    from mlcharge_workflows.density.sad import UPFAtomicDensity

#: Environment variable choosing the reference configuration (``training`` or ``file``).
ENV = "MLCHARGE_REFERENCE_CONFIGURATION"
MODES = ("training", "file")
#: Largest ``|F_ld1(q) - F_file(q)| / z_valence`` (q <= :data:`CHECK_Q_BOHR`) accepted for
#: ld1.x's density of the file's own configuration: above it ld1.x is not solving the atom
#: the file was made from, and its configuration difference is not used.
CONSISTENCY = 1e-3
CHECK_Q_BOHR = 10.0
#: Shells in the order the aufbau rule fills them (the core of ld1.x's all-electron atom).
_AUFBAU = ("1S 2S 2P 3S 3P 4S 3D 4P 5S 4D 5P 6S 4F 5D 6P 7S 5F 6D 7P").split()
_CAPACITY = {"S": 2, "P": 6, "D": 10, "F": 14}


@dataclass(frozen=True)
class Configuration:
    """Occupations of the valence shells of a pseudopotential's atom, in the file's order.

    ``shells`` is ``((label, occupation), ...)`` with labels like ``"4S"``, occupations as
    the file writes them: an unbound state (negative occupation, ld1.x's flag) counts as
    empty and is passed to ld1.x as written.
    """

    shells: tuple[tuple[str, float], ...]

    @property
    def occupations(self) -> dict[str, float]:
        """Electrons per shell (unbound states: 0)."""
        return {label: max(occ, 0.0) for label, occ in self.shells}

    @property
    def electrons(self) -> float:
        return float(sum(self.occupations.values()))

    def same_as(self, other: Configuration, tol: float = 1e-6) -> bool:
        """Whether every shell holds the same number of electrons (absent = empty)."""
        a, b = self.occupations, other.occupations
        return all(abs(a.get(k, 0.0) - b.get(k, 0.0)) <= tol for k in set(a) | set(b))

    def ld1(self) -> str:
        """ld1.x's notation (``"3s2 4s1 3p6 4p0 3d7"``)."""
        return " ".join(f"{label.lower()}{occ:g}" for label, occ in self.shells)

    def __str__(self) -> str:
        return " ".join(f"{label.lower()}{occ:g}" for label, occ in self.shells if occ > 0)


_LABEL = re.compile(r"^[1-7][SPDF]$")


def read_configuration(path: str | Path) -> Configuration:
    """The configuration of a UPF file's atom: the labels and occupations of ``PP_PSWFC``.

    UPF v2: the ``label``/``occupation`` attributes of each ``PP_CHI.i``; UPF v1: the
    ``4S 0 1.00 Wavefunction`` lines. ``ValueError`` when the file has none, a label is not
    of the ``nl`` form, or the occupations do not add up to ``z_valence`` (then they do not
    describe the neutral atom of ``PP_RHOATOM``).
    """
    from mlcharge_workflows.pseudo import read_upf_header

    path = Path(path)
    text = path.read_text(errors="replace")
    shells: dict[str, float] = {}
    v2 = re.findall(r"<PP_CHI\.\d+(\s[^>]*)>", text)
    if v2:
        for attrs in v2:
            a = dict(re.findall(r'(\w+)\s*=\s*["\']([^"\']*)["\']', attrs))
            label, occ = a.get("label", "").strip().upper(), a.get("occupation")
            if occ is None:
                raise ValueError(f"{path.name}: a PP_CHI has no occupation")
            shells[label] = shells.get(label, 0.0) + float(occ.replace("D", "E"))
    else:
        block = re.search(r"<PP_PSWFC>(.*?)</PP_PSWFC>", text, re.DOTALL)
        for m in re.finditer(r"^\s*(\w+)\s+\d+\s+([-+0-9.EeDd]+)\s+Wavefunction", block.group(1)
                             if block else "", re.MULTILINE):
            label = m.group(1).upper()
            shells[label] = shells.get(label, 0.0) + float(m.group(2).replace("D", "E"))
    if not shells:
        raise ValueError(f"{path.name}: no atomic wavefunctions (PP_PSWFC) to read a configuration from")
    bad = [label for label in shells if not _LABEL.match(label)]
    if bad:
        raise ValueError(f"{path.name}: wavefunction labels {bad} are not shells like '4S'")
    conf = Configuration(tuple(shells.items()))
    z = float(read_upf_header(path)["z_valence"])
    if abs(conf.electrons - z) > 1e-4:
        raise ValueError(
            f"{path.name}: its wavefunctions hold {conf.electrons:g} electrons ({conf}), its "
            f"valence is {z:g}: they do not describe the atom of its PP_RHOATOM"
        )
    return conf


def target_configuration(file: Configuration, training: Configuration) -> Configuration:
    """The file's shells with the training occupations of the shells both have.

    Shells only the file has (semicore 3s 3p) keep the file's occupations. ``ValueError``
    when the training configuration occupies a shell the file lacks (the file treats it as
    core) or the result would not hold the file's electron count.
    """
    occ, train = file.occupations, dict(training.shells)
    missing = [k for k, v in train.items() if v > 0 and k not in occ]
    if missing:
        raise ValueError(
            f"the training configuration ({training}) occupies {missing}, which the file "
            f"({file}) does not treat as valence"
        )
    out = Configuration(tuple((k, train[k] if train.get(k, -1.0) >= 0 else v) for k, v in file.shells))
    if abs(out.electrons - file.electrons) > 1e-6:
        raise ValueError(
            f"the training occupations ({training}) put {out.electrons:g} electrons in the "
            f"file's shells, the file has {file.electrons:g}"
        )
    return out


def _all_electron_config(element: str, valence: Configuration) -> str:
    """ld1.x ``config`` of the neutral atom: the core filled by the aufbau rule around the
    valence shells, then the valence shells."""
    from pymatgen.core import Element

    left = Element(element).Z - valence.electrons
    core = []
    for shell in _AUFBAU:
        if left <= 1e-9:
            break
        if shell in valence.occupations:
            continue
        n = min(_CAPACITY[shell[1]], left)
        core.append(f"{shell.lower()}{n:g}")
        left -= n
    if left > 1e-9:
        raise ValueError(f"{element}: {valence.electrons:g} valence electrons leave no room for the core")
    return " ".join(core + [valence.ld1()])


def _relativistic(text: str) -> int:
    """ld1.x's ``rel`` for a UPF: 0 (none) or 1 (scalar); ``ValueError`` for spin-orbit."""
    m = re.search(r'relativistic\s*=\s*["\']\s*(\w+)', text)
    kind = (m.group(1).lower() if m else "")
    if kind == "full" or re.search(r'has_so\s*=\s*["\']\s*(t|true|\.true\.)\s*["\']', text, re.I):
        raise ValueError("a fully relativistic (spin-orbit) file")
    if kind in ("no", "non", "nonrelativistic") or "Non-Relativistic" in text[:5000]:
        return 0
    return 1


@lru_cache(maxsize=64)
def _ld1_densities(digest: str, path: str, configs: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """``4πr²ρ`` of the file's pseudo-atom in each configuration (ld1.x, ``iswitch=2``).

    Cached by the file's checksum (``digest``) and the configurations.
    """
    from mlcharge_workflows.density.sad import read_upf_atomic_density
    from mlcharge_workflows.pseudo import read_upf_header, run_ld1

    src = Path(path)
    text = src.read_text(errors="replace")
    rel = _relativistic(text)
    element = read_upf_header(src)["element"].capitalize()
    out = []
    with tempfile.TemporaryDirectory(prefix="mlcharge-ld1-") as tmp:
        (Path(tmp) / "in.UPF").write_text(text)
        for i, conf in enumerate(configs):
            shells = Configuration(tuple(
                (s[:2].upper(), float(s[2:])) for s in conf.split()))
            inp = (
                f" &input\n   title='{element}', atom='{element}', rel={rel}, iswitch=2,\n"
                f"   config='{_all_electron_config(element, shells)}', prefix='c{i}'\n /\n"
                f" &test\n   file_pseudo='in.UPF', file_pseudopw='c{i}.UPF', nconf=1,\n"
                f"   configts(1)='{conf}'\n /\n"
            )
            run_ld1(inp, tmp)
            out.append(read_upf_atomic_density(Path(tmp) / f"c{i}.UPF").rho_atom.copy())
    return tuple(out)


def matched_density(path: str | Path, training: Configuration) -> tuple[UPFAtomicDensity, dict]:
    """The file's atomic density in the training configuration, and what was done.

    Returns the density (``PP_RHOATOM`` + ld1.x's configuration difference) and a record:
    ``file``, ``training``, ``used`` configurations, ``matched`` (True), ``method``,
    ``ld1_consistency`` (max ``|F_ld1 - F_file| / z`` in the file's own configuration),
    ``change`` (max ``|ΔF| / z``). Raises ``ValueError``/``RuntimeError``/
    ``FileNotFoundError`` when it cannot be done (:func:`run_references` records those).
    """
    from dataclasses import replace

    from mlcharge_workflows.density.sad import read_upf_atomic_density

    path = Path(path)
    atom = read_upf_atomic_density(path)
    own = read_configuration(path)
    used = target_configuration(own, training)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    rho_used, rho_own = _ld1_densities(digest, str(path), (used.ld1(), own.ld1()))
    if len(rho_used) != len(atom.rho_atom) or len(rho_own) != len(atom.rho_atom):
        raise RuntimeError(f"ld1.x wrote {path.name}'s density on another radial mesh")
    q = np.linspace(0.0, CHECK_Q_BOHR, 201)
    ld1_own = replace(atom, rho_atom=rho_own)
    consistency = float(np.max(np.abs(ld1_own.radial_transform(q) - atom.radial_transform(q))))
    consistency /= atom.z_valence
    if consistency > CONSISTENCY:
        raise ValueError(
            f"ld1.x does not reproduce {path.name}'s PP_RHOATOM in its own configuration "
            f"({own}): max |ΔF(q)| = {consistency:.2e} of the valence (limit {CONSISTENCY:g})"
        )
    new = replace(atom, rho_atom=atom.rho_atom + (rho_used - rho_own))
    change = float(np.max(np.abs(new.radial_transform(q) - atom.radial_transform(q)))) / atom.z_valence
    return new, {
        "file": str(own), "training": str(training), "used": str(used), "matched": True,
        "method": "PP_RHOATOM + ld1.x(training configuration) - ld1.x(file configuration)",
        "ld1_consistency": consistency, "change": change,
    }


# ------------------------------------------------------------- the training configuration
def _table_row_matches(table: AtomicDensityTable, element: str, path: Path) -> bool:
    """Whether ``path``'s ``PP_RHOATOM`` is the table's row (0.1 % of the valence)."""
    ref = AtomicReference.from_upf(path)
    same = table.with_references({element: ref}).compare(table, [element])[element]
    return not same["differs_from_training"]


_TRAINING_FILES: dict[tuple[str, str], Path] = {}


def training_file(table: AtomicDensityTable, element: str) -> Path:
    """The UPF file the training row of ``element`` was built from.

    The weights store the table, not file names; it is the registry's file (what
    ``training/train.py`` builds the table from unless records name other files), checked
    against the row. ``ValueError`` when the row is not that file's density.
    """
    from mlcharge_workflows.pseudo import get_pseudo

    key = (table.fingerprint(element), element)
    if key not in _TRAINING_FILES:
        path = Path(get_pseudo(element, validated_only=False).source)
        if not _table_row_matches(table, element, path):
            raise ValueError(
                f"the model's {element} reference is not the registry's {path.name} (the "
                "weights name no other file), so its atomic configuration is unknown"
            )
        _TRAINING_FILES[key] = path
    return _TRAINING_FILES[key]


def reference_mode(mode: str | None = None) -> str:
    """The argument, else ``MLCHARGE_REFERENCE_CONFIGURATION``, else ``"file"``."""
    value = mode or os.environ.get(ENV) or "file"
    if value not in MODES:
        raise ValueError(f"{ENV} must be one of {MODES}, got {value!r}")
    return value


def run_references(
    table: AtomicDensityTable, files: dict[str, str | Path], mode: str | None = None
) -> dict[str, AtomicReference | Path]:
    """The run's UPF files as atomic references, in the training configuration where theirs
    differs (see the module docstring); ``identity["configuration"]`` records per element
    ``file``/``training``/``used`` configurations, ``matched`` and, when the file's own
    density had to be used although the configurations differ, ``fallback`` (why).

    Files identical to the training file are used as they are, with no ld1.x run. An
    element the table does not know is passed through as its path (:meth:`with_references`
    refuses it; a partial start gives it its own density).
    """
    mode = reference_mode(mode)
    out: dict[str, AtomicReference | Path] = {}
    for el, path in files.items():
        path = Path(path)
        if el not in table.elements:
            out[el] = path  # refused (or given its reference alone) by the caller
            continue
        record: dict[str, Any] = {"mode": mode, "matched": False}
        atom = None
        try:
            train_path = training_file(table, el)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            train_path, record["training_unknown"] = None, str(err)
        if train_path is not None and _sha(train_path) != _sha(path):
            try:
                own, train = read_configuration(path), read_configuration(train_path)
                record.update(file=str(own), training=str(train), used=str(own))
                if not own.same_as(train):
                    if mode == "file":
                        record["fallback"] = f"configurations differ, matching off ({ENV}=file)"
                    else:
                        atom, record = matched_density(path, train)
                        record["mode"] = mode
            except (ValueError, RuntimeError, FileNotFoundError, OSError) as err:
                record["fallback"] = f"file's own PP_RHOATOM used: {err}"
        out[el] = AtomicReference.from_upf(path, atom=atom, configuration=record)
    return out


@lru_cache(maxsize=256)
def _sha_cached(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sha(path: Path) -> str:
    st = path.stat()
    return _sha_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)
