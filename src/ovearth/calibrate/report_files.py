"""The calibration report's pages beside ``report.json``: ``report.md``, ``report.csv`` and the chart."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..data.atomic import atomic_path
from ..data.datasets import SegmentationDataset


def threshold_rule(rule: dict[str, Any]) -> str:
    """One line on how thresholds were searched (``result["threshold_search"]``)."""
    if rule["rule"] == "cuts":
        return (
            f"cut points of the data: every distinct score of a class's pixels, at most "
            f"{rule['max_cuts']} per pass (quantiles beyond, refined around the best)"
        )
    values = rule["values"]
    return f"grid of {len(values)} values, {values[0]} to {values[-1]}"


def fmt(value: float | None) -> str:
    """A percentage with two decimals, ``-`` for none (or NaN)."""
    return "-" if value is None or value != value else f"{value:.2f}"


def markdown(data: dict, title: str, paths: dict[str, Path], dataset: SegmentationDataset) -> str:
    """``report.md``: the chosen configuration, baseline vs calibrated per split, the notes."""
    summary = data["summary"]
    fit = data["splits"][0]
    best = fit["best"]
    lines = [f"# {title}: calibration", ""]
    if "warning" in summary:
        lines += [f"> **Warning.** {summary['warning']}", ""]
    for note in summary.get("notes", []):
        lines += [f"> **Note.** {note}", ""]
    lines += [
        f"Chosen on {len(fit['calibrate'])} images ({fit['name']} split, "
        f"{fit['pixels']['calibrate']} valid pixels), objective {data.get('objective', 'miou')}; "
        f"confidence threshold {best['confidence']}. Thresholds searched on the "
        f"{threshold_rule(data['threshold_search'])}. Protocol file: `{paths['yaml'].name}`.",
        "",
        "| class | protocol names | chosen names | threshold |",
        "|---|---|---|---|",
    ]
    for k, names in enumerate(best["names"]):
        protocol_names = ", ".join(data["protocol_classes"][k])
        lines.append(f"| {k} | {protocol_names} | {', '.join(names)} | {best['thresholds'][k]} |")
    if "fixed" in summary:
        base, cal = summary["fixed"]["baseline"], summary["fixed"]["calibrated"]
        lines += [
            "",
            f"## Held-out images ({len(fit['heldout'])}, {fit['pixels']['heldout']} valid pixels, "
            "fixed split)",
            "",
            f"mIoU: protocol {fmt(base['mIoU'])}, calibrated {fmt(cal['mIoU'])} "
            f"({cal['mIoU'] - base['mIoU']:+.2f}).",
            "",
            "| class | IoU protocol | IoU calibrated |",
            "|---|---|---|",
        ]
        for name in base["per_class"]:
            lines.append(
                f"| {name} | {fmt(base['per_class'][name]['IoU'])} | {fmt(cal['per_class'][name]['IoU'])} |"
            )
        lines += [
            "",
            "Reproduce (equal with `--sample-stride 1`; otherwise these numbers are on the sampled pixels):",
            "",
            f"    ovearth eval --dataset-config {paths['yaml']} --data-root {dataset.root} "
            f"--split {paths.get('heldout')} -o <folder>",
        ]
    elif fit["name"] == "fixed":
        lines += ["", f"## Held-out images ({len(fit['heldout'])}, fixed split)", "", "No valid pixels."]
    if summary["folds"]:
        lines += [
            "",
            f"## {len(summary['folds'])}-fold cross-validation (each fold held out in turn)",
            "",
            "| fold | images | valid pixels | mIoU protocol | mIoU calibrated | gain |",
            "|---|---|---|---|---|---|",
        ]
        for fold in summary["folds"]:
            cells = [fold["name"], fold["images"], fold["pixels"]]
            if "status" in fold:
                cells += [fold["status"], "-", "-"]
            else:
                gain = fold["calibrated"] - fold["baseline"]
                cells += [fmt(fold["baseline"]), fmt(fold["calibrated"]), f"{gain:+.2f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        used, count = summary.get("folds_used", 0), len(summary["folds"])
        which = f"the {used} folds" if used == count else f"the {used} of {count} folds with valid pixels"
        if "pooled" in summary:
            pooled = summary["pooled"]
            lines += [
                "",
                f"Gain over {which}: mean {summary['gain_mean']:+.2f}, std {summary['gain_std']:.2f}. "
                f"Pooled over them: mIoU {fmt(pooled['baseline']['mIoU'])} -> "
                f"{fmt(pooled['calibrated']['mIoU'])}.",
            ]
        else:
            lines += ["", "No fold has valid pixels in its held-out images: no gain to report."]
    cost = data["cost"]
    lines += [
        "",
        "## Cost",
        "",
        f"Model pass: {cost['model_pass_seconds']:.1f} s for {cost['images_run']} images x "
        f"{cost['names']} names (cached images are not run again); search: {cost['search_seconds']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def csv_text(data: dict, labels: list[str]) -> str:
    """``report.csv``: one row per class: names, threshold, held-out and k-fold IoU (protocol, calibrated)."""
    summary = data["summary"]
    best = data["splits"][0]["best"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "class",
            "protocol_names",
            "chosen_names",
            "threshold",
            "heldout_iou_protocol",
            "heldout_iou_calibrated",
            "kfold_iou_protocol",
            "kfold_iou_calibrated",
        ]
    )
    fixed, pooled = summary.get("fixed"), summary.get("pooled")
    for k, names in enumerate(best["names"]):
        label = labels[k]

        def iou(part, which, label=label):
            return "" if part is None else fmt(part[which]["per_class"][label]["IoU"])

        writer.writerow(
            [
                label,
                ";".join(data["protocol_classes"][k]),
                ";".join(names),
                best["thresholds"][k],
                iou(fixed, "baseline"),
                iou(fixed, "calibrated"),
                iou(pooled, "baseline"),
                iou(pooled, "calibrated"),
            ]
        )
    return buffer.getvalue()


def chart(path: Path, data: dict) -> None:
    """Grouped bars: held-out IoU per class, protocol vs calibrated (fixed split, else pooled folds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = data["summary"]
    part, where = (
        (summary["fixed"], "fixed split") if "fixed" in summary else (summary["pooled"], "pooled folds")
    )
    names = list(part["baseline"]["per_class"])
    base = [np.nan_to_num(part["baseline"]["per_class"][n]["IoU"] or 0.0) for n in names]
    cal = [np.nan_to_num(part["calibrated"]["per_class"][n]["IoU"] or 0.0) for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    ax.bar(x - 0.2, base, 0.4, label=f"protocol (mIoU {part['baseline']['mIoU']:.2f})", color="#9e9e9e")
    ax.bar(x + 0.2, cal, 0.4, label=f"calibrated (mIoU {part['calibrated']['mIoU']:.2f})", color="#1f77b4")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Held-out IoU per class ({where})")
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=120)
    plt.close(fig)
