"""FROC plots: one or several curves on a log FP-per-scan axis (1/8..8), each with its
bootstrap band where one was computed, and the 7 read-off points."""
import numpy as np

from ..data.atomic import atomic_write
from .froc import FP_RATES


def froc_plot(path, curves, title=None):
    """Writes a PNG of {name: FrocResult} to `path` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=150)
    try:
        for i, (name, r) in enumerate(curves.items()):
            color = "C%d" % i
            lo, hi = FP_RATES[0] / 2, FP_RATES[-1] * 2  # a margin past both ends of the axis
            inside = (r.curve_fps > lo) & (r.curve_fps < hi)
            ends = np.interp([lo, hi], r.curve_fps, r.curve_sensitivity)
            xs = np.r_[lo, r.curve_fps[inside], hi]
            ys = np.r_[ends[0], r.curve_sensitivity[inside], ends[1]]
            label = "%s (CPM %.3f" % (name, r.cpm)
            if r.ci95 is not None:
                label += ", 95%% CI %.3f-%.3f" % tuple(r.ci95["cpm"])
            ax.plot(xs, ys, color=color, lw=1.8, label=label + ")")
            if r.curve_band is not None:
                ax.fill_between(r.band_fps, r.curve_band[0], r.curve_band[1], color=color, alpha=0.15, lw=0)
            ax.plot(r.fp_rates, r.sensitivity, "o", color=color, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xlim(FP_RATES[0], FP_RATES[-1])
        ax.xaxis.set_major_locator(FixedLocator(FP_RATES))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
        ax.set_ylim(0, 1)
        ax.set_yticks(np.linspace(0, 1, 11))
        ax.grid(True, which="major", alpha=0.4)
        ax.set_xlabel("average number of false positives per scan")
        ax.set_ylabel("sensitivity")
        ax.set_title(title or "FROC")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
