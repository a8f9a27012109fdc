"""The supplementary training set of the shipped model: tiny strained/rattled cells, real pw.x.

Usage::

    .venv/bin/python benchmarks/model_extra_data.py OUT_DIR --seed 1 --n 48

Eight kinds cycle (Si2, C2, SiC, a 6-atom Si5C cell, a CO molecule in a 4 Å box,
fcc Ni, SiN, B2 FeSi), each strained by N(0, 2 %) and rattled by 0.08 Å, run with
``ecutwfc 25 / ecutrho 200`` Ry, the QE registry's pseudopotentials, k-points
``ceil(12 / a_i)``, ``conv_thr 1e-9``; smearing and ``nspin = 2`` (starting
magnetisation 0.4) where Fe/Ni is present. The converged ``charge-density.dat`` becomes a
:class:`DensityRecord`. Used for the model-design comparison in docs/model-design.md (that set was made by an
earlier version of this script whose rattle drew from numpy's global generator, so its
displacements are not reproducible; this version is seeded). Not the QE comparison
protocol: a different cutoff and k-mesh.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

KINDS = ["Si", "C", "SiC", "Si4", "CO", "Ni", "SiN", "FeSi"]
LATTICE = {"Si": 5.43, "C": 3.57, "SiC": 4.36, "Si4": 5.43, "CO": 4.0, "Ni": 3.52, "SiN": 4.6, "FeSi": 2.8}
MASS = {"Si": 28.0855, "C": 12.011, "O": 15.999, "N": 14.007, "Ni": 58.69, "Fe": 55.85}


def structure(kind: str, rng: np.random.Generator) -> Structure:
    a = LATTICE[kind]
    fcc = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    if kind in ("Si", "C", "SiC", "SiN"):
        sp = {"Si": ["Si", "Si"], "C": ["C", "C"], "SiC": ["Si", "C"], "SiN": ["Si", "N"]}[kind]
        s = Structure(fcc, sp, [[0, 0, 0], [0.25] * 3])
    elif kind == "Si4":
        s = Structure(Lattice.cubic(a), ["Si"] * 8, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                      [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])
        s.remove_sites([6, 7])
        s.replace(5, "C")
    elif kind == "CO":
        s = Structure(Lattice.cubic(a), ["C", "O"], [[0.3, 0.5, 0.5], [0.3 + 1.13 / a, 0.5, 0.5]])
    elif kind == "Ni":
        s = Structure(fcc, ["Ni"], [[0, 0, 0]])
    else:
        s = Structure(Lattice.cubic(a), ["Fe", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    strain = np.eye(3) + rng.normal(0, 0.02, (3, 3))
    s = Structure(Lattice(s.lattice.matrix @ strain), s.species, s.cart_coords @ strain, coords_are_cartesian=True)
    for j in range(len(s)):  # rattle: 0.08 Å in a random direction (seeded, unlike Structure.perturb)
        v = rng.normal(size=3)
        s.translate_sites([j], 0.08 * v / np.linalg.norm(v), frac_coords=False)
    return s


def pw_input(s: Structure, outdir: Path, pseudo_dir: Path) -> str:
    from mlcharge_workflows.pseudo import get_pseudo

    els = sorted({e.symbol for e in s.species})
    spin = any(e in ("Ni", "Fe") for e in els)
    metal = spin or "N" in els
    kp = [max(1, int(np.ceil(12 / length))) for length in s.lattice.abc]
    lines = ["&CONTROL", " calculation='scf'", " prefix='x'", f" outdir='{outdir}'", f" pseudo_dir='{pseudo_dir}'", "/",
             "&SYSTEM", " ibrav=0", f" nat={len(s)}", f" ntyp={len(els)}", " ecutwfc=25", " ecutrho=200"]
    if metal:
        lines += [" occupations='smearing'", " smearing='mv'", " degauss=0.02"]
    if spin:
        lines += [" nspin=2"] + [f" starting_magnetization({i + 1})={0.4 if e in ('Ni', 'Fe') else 0.0}" for i, e in enumerate(els)]
    lines += ["/", "&ELECTRONS", " conv_thr=1e-9", " mixing_beta=0.4", "/", "ATOMIC_SPECIES"]
    lines += [f"{e} {MASS[e]} {get_pseudo(e).filename}" for e in els]
    lines += ["CELL_PARAMETERS angstrom"] + [" ".join(f"{x:.10f}" for x in v) for v in s.lattice.matrix]
    lines += ["ATOMIC_POSITIONS angstrom"] + [f"{x.specie.symbol} " + " ".join(f"{c:.10f}" for c in x.coords) for x in s]
    lines += ["K_POINTS automatic", " ".join(map(str, kp)) + " 0 0 0"]
    return "\n".join(lines) + "\n"


def main() -> None:
    from mlcharge_workflows.density.qe_file import read_qe_charge_density
    from mlcharge_workflows.density.qe_gvectors import QE_PER_BOHR3_TO_PER_ANGSTROM3
    from mlcharge_workflows.pseudo import get_pseudo, stage_pseudos
    from mlcharge_workflows.training.dataset import DensityDataset, DensityRecord

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/model_extra_data"))
    args = ap.parse_args()
    ds = DensityDataset(args.out)
    rng = np.random.default_rng(args.seed)
    pseudo_dir = stage_pseudos(["Si", "C", "O", "N", "Ni", "Fe"], args.workdir / "pseudo")
    for i in range(args.n):
        kind = KINDS[i % len(KINDS)]
        s = structure(kind, rng)  # drawn even when the record exists: same structures on resume
        rid = f"{kind}_{args.seed}_{i:03d}"
        if rid in ds:
            continue
        wd = args.workdir / rid
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "pw.in").write_text(pw_input(s, wd / "out", pseudo_dir))
        t0 = time.time()
        subprocess.run("mpirun --allow-run-as-root -np 1 pw.x -in pw.in > pw.out", shell=True, cwd=wd)
        text = (wd / "pw.out").read_text()
        if "convergence has been achieved" not in text:
            print(rid, "not converged: skipped")
            continue
        iters = int(text.split("convergence has been achieved in")[1].split()[0])
        shape = tuple(int(x) for x in text.split("FFT dimensions: (")[1].split(")")[0].split(","))
        qcd = read_qe_charge_density(wd / "out" / "x.save" / "charge-density.dat")
        rho = qcd.rho_g * QE_PER_BOHR3_TO_PER_ANGSTROM3
        els = sorted({e.symbol for e in s.species})
        rec = DensityRecord(rid, s, shape, qcd.mill, rho[0], rho[1] if qcd.nspin == 2 else None, scf_iterations=iters,
                            metadata={"engine": "qe", "ecutwfc": 25, "ecutrho": 200,
                                      "pseudopotentials": {e: get_pseudo(e).filename for e in els},
                                      "generator": f"benchmarks/model_extra_data.py --seed {args.seed}"})
        ds.add(rec)
        print(rid, len(s), shape, iters, f"{time.time() - t0:.1f}s", f"{rec.n_electrons:.6f}", flush=True)


if __name__ == "__main__":
    main()
