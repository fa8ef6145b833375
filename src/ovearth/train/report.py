"""Loss curves of a training run: ``losses.csv`` (one row per step) and ``losses.png``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_path, write_text_atomic
from .segmentation_loss import TERMS

#: Columns of ``losses.csv``: step, learning rate, the combined loss, its unweighted terms, the
#: kept masks per view the encoder terms used, seconds.
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
    """Combined loss and each unweighted term against the step (log scale where positive), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(steps, [row["total"] for row in rows], color="black", linewidth=1.2)
    left.set_title("combined loss")
    for term in TERMS:
        values = [row.get(term) for row in rows]
        if any(v is not None for v in values):
            right.plot(steps, [float("nan") if v is None else v for v in values], label=term, linewidth=1)
    right.set_title("terms (unweighted)")
    if all(row.get(t) is None or row[t] > 0 for row in rows for t in TERMS):
        right.set_yscale("log")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=110)
    plt.close(fig)
