"""The files ``ovearth calibrate`` writes: the protocol YAML, the held-out report (md, csv, json, png).

* ``<protocol>_calibrated.yaml``: the protocol with the chosen names, per-class thresholds
  and confidence, and a ``calibration`` record of how they were chosen; usable by
  ``eval --dataset-config`` and ``segment --preset``;
* ``heldout.txt``: the fixed split's held-out images (a ``--split`` file for ``eval``);
* ``calibration.md`` / ``.csv`` / ``.json``: baseline vs calibrated per class on the
  held-out images of the fixed split and pooled over the folds, per fold mIoU and gain,
  the warning when the gain is within the folds' spread, notes on splits without valid
  pixels, how thresholds were searched, the cost;
* ``calibration.png``: held-out IoU per class, baseline vs calibrated (not written when
  no held-out image has a valid pixel).

Numbers are mmseg's metrics (:func:`ovearth.metrics.compute_metrics`) in percent, on the
sampled pixels (every pixel with ``--sample-stride 1``). A split whose held-out images
have no valid (scored) pixel has no held-out numbers: it is reported as ``"no valid
pixels"`` (``status``), and a fold is left out of the gain's mean and std (``folds_used``
says how many remain). The JSON holds no NaN: an undefined value (a class neither
labelled nor predicted) is ``null``, as in ``eval``'s ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..data.atomic import write_text_atomic
from ..data.datasets import SegmentationDataset
from ..data.protocols import protocol_yaml
from ..metrics import compute_metrics
from ..segment.segmentor import Segmentor
from ..segment.vocabulary import Vocabulary
from .pool import CandidatePool
from .report_files import chart, csv_text, markdown, threshold_rule
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
        "thresholds_tried": threshold_rule(result["threshold_search"]),
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
    if "fixed" not in summary and "pooled" not in summary:
        del paths["png"]  # no held-out numbers to draw
    summary["notes"] = _notes(result, summary)
    data = json_safe(_json_ready(result, summary, vocabulary, settings, pool))
    data["headline"] = summary["headline"]
    data["files"] = {key: str(path) for key, path in paths.items()}
    write_text_atomic(paths["json"], json.dumps(data, indent=2, allow_nan=False) + "\n")
    write_text_atomic(paths["md"], markdown(data, protocol.title, paths, dataset))
    write_text_atomic(paths["csv"], csv_text(data, labels))
    if "png" in paths:
        chart(paths["png"], data)
    return data


def json_safe(value: Any) -> Any:
    """NaN and infinities -> None, numpy scalars -> Python, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _summaries(splits: list[dict], labels: list[str]) -> dict[str, Any]:
    """Metrics of the fixed split and of the folds (pooled and one by one), and the spread warning.

    Splits without held-out matrices (no valid held-out pixel) are named in
    ``no_valid_pixels``; such a fold is a row with ``status`` and no numbers, left out of
    the pooled metrics and of the gain's mean and std (over ``folds_used`` folds).
    """
    out: dict[str, Any] = {"folds": [], "headline": {}, "no_valid_pixels": []}
    fixed = next((s for s in splits if s["name"] == "fixed"), None)
    if fixed is not None and "baseline" in fixed:
        out["fixed"] = {
            "baseline": compute_metrics(fixed["baseline"], labels),
            "calibrated": compute_metrics(fixed["best"]["heldout"], labels),
        }
        out["headline"]["baseline_mIoU"] = round(out["fixed"]["baseline"]["mIoU"], 4)
        out["headline"]["calibrated_mIoU"] = round(out["fixed"]["calibrated"]["mIoU"], 4)
    elif fixed is not None:
        out["no_valid_pixels"].append(fixed["name"])
    folds = [s for s in splits if s["name"].startswith("fold")]
    scored = [fold for fold in folds if "baseline" in fold]
    for fold in folds:
        row: dict[str, Any] = {
            "name": fold["name"],
            "images": len(fold["heldout"]),
            "pixels": fold["pixels"]["heldout"],
        }
        if "baseline" in fold:
            row["baseline"] = compute_metrics(fold["baseline"], labels)["mIoU"]
            row["calibrated"] = compute_metrics(fold["best"]["heldout"], labels)["mIoU"]
        else:
            row["status"] = "no valid pixels"
            out["no_valid_pixels"].append(fold["name"])
        out["folds"].append(row)
    if scored:
        gains = [f["calibrated"] - f["baseline"] for f in out["folds"] if "baseline" in f]
        out["pooled"] = {
            "baseline": compute_metrics(sum(f["baseline"] for f in scored), labels),
            "calibrated": compute_metrics(sum(f["best"]["heldout"] for f in scored), labels),
        }
        out["folds_used"] = len(scored)
        out["gain_mean"] = statistics.fmean(gains)
        out["gain_std"] = statistics.stdev(gains) if len(gains) > 1 else 0.0
        out["headline"]["kfold_gain_mean"] = round(out["gain_mean"], 4)
        out["headline"]["kfold_gain_std"] = round(out["gain_std"], 4)
        out["headline"]["kfold_folds_used"] = len(scored)
        gain = (
            out["fixed"]["calibrated"]["mIoU"] - out["fixed"]["baseline"]["mIoU"]
            if "fixed" in out
            else out["gain_mean"]
        )
        if abs(gain) <= out["gain_std"]:
            out["warning"] = (
                f"The held-out gain ({gain:+.2f} mIoU) is within the split-to-split spread "
                f"(std {out['gain_std']:.2f} over {len(scored)} folds): it may not hold on other images; "
                "label more tiles before trusting it."
            )
    return out


def _notes(result: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Sentences on what had no valid pixels and what that changed."""
    notes = []
    unscored = result.get("unscored", [])
    if unscored:
        shown = ", ".join(unscored[:10]) + (", ..." if len(unscored) > 10 else "")
        notes.append(
            f"{len(unscored)} of {len(result['images'])} images {_has(len(unscored))} no valid pixel "
            f"(every sampled label ignored or no class, or the tile smaller than the sample stride) "
            f"and {'count' if len(unscored) > 1 else 'counts'} nowhere: {shown}."
        )
    fit = result["splits"][0]
    if not fit["pixels"]["calibrate"]:
        notes.append(
            f"The {fit['name']} split's calibration images have no valid pixels: the YAML keeps the "
            "protocol's names, thresholds and confidence."
        )
    empty = summary["no_valid_pixels"]
    if "fixed" in empty:
        notes.append("The fixed split's held-out images have no valid pixels: no held-out numbers for it.")
    folds = [f for f in empty if f.startswith("fold")]
    if folds:
        used = summary.get("folds_used", 0)
        notes.append(
            f"{len(folds)} of {len(summary['folds'])} folds ({', '.join(folds)}) {_has(len(folds))} no "
            f"valid pixels in {'their' if len(folds) > 1 else 'its'} held-out images, left out of the "
            f"pooled numbers and of the gain's mean and std ({used} {'fold' if used == 1 else 'folds'} used)."
        )
    return notes


def _has(count: int) -> str:
    return "has" if count == 1 else "have"


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
        item["pixels"] = split["pixels"]
        if "baseline" in split:
            item["baseline_matrix"] = np.asarray(split["baseline"]).tolist()
        elif split["heldout"]:
            item["status"] = "no valid pixels"
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
