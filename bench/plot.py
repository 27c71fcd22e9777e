"""`run --plot`: one panel per case, each backend's speedup over upstream eager on a linear
axis, so that a fast row is as visible as a slow one (a shared log-scale time axis hid them)."""

import math
import textwrap
from typing import List

from .cli import UsageError
from .table import seconds


def require_matplotlib() -> None:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise UsageError("--plot needs matplotlib, which is not installed: "
                         "pip install 'sam2-prompt[plot]' (or pip install matplotlib)")
    matplotlib.use("Agg")


def plot(rows: List[dict], path, title: str = "") -> None:
    """Write a PNG: per case, one horizontal bar per backend, its speedup over the case's upstream
    eager row (1x marked), labelled with the speedup and the median time. A case without an
    upstream row shows median times instead, and says so."""
    require_matplotlib()
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["case"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(4.6 * ncols, 0.5 + (0.45 * len(backends) + 0.9) * nrows))
    for ax, name in zip(axes.flat, names):
        mine = [r for r in rows if r["case"] == name]
        speedups = [r["speedup_vs_upstream"] for r in mine]
        relative = all(s is not None for s in speedups)
        values = speedups if relative else [r["median_s"] * 1e3 for r in mine]
        ys = range(len(mine))
        ax.barh(ys, values, color=[colours[r["backend"]] for r in mine])
        ax.set_yticks(ys, [r["backend"] for r in mine])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.5 * max(values))
        for y, value, r in zip(ys, values, mine):
            text = f"{value:.2f}x, {seconds(r['median_s'])}" if relative else seconds(r["median_s"])
            ax.text(value, y, " " + text, va="center", fontsize=8)
        if relative:
            ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
            ax.set_xlabel("speedup over upstream eager (x)", fontsize=8)
        else:
            ax.set_xlabel("median time per call (ms): no upstream row", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(textwrap.fill(title, 140), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
