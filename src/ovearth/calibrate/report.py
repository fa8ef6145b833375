"""The files ``ovearth calibrate`` writes: the protocol YAML, the held-out report (md, csv, json, png).

* ``<protocol>_calibrated.yaml``: the protocol with the chosen names, per-class thresholds
  and confidence, and a ``calibration`` record of how they were chosen; usable by
  ``eval --dataset-config`` and ``segment --preset``;
* ``heldout.txt``: the fixed split's held-out images (a ``--split`` file for ``eval``);
* ``calibration.md`` / ``.csv`` / ``.json``: baseline vs calibrated per class on the
  held-out images of the fixed split and pooled over the folds, per fold mIoU and gain,
  the warning when the gain is within the folds' spread, the cost;
* ``calibration.png``: held-out IoU per class, baseline vs calibrated.

Numbers are mmseg's metrics (:func:`ovearth.metrics.compute_metrics`) in percent, on the
sampled pixels (every pixel with ``--sample-stride 1``).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..data.atomic import atomic_path, write_text_atomic
from ..data.datasets import SegmentationDataset
from ..data.protocols import protocol_yaml
from ..metrics import compute_metrics
from ..segment.segmentor import Segmentor
from ..segment.vocabulary import Vocabulary
from .pool import CandidatePool
from .search import Config


def chosen_vocabulary(pool: CandidatePool, config: Config) -> Vocabulary:
    """The classes with the chosen names (in pool order: the protocol's names first)."""
    names = pool.names
    return Vocabulary(tuple(tuple(names[i] for i in sorted(chosen)) for chosen in config.names))


def calibrated_settings(segmentor: Segmentor, vocabulary: Vocabulary, config: Config, confidence: float):
    """The protocol's settings with the chosen confidence and a per-class threshold where it differs."""
    s = segmentor.settings
    per_class = {
        vocabulary.labels[k]: t for k, t in enumerate(config.thresholds) if t != s.prob_thd and k != s.bg_idx
    }
    return s.replace(confidence_threshold=float(confidence), class_prob_thd=per_class)


def write_report(
    out: Path,
    result: dict[str, Any],
    segmentor: Segmentor,
    dataset: SegmentationDataset,
    pool: CandidatePool,
    options: Any,
) -> dict[str, Any]:
    """Write every file of the module docstring into ``out``; returns ``calibration.json``'s data."""
    protocol = dataset.protocol
    labels = segmentor.vocabulary.labels
    splits = result["splits"]
    fit = splits[0]
    best = fit["best"]
    vocabulary = chosen_vocabulary(pool, best["config"])
    settings = calibrated_settings(segmentor, vocabulary, best["config"], best["confidence"])
    summary = _summaries(splits, labels)
    paths = {
        "yaml": out / f"{protocol.name}_calibrated.yaml",
        "md": out / "calibration.md",
        "csv": out / "calibration.csv",
        "json": out / "calibration.json",
        "png": out / "calibration.png",
    }
    record = {
        "made": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ovearth": result["ovearth"],
        "model": result["model"],
        "from": str(protocol.source),
        "data_root": str(dataset.root),
        "fitted_on": f"{len(fit['calibrate'])} images ({fit['name']} split)",
        "objective": options.objective,
        "sample_stride": options.stride,
        "confidences_tried": result["confidences"],
        "thresholds_tried": [result["thresholds"][0], result["thresholds"][-1], len(result["thresholds"])],
        "protocol_classes": [",".join(names) for names in pool.protocol],
        "candidates": [",".join(names) for names in pool.classes],
        **{f"heldout_{k}": v for k, v in summary["headline"].items()},
    }
    comment = (
        f"{protocol.title}, calibrated by `ovearth calibrate` ({record['made']}).\n"
        f"Names, per-class thresholds and confidence chosen on {record['fitted_on']}; "
        "see calibration.md beside this file."
    )
    text = protocol_yaml(
        f"{protocol.name}_calibrated",
        vocabulary,
        settings,
        title=f"{protocol.title} (calibrated)",
        reduce_zero_label=protocol.reduce_zero_label,
        ignore_index=protocol.ignore_index,
        report=None
        if protocol.report is None
        else vocabulary.labels[protocol.vocabulary.labels.index(protocol.report)],
        layout=protocol.layout,
        calibration=record,
        comment=comment,
    )
    write_text_atomic(paths["yaml"], text)
    if fit["heldout"]:
        paths["heldout"] = out / "heldout.txt"
        names = result["images"]
        write_text_atomic(paths["heldout"], "".join(f"{names[i]}\n" for i in fit["heldout"]))
    data = _json_ready(result, summary, vocabulary, settings, pool)
    data["headline"] = summary["headline"]
    data["files"] = {key: str(path) for key, path in paths.items()}
    write_text_atomic(paths["json"], json.dumps(data, indent=2) + "\n")
    write_text_atomic(paths["md"], _markdown(data, protocol.title, paths, dataset))
    write_text_atomic(paths["csv"], _csv(data))
    _chart(paths["png"], data)
    return data


def _summaries(splits: list[dict], labels: list[str]) -> dict[str, Any]:
    """Metrics of the fixed split and of the folds (pooled and one by one), and the spread warning."""
    out: dict[str, Any] = {"folds": [], "headline": {}}
    fixed = next((s for s in splits if s["name"] == "fixed"), None)
    if fixed is not None:
        out["fixed"] = {
            "baseline": compute_metrics(fixed["baseline"], labels),
            "calibrated": compute_metrics(fixed["best"]["heldout"], labels),
        }
        out["headline"]["baseline_mIoU"] = round(out["fixed"]["baseline"]["mIoU"], 4)
        out["headline"]["calibrated_mIoU"] = round(out["fixed"]["calibrated"]["mIoU"], 4)
    folds = [s for s in splits if s["name"].startswith("fold")]
    if folds:
        for fold in folds:
            base = compute_metrics(fold["baseline"], labels)["mIoU"]
            calibrated = compute_metrics(fold["best"]["heldout"], labels)["mIoU"]
            out["folds"].append(
                {
                    "name": fold["name"],
                    "images": len(fold["heldout"]),
                    "baseline": base,
                    "calibrated": calibrated,
                }
            )
        gains = [f["calibrated"] - f["baseline"] for f in out["folds"]]
        out["pooled"] = {
            "baseline": compute_metrics(sum(f["baseline"] for f in folds), labels),
            "calibrated": compute_metrics(sum(f["best"]["heldout"] for f in folds), labels),
        }
        out["gain_mean"] = statistics.fmean(gains)
        out["gain_std"] = statistics.stdev(gains) if len(gains) > 1 else 0.0
        out["headline"]["kfold_gain_mean"] = round(out["gain_mean"], 4)
        out["headline"]["kfold_gain_std"] = round(out["gain_std"], 4)
        gain = (
            out["fixed"]["calibrated"]["mIoU"] - out["fixed"]["baseline"]["mIoU"]
            if fixed is not None
            else out["gain_mean"]
        )
        if abs(gain) <= out["gain_std"]:
            out["warning"] = (
                f"The held-out gain ({gain:+.2f} mIoU) is within the split-to-split spread "
                f"(std {out['gain_std']:.2f} over {len(folds)} folds): it may not hold on other images; "
                "label more tiles before trusting it."
            )
    return out


def _json_ready(result, summary, vocabulary, settings, pool) -> dict[str, Any]:
    names = pool.names

    def entry(best: dict) -> dict:
        config = best["config"]
        return {
            "confidence": best["confidence"],
            "objective": best["objective"],
            "start_objective": best["start_objective"],
            "names": [[names[i] for i in sorted(c)] for c in config.names],
            "thresholds": list(config.thresholds),
            "steps": [asdict(step) for step in best["steps"]],
            "evaluations": best["evaluations"],
            **({"heldout_matrix": best["heldout"].tolist()} if "heldout" in best else {}),
        }

    splits = []
    for split in result["splits"]:
        item = {
            "name": split["name"],
            "calibrate": [result["images"][i] for i in split["calibrate"]],
            "heldout": [result["images"][i] for i in split["heldout"]],
            "best": entry(split["best"]),
        }
        if "baseline" in split:
            item["baseline_matrix"] = np.asarray(split["baseline"]).tolist()
        splits.append(item)
    return {
        "classes": str(vocabulary),
        "settings": settings.to_dict(),
        "protocol_classes": [list(n) for n in pool.protocol],
        "candidates": [list(n) for n in pool.classes],
        "summary": summary,
        "splits": splits,
        **{k: v for k, v in result.items() if k not in ("splits",)},
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def _markdown(data: dict, title: str, paths: dict[str, Path], dataset: SegmentationDataset) -> str:
    summary = data["summary"]
    fit = data["splits"][0]
    best = fit["best"]
    lines = [f"# {title}: calibration", ""]
    if "warning" in summary:
        lines += [f"> **Warning.** {summary['warning']}", ""]
    lines += [
        f"Chosen on {len(fit['calibrate'])} images ({fit['name']} split), "
        f"objective {data.get('objective', 'miou')}; confidence threshold {best['confidence']}. "
        f"Protocol file: `{paths['yaml'].name}`.",
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
            f"## Held-out images ({len(fit['heldout'])}, fixed split)",
            "",
            f"mIoU: protocol {_fmt(base['mIoU'])}, calibrated {_fmt(cal['mIoU'])} "
            f"({cal['mIoU'] - base['mIoU']:+.2f}).",
            "",
            "| class | IoU protocol | IoU calibrated |",
            "|---|---|---|",
        ]
        for name in base["per_class"]:
            lines.append(
                f"| {name} | {_fmt(base['per_class'][name]['IoU'])} | {_fmt(cal['per_class'][name]['IoU'])} |"
            )
        lines += [
            "",
            "Reproduce (equal with `--sample-stride 1`; otherwise these numbers are on the sampled pixels):",
            "",
            f"    ovearth eval --dataset-config {paths['yaml']} --data-root {dataset.root} "
            f"--split {paths.get('heldout')} -o <folder>",
        ]
    if summary["folds"]:
        lines += [
            "",
            f"## {len(summary['folds'])}-fold cross-validation (each fold held out in turn)",
            "",
            "| fold | images | mIoU protocol | mIoU calibrated | gain |",
            "|---|---|---|---|---|",
        ]
        for fold in summary["folds"]:
            gain = fold["calibrated"] - fold["baseline"]
            cells = [fold["name"], fold["images"], _fmt(fold["baseline"]), _fmt(fold["calibrated"])]
            lines.append("| " + " | ".join(map(str, cells)) + f" | {gain:+.2f} |")
        pooled = summary["pooled"]
        lines += [
            "",
            f"Gain: mean {summary['gain_mean']:+.2f}, std {summary['gain_std']:.2f}. Pooled over the folds: "
            f"mIoU {_fmt(pooled['baseline']['mIoU'])} -> {_fmt(pooled['calibrated']['mIoU'])}.",
        ]
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


def _csv(data: dict) -> str:
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
        label = list((fixed or pooled)["baseline"]["per_class"])[k]

        def iou(part, which, label=label):
            return "" if part is None else _fmt(part[which]["per_class"][label]["IoU"])

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


def _chart(path: Path, data: dict) -> None:
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
