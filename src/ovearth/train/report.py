"""Loss curves of a training run: ``losses.csv`` (one row per step) and ``losses.png``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_path, write_text_atomic
from .segmentation_loss import TERMS

#: Columns of ``losses.csv``: step, learning rate, the combined loss, its unweighted terms, the
#: kept masks per view with an inside and an outside (what the encoder terms use), seconds.
COLUMNS = ("step", "lr", "total", *TERMS, "masks", "seconds")


def write_losses(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write the per-step rows as CSV (atomically); a term not computed (weight 0) is left empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in COLUMNS})
    write_text_atomic(path, buffer.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def loss_chart(path: str | Path, rows: list[dict[str, Any]], title: str = "Training loss") -> None:
    """Small multiples against the step: the combined loss, each unweighted term, the kept masks (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    panels = [("total", "combined loss"), *((t, t) for t in TERMS), ("masks", "usable own masks per view")]
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5))
    for axis, (key, label) in zip(axes.ravel(), panels, strict=True):
        values = [row.get(key) for row in rows]
        if all(v is None for v in values):
            axis.text(0.5, 0.5, "weight 0: not computed", ha="center", va="center", transform=axis.transAxes)
        else:
            axis.plot(steps, [float("nan") if v is None else v for v in values], linewidth=1.1)
        axis.set_title(label, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=110)
    plt.close(fig)
