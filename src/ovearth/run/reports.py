"""Write evaluation results as people read them: JSON, Markdown, CSV and a bar chart.

All files are written atomically. The chart uses matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_path, write_text_atomic

#: Per-class values reported in the tables, in this order.
PER_CLASS_KEYS = ("IoU", "Acc", "Fscore", "Precision", "Recall")


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _json_safe(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_metrics(out_dir: str | Path, result: dict[str, Any], title: str) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md``, ``metrics.csv`` and ``per_class_iou.png``.

    Args:
        out_dir: output folder.
        result: ``{"mIoU", "mAcc", "aAcc", "mFscore", "per_class": {name: {...}}, ...}``
            in percent, plus any provenance keys (settings, model, skipped...).
        title: heading of the Markdown report and the chart.

    Returns:
        The written paths by kind.

    """
    out = Path(out_dir)
    paths = {
        "json": out / "metrics.json",
        "md": out / "metrics.md",
        "csv": out / "metrics.csv",
        "png": out / "per_class_iou.png",
    }
    write_text_atomic(paths["json"], json.dumps(_json_safe(result), indent=2) + "\n")
    write_text_atomic(paths["md"], metrics_markdown(result, title))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class", *PER_CLASS_KEYS])
    for name, values in result["per_class"].items():
        writer.writerow([name, *(_fmt(values.get(k)) for k in PER_CLASS_KEYS)])
    for key in ("mIoU", "mAcc", "aAcc", "mFscore"):
        writer.writerow([key, _fmt(result.get(key))])
    write_text_atomic(paths["csv"], buffer.getvalue())
    iou_chart(paths["png"], {n: v["IoU"] for n, v in result["per_class"].items()}, title, result.get("mIoU"))
    return paths


def metrics_markdown(result: dict[str, Any], title: str) -> str:
    """A Markdown report: headline numbers, then a per-class table."""
    lines = [f"# {title}", ""]
    lines.append("| mIoU | mAcc | aAcc | mFscore | images |")
    lines.append("| --- | --- | --- | --- | --- |")
    lines.append(
        f"| {_fmt(result.get('mIoU'))} | {_fmt(result.get('mAcc'))} | {_fmt(result.get('aAcc'))} "
        f"| {_fmt(result.get('mFscore'))} | {result.get('num_images', '-')} |"
    )
    lines += [
        "",
        "| class | " + " | ".join(PER_CLASS_KEYS) + " |",
        "| --- " * (len(PER_CLASS_KEYS) + 1) + "|",
    ]
    for name, values in result["per_class"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(k)) for k in PER_CLASS_KEYS) + " |")
    skipped = result.get("skipped") or []
    if skipped:
        lines += ["", f"Skipped {len(skipped)} image(s):", ""]
        lines += [f"- `{item['image']}`: {item['problem']}" for item in skipped]
    lines += ["", "Values in percent; `-` = undefined (class absent from labels and predictions)."]
    return "\n".join(lines) + "\n"


def iou_chart(path: str | Path, ious: dict[str, float], title: str, miou: float | None = None) -> None:
    """Horizontal bar chart of per-class IoU (undefined classes shown empty)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ious)
    values = [0.0 if v is None or math.isnan(v) else v for v in ious.values()]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    bars = ax.barh(names, values, color="#1f77b4")
    for bar, raw in zip(bars, ious.values(), strict=True):
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, _fmt(raw), va="center", fontsize=8)
    if miou is not None and not math.isnan(miou):
        ax.axvline(miou, color="#d62728", linestyle="--", linewidth=1, label=f"mIoU {miou:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 105)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=120)
    plt.close(fig)
