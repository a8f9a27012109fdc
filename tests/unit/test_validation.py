"""One structure validation: named errors for non-finite, degenerate, empty, overlapping cells.

The fuzz tests feed random lattices and coordinates (NaN/inf, overlaps, empty cells, skewed
and huge cells) through :func:`validate_structure`: it either accepts the structure or raises
a :class:`StructureError` naming the lattice vector or site; it never raises anything else
and never hangs. Accepted structures are checked against pymatgen's own neighbour search.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from mlcharge_workflows.validation import (
    MAX_LATTICE_LENGTH,
    MIN_DISTANCE,
    MIN_VOLUME_PER_ATOM,
    StructureError,
    read_structure,
    validate_structure,
)


def test_same_limit_as_pseudo_check():
    from mlcharge_workflows import pseudo

    assert pseudo.MIN_DISTANCE is MIN_DISTANCE
    close = Structure(Lattice.cubic(5.0), ["Si", "Si"], [[0, 0, 0], [0.06, 0, 0]])  # 0.3 Å
    for check in (validate_structure, pseudo.check_structure):
        with pytest.raises(ValueError, match=r"sites 0 \(Si\) and 1 \(Si\) are 0.300 Å apart"):
            check(close)


def test_valid_cell_passes(si):
    validate_structure(si)


@pytest.mark.parametrize(
    ("lattice", "coords", "species", "match"),
    [
        (np.eye(3) * 4, [[0, 0, 0], [np.nan, 0.2, 0.2]], ["Si", "Si"], r"site 1 \(Si\) has non-finite"),
        (np.eye(3) * 4, [[np.inf, 0, 0]], ["Si"], r"site 0 \(Si\) has non-finite"),
        ([[np.inf, 0, 0], [0, 4, 0], [0, 0, 4]], [[0, 0, 0]], ["Si"], r"lattice vector a = .* not finite"),
        ([[4, 0, 0], [0, np.nan, 0], [0, 0, 4]], [[0, 0, 0]], ["Si"], r"lattice vector b = .* not finite"),
        ([[4, 0, 0], [4, 0, 0], [0, 0, 4]], [[0, 0, 0]], ["Si"], r"cell volume is 0 Å³"),
        ([[4, 0, 0], [0, 4, 0], [0, 0, 0]], [[0, 0, 0]], ["Si"], r"lattice vector c is 0 Å long"),
        ([[4, 0, 0], [0, 4, 0], [0, 0, 0.3]], [[0, 0, 0]], ["Si"], r"lattice vector c is 0.3 Å long: every atom is closer than 0.5 Å"),
        ([[4, 0, 0], [0, 4, 0], [0, 0, 2e4]], [[0, 0, 0]], ["Si"], r"lattice vector c is 2e\+04 Å long"),
        (np.eye(3) * 0.55, [[0, 0, 0], [0.5, 0.5, 0.5]], ["Si", "Si"], r"Å³ per atom"),
        (np.eye(3) * 4, [[0, 0, 0], [0.99, 0, 0]], ["Si", "O"], r"sites 0 \(Si\) and 1 \(O\) are 0.040 Å apart"),
        # a skewed cell whose vectors are long but whose lattice holds a short vector
        ([[4, 0, 0], [0, 4, 0], [400, 0, 0.3]], [[0, 0, 0]], ["Si"], r"lattice vector 0.3 Å long"),
    ],
)
def test_named_errors(lattice, coords, species, match):
    s = Structure(Lattice(lattice), species, coords)
    with pytest.raises(StructureError, match=match):
        validate_structure(s)


def test_empty_and_disordered():
    with pytest.raises(StructureError, match="no atoms"):
        validate_structure(Structure(Lattice.cubic(4), [], []))
    dis = Structure(Lattice.cubic(4), [{"Si": 0.5, "Ge": 0.5}], [[0, 0, 0]])
    with pytest.raises(StructureError, match=r"site 0 .* partially occupied"):
        validate_structure(dis)


def test_read_structure_names_file(tmp_path):
    missing = tmp_path / "nope.vasp"
    with pytest.raises(StructureError, match="does not exist"):
        read_structure(missing)
    junk = tmp_path / "POSCAR"
    junk.write_text("this is not a structure\n")
    with pytest.raises(StructureError, match=f"cannot read structure file {junk}"):
        read_structure(junk)
    nan = tmp_path / "nan.vasp"
    nan.write_text("Si\n1.0\n4 0 0\n0 4 0\n0 0 4\nSi\n2\nDirect\n0 0 0\nnan 0.5 0.5\n")
    with pytest.raises(StructureError, match=rf"{nan}: site 1 \(Si\) has non-finite"):
        read_structure(nan)


def _pymatgen_min_distance(s: Structure) -> float:
    _, _, _, d = s.get_neighbor_list(MIN_DISTANCE * 1.0001)
    return float(d.min()) if len(d) else math.inf


FLOATS = st.one_of(
    st.floats(-12, 12, allow_nan=False),
    st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e-9, 1e6, 3.0]),
)
COORDS = st.one_of(
    st.floats(-2, 2, allow_nan=False),
    st.sampled_from([np.nan, np.inf, 0.0, 0.5, 1e12]),
)


@settings(max_examples=400, deadline=2000, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    lattice=st.lists(FLOATS, min_size=9, max_size=9),
    scale=st.sampled_from([1.0, 1.0, 0.05, 40.0]),
    frac=st.lists(st.lists(COORDS, min_size=3, max_size=3), min_size=0, max_size=6),
    duplicate=st.booleans(),
)
def test_fuzz_validation_never_crashes(lattice, scale, frac, duplicate):
    m = np.array(lattice, dtype=float).reshape(3, 3) * scale
    if duplicate and frac:
        frac = [*frac, [c + 1e-3 for c in frac[0]]]  # a near-overlap
    species = ["Si"] * len(frac)
    with np.errstate(all="ignore"):
        try:
            s = Structure(Lattice(m), species, frac) if frac else Structure(Lattice(m), [], [])
        except Exception:  # pymatgen refuses it itself: not our concern  # noqa: BLE001
            return
    try:
        validate_structure(s)
    except StructureError as exc:
        msg = str(exc)
        assert any(w in msg for w in ("site", "lattice vector", "volume", "no atoms")), msg
        return
    # accepted: it must really be a sane cell
    assert len(s) > 0
    assert np.all(np.isfinite(s.lattice.matrix)) and np.all(np.isfinite(s.frac_coords))
    assert s.volume / len(s) >= MIN_VOLUME_PER_ATOM
    assert max(s.lattice.abc) <= MAX_LATTICE_LENGTH
    assert _pymatgen_min_distance(s) >= MIN_DISTANCE - 1e-9


@settings(max_examples=150, deadline=2000, database=None, derandomize=True)
@given(
    a=st.floats(2, 9), b=st.floats(2, 9), c=st.floats(2, 9),
    alpha=st.floats(50, 130), beta=st.floats(50, 130), gamma=st.floats(50, 130),
    frac=st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=1, max_size=5),
)
def test_fuzz_distance_agrees_with_pymatgen(a, b, c, alpha, beta, gamma, frac):
    """Random valid-looking cells: accepted iff pymatgen finds no pair closer than the limit."""
    try:
        lat = Lattice.from_parameters(a, b, c, alpha, beta, gamma)
    except Exception:  # noqa: BLE001 - impossible angle combination
        return
    if not np.all(np.isfinite(lat.matrix)) or lat.volume < 1:
        return
    s = Structure(lat, ["Si"] * len(frac), frac)
    closest = _pymatgen_min_distance(s)
    if abs(closest - MIN_DISTANCE) < 1e-6 or s.volume / len(s) < MIN_VOLUME_PER_ATOM:
        return
    if closest < MIN_DISTANCE:
        with pytest.raises(StructureError, match="apart|lattice vector"):
            validate_structure(s)
    else:
        validate_structure(s)


@pytest.mark.parametrize("engine", ["qe", "vasp"])
def test_build_flow_validates_for_every_engine(engine, si):
    from mlcharge_workflows.catalogue import build_flow

    nan = si.copy()
    nan.replace(1, "Si", [np.nan, 0.25, 0.25])
    with pytest.raises(ValueError, match=r"x\.cif: site 1 \(Si\) has non-finite coordinates"):
        build_flow(nan, engine, "compare", "x.cif")
