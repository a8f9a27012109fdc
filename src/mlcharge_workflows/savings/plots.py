"""Figures of the savings report (matplotlib, Agg canvas: no display, no pyplot state).

* :func:`plot_saving_histogram` - % SCF iterations saved per structure, oracle ceiling marked;
* :func:`plot_iteration_scatter` - baseline vs ML iterations, with the oracle start;
* :func:`plot_gap_parity` - NSCF band gaps from the predicted and the atomic density vs the
  gap on the converged density.

Every function takes a list of :class:`~mlcharge_workflows.common.schemas.SavingsRecord`
and draws into a given ``Axes``; :func:`summary_figure` puts all three side by side.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from mlcharge_workflows.common.schemas import SavingsRecord

ML_COLOR = "#1f77b4"
ORACLE_COLOR = "#2ca02c"
ATOMIC_COLOR = "#d62728"


def new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    """A matplotlib Figure on an Agg canvas (safe on headless machines and in threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes,
            color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_saving_histogram(records: Sequence[SavingsRecord], ax: Axes) -> None:
    """Histogram of % SCF iterations saved by the ML start (negative: it cost iterations)."""
    saved = np.array([100 * r.iteration_saving for r in records if r.iteration_saving is not None])
    ax.set_title("SCF iterations saved by the ML start")
    if saved.size == 0:
        _no_data(ax, "no structure has both a baseline\nand an ML-started SCF")
        return
    lo, hi = min(saved.min(), 0.0), max(saved.max(), 0.0)
    edges = np.arange(np.floor(lo / 5) * 5 - 2.5, np.ceil(hi / 5) * 5 + 2.501, 5.0)  # 0 centred
    n_fell = sum(r.iteration_saving is not None and r.ml_density_used is False for r in records)
    label = "ML arm" + (f" ({n_fell} fell back to atoms)" if n_fell else "")
    counts, _, _ = ax.hist(saved, bins=edges, color=ML_COLOR, edgecolor="white", label=label)
    ax.set_ylim(0, max(counts.max() * 1.35, counts.max() + 1))  # room for the legend
    med = float(np.median(saved))
    ax.axvline(med, color="k", lw=1.5, ls="--", label=f"median {med:.1f}%")
    oracle = [100 * r.oracle_saving for r in records if r.oracle_saving is not None]
    if oracle:
        orc = float(np.median(oracle))
        ax.axvline(orc, color=ORACLE_COLOR, lw=1.5, ls=":", label=f"oracle median {orc:.1f}%")
    ax.axvline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("iterations saved (%)  =  100 (1 - ML / baseline)")
    ax.set_ylabel("structures")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(frameon=False, fontsize="small")


def plot_iteration_scatter(records: Sequence[SavingsRecord], ax: Axes) -> None:
    """SCF iterations: baseline (x) vs ML start and oracle start (y); below y = x is a saving."""
    ax.set_title("SCF iterations per structure")
    rows = [(r.scf_iterations.baseline, r.scf_iterations.ml, r.scf_iterations.oracle,
             r.ml_density_used is not False)
            for r in records if r.scf_iterations.baseline is not None]
    ml = np.array([(b, m) for b, m, _, used in rows if m is not None and used],
                  dtype=float).reshape(-1, 2)
    fell = np.array([(b, m) for b, m, _, used in rows if m is not None and not used],
                    dtype=float).reshape(-1, 2)
    orc = np.array([(b, o) for b, _, o, _ in rows if o is not None], dtype=float).reshape(-1, 2)
    if ml.size == 0 and orc.size == 0 and fell.size == 0:
        _no_data(ax, "no iteration counts in these records")
        return
    allv = np.concatenate([ml.ravel(), orc.ravel(), fell.ravel()])
    top = float(allv.max()) * 1.08 + 1
    ax.plot([0, top], [0, top], color="0.5", lw=1, ls="--", label="no change (y = x)")
    rng = np.random.default_rng(0)  # small jitter: iteration counts are integers and collide

    def jitter(n: int) -> np.ndarray:
        return rng.uniform(-0.15, 0.15, n)

    if orc.size:
        ax.scatter(orc[:, 0] + jitter(len(orc)), orc[:, 1] + jitter(len(orc)), marker="^",
                   s=28, color=ORACLE_COLOR, alpha=0.8, label="oracle (converged density)")
    if ml.size:
        ax.scatter(ml[:, 0] + jitter(len(ml)), ml[:, 1] + jitter(len(ml)), s=28,
                   color=ML_COLOR, alpha=0.85, label="ML-predicted density")
    if fell.size:
        ax.scatter(fell[:, 0] + jitter(len(fell)), fell[:, 1] + jitter(len(fell)), s=30,
                   facecolors="none", edgecolors=ML_COLOR, linewidths=1.2,
                   label="ML arm fell back to atoms")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("baseline iterations (atomic start)")
    ax.set_ylabel("iterations from the ML (or oracle) start")
    ax.legend(frameon=False, fontsize="small", loc="upper left")


def plot_gap_parity(records: Sequence[SavingsRecord], ax: Axes) -> None:
    """NSCF band gap from the predicted / atomic density vs the gap on the SCF density."""
    ax.set_title("Band gap from a non-self-consistent run")
    ml = np.array([(r.band_gap_eV.scf, r.band_gap_eV.nscf_ml) for r in records
                   if r.band_gap_eV.scf is not None and r.band_gap_eV.nscf_ml is not None],
                  dtype=float).reshape(-1, 2)
    at = np.array([(r.band_gap_eV.scf, r.band_gap_eV.nscf_atomic) for r in records
                   if r.band_gap_eV.scf is not None and r.band_gap_eV.nscf_atomic is not None],
                  dtype=float).reshape(-1, 2)
    if ml.size == 0 and at.size == 0:
        _no_data(ax, "no NSCF band gaps in these records\n(compare flow with --nscf)")
        return
    allv = np.concatenate([ml.ravel(), at.ravel()])
    lo, hi = min(0.0, float(allv.min())), float(allv.max()) * 1.1 + 0.2
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
    if at.size:
        mae = float(np.mean(np.abs(at[:, 1] - at[:, 0])))
        ax.scatter(at[:, 0], at[:, 1], marker="s", s=26, color=ATOMIC_COLOR, alpha=0.75,
                   label=f"atomic superposition (MAE {mae:.3f} eV)")
    if ml.size:
        mae = float(np.mean(np.abs(ml[:, 1] - ml[:, 0])))
        ax.scatter(ml[:, 0], ml[:, 1], s=28, color=ML_COLOR, alpha=0.85,
                   label=f"ML-predicted density (MAE {mae:.3f} eV)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("gap on the converged SCF density (eV)")
    ax.set_ylabel("gap on the starting density (eV)")
    ax.legend(frameon=False, fontsize="small", loc="upper left")


PLOTS = {
    "saving_histogram": plot_saving_histogram,
    "iteration_scatter": plot_iteration_scatter,
    "gap_parity": plot_gap_parity,
}


def single_figure(records: Sequence[SavingsRecord], name: str) -> Figure:
    """One plot of :data:`PLOTS` in its own figure."""
    if name not in PLOTS:
        raise ValueError(f"unknown plot {name!r}; choose from {sorted(PLOTS)}")
    fig = new_figure(5.2, 4.6)
    PLOTS[name](records, fig.add_subplot())
    return fig


def summary_figure(records: Sequence[SavingsRecord], title: str | None = None) -> Figure:
    """The three report plots side by side."""
    fig = new_figure(16.5, 5.2)
    axes = fig.subplots(1, 3)
    for ax, func in zip(axes, PLOTS.values()):
        func(records, ax)
    if title:
        fig.suptitle(title, fontsize="large")
    return fig
