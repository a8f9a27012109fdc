"""A synthetic POTCAR library, so the VASP path can be exercised where no POTCAR exists.

VASP's POTCARs are licensed and absent from this package and its tests.
:func:`write_synthetic_potcar_library` writes, for each requested POTCAR symbol, a
dataset in VASP's layout (:func:`~mlcharge_workflows.density.potcar.format_potcar_dataset`)
whose atomic pseudo charge density is a known radial density: the ``PP_RHOATOM`` of the
QE registry's UPF file for that element, optionally plus a compact Gaussian semicore
shell (``Fe_pv``: 8 + 6 electrons). The folder layout is pymatgen's
(``<root>/POT_GGA_PAW_PBE_54/POTCAR.<symbol>``): point ``PMG_VASP_PSP_DIR`` at ``root``.
VASP cannot run with these files (no projectors); they exist only to be read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcharge_workflows.density.potcar import format_potcar_dataset

__all__ = ["SEMICORE_ALPHA", "write_synthetic_potcar_library"]

#: Exponent (Å⁻²) of the semicore shell added to ``_pv``/``_sv`` symbols: compact, ~1e-5
#: of its charge beyond 0.8 Å.
SEMICORE_ALPHA = 20.0
NPSPTS = 1000


def _semicore_electrons(symbol: str) -> float:
    suffix = symbol.split("_", 1)[1] if "_" in symbol else ""
    return {"pv": 6.0, "sv": 8.0}.get(suffix, 0.0)


def write_synthetic_potcar_library(
    root: str | Path,
    symbols: list[str],
    functional_dir: str = "POT_GGA_PAW_PBE_54",
    psgmax: float = 60.0,
) -> Path:
    """Write ``POTCAR.<symbol>`` for each of ``symbols`` under ``root/functional_dir``.

    The density of ``X`` is the registry UPF's ``PP_RHOATOM`` for ``X``; ``X_pv`` adds
    6 and ``X_sv`` 8 semicore electrons in a Gaussian of exponent :data:`SEMICORE_ALPHA`.
    Returns ``root``.
    """
    from mlcharge_workflows.density.sad import read_upf_atomic_density
    from mlcharge_workflows.pseudo import get_pseudo
    from mlcharge_workflows.units import BOHR_TO_ANGSTROM

    root = Path(root)
    folder = root / functional_dir
    folder.mkdir(parents=True, exist_ok=True)
    q = np.arange(NPSPTS) * psgmax / NPSPTS
    for symbol in symbols:
        element = symbol.split("_")[0]
        atom = read_upf_atomic_density(get_pseudo(element).source)
        rho = atom.radial_transform(q * BOHR_TO_ANGSTROM)
        rho *= atom.z_valence / rho[0]
        extra = _semicore_electrons(symbol)
        rho = rho + extra * np.exp(-(q**2) / (4 * SEMICORE_ALPHA))
        text = format_potcar_dataset(symbol, atom.z_valence + extra, rho, psgmax)
        (folder / f"POTCAR.{symbol}").write_text(text)
    return root
