"""Dataset protocols: classes, thresholds and layout of each benchmark, as YAML data.

The built-in protocols live in ``ovearth/configs/datasets/<name>.yaml`` (one per
dataset of SegEarth-OV3's table); a user's own file in the same schema is accepted
anywhere a protocol name is. Schema::

    name: loveda
    title: LoveDA
    classes: [background, "building,house", road, ...]   # label order, synonyms by ","
    segment: {confidence_threshold: 0.5, prob_thd: 0.5, bg_idx: 0, slide_crop: 0, slide_stride: 0}
    # segment.class_prob_thd (optional): {building: 0.4, road: 0.3}, per-class thresholds
    labels: {reduce_zero_label: true, ignore_index: 255, report: building}  # report optional
    layout: {images: img_dir/val, labels: ann_dir/val, image_suffix: .png, label_suffix: .png}
    # layout.split (optional): a file of image names, one per line, relative to the data root
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..segment.settings import SegmentSettings
from ..segment.vocabulary import Vocabulary

#: the schema: section -> field -> type (``float`` fields also take integers)
_FIELDS: dict[str, dict[str, type]] = {
    "": {"name": str, "title": str, "classes": list},
    "segment": {
        "confidence_threshold": float,
        "prob_thd": float,
        "class_prob_thd": dict,
        "bg_idx": int,
        "slide_crop": int,
        "slide_stride": int,
        "prompt_form": str,
    },
    "labels": {"reduce_zero_label": bool, "ignore_index": int, "report": str},
    "layout": {"images": str, "labels": str, "image_suffix": str, "label_suffix": str, "split": str},
}
_SEGMENT_KEYS = set(_FIELDS["segment"])
_LAYOUT_KEYS = set(_FIELDS["layout"])
_LAYOUT_REQUIRED = _LAYOUT_KEYS - {"split"}
_LABEL_KEYS = set(_FIELDS["labels"])
_TYPE_WORDS = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


def _check_types(values: dict[str, Any], section: str, path: Path) -> None:
    """Each present field has its schema type (a quoted "false" is text, not a boolean)."""
    for key, value in values.items():
        kind = _FIELDS[section].get(key)
        if kind is None:
            continue
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if kind is float
            else isinstance(value, int) and not isinstance(value, bool)
            if kind is int
            else isinstance(value, kind)
        )
        if not ok:
            field = f"{section}.{key}" if section else key
            got = f"the text {value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
            raise InputError(f"{path}: field '{field}' must be {_TYPE_WORDS[kind]}, got {got}.")


@dataclass(frozen=True)
class Layout:
    """Where images and labels are under a data root, and how their names end.

    ``split``, when set, names a text file (relative to the data root, or absolute) listing
    the image names to use, one per line without suffix, in evaluation order (mmseg's
    ``ann_file``); otherwise every image under ``images`` is used, sorted.
    """

    images: str
    labels: str
    image_suffix: str
    label_suffix: str
    split: str | None = None


@dataclass(frozen=True)
class DatasetProtocol:
    """One benchmark's evaluation protocol.

    Attributes:
        name: short identifier (the file stem of built-in protocols).
        title: display name.
        vocabulary: classes in label order.
        settings: segmentation thresholds and slide settings of the protocol.
        reduce_zero_label: label 0 becomes ignore and the others drop by one.
        ignore_index: label value excluded from metrics.
        report: for binary sets, the class whose IoU is the headline number.
        layout: folder layout under the data root.
        source: the YAML file it came from.

    """

    name: str
    title: str
    vocabulary: Vocabulary
    settings: SegmentSettings
    reduce_zero_label: bool
    ignore_index: int
    report: str | None
    layout: Layout
    source: Path


def _builtin_dir() -> Path:
    return Path(str(resources.files("ovearth").joinpath("configs").joinpath("datasets")))


def list_protocols() -> list[str]:
    """Names of the built-in protocols, sorted."""
    return sorted(p.stem for p in _builtin_dir().glob("*.yaml"))


def load_protocol(name_or_path: str | Path) -> DatasetProtocol:
    """Load a built-in protocol by name, or a user's YAML file by path.

    Raises:
        InputError: unknown name (with the closest names), unreadable file, or a file
            that does not follow the schema (naming the field).

    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix.lower() not in {".yaml", ".yml"}:
        known = list_protocols()
        key = text.lower().replace("-", "_").replace(" ", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise InputError(f"Unknown dataset '{text}'.{hint} Known: {', '.join(known)}.")
        path = _builtin_dir() / f"{key}.yaml"
    if not path.is_file():
        raise InputError(f"{path}: no such dataset protocol file.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]}).") from None
    return _parse(data, path)


def _section(data: dict, key: str, allowed: set[str], path: Path, required: set[str]) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InputError(f"{path}: '{key}' must be a mapping.")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InputError(
            f"{path}: unknown field '{key}.{unknown[0]}'; allowed: {', '.join(sorted(allowed))}."
        )
    missing = sorted(required - set(value))
    if missing:
        raise InputError(f"{path}: missing field '{key}.{missing[0]}'.")
    _check_types(value, key, path)
    return value


def _parse(data: Any, path: Path) -> DatasetProtocol:
    if not isinstance(data, dict):
        raise InputError(f"{path}: a dataset protocol must be a YAML mapping.")
    for key in ("name", "classes"):
        if key not in data:
            raise InputError(f"{path}: missing field '{key}'.")
    if not isinstance(data["classes"], list):
        raise InputError(f"{path}: 'classes' must be a list, one class per item.")
    _check_types(data, "", path)
    bad = next((c for c in data["classes"] if not isinstance(c, str)), None)
    if bad is not None:
        raise InputError(f"{path}: each item of 'classes' must be text like 'building,house', got {bad!r}.")
    try:
        vocabulary = Vocabulary.parse(list(data["classes"]))
        segment = _section(data, "segment", _SEGMENT_KEYS, path, set())
        # low-score pixels get a class (SegEarth-OV3's bg_idx, 0 when unsaid): the metrics need one
        settings = SegmentSettings(**{"bg_idx": 0, **segment})
        settings.check_classes(len(vocabulary))
        settings.class_thresholds(vocabulary.labels)  # every per-class threshold names a class
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    except TypeError as error:
        raise InputError(f"{path}: bad 'segment' value ({error}).") from None
    labels = _section(data, "labels", _LABEL_KEYS, path, set())
    layout = _section(data, "layout", _LAYOUT_KEYS, path, _LAYOUT_REQUIRED)
    report = labels.get("report")
    if report is not None and report not in vocabulary.labels:
        raise InputError(f"{path}: labels.report '{report}' is not one of the classes {vocabulary.labels}.")
    return DatasetProtocol(
        name=str(data["name"]),
        title=str(data.get("title", data["name"])),
        vocabulary=vocabulary,
        settings=settings,
        reduce_zero_label=bool(labels.get("reduce_zero_label", False)),
        ignore_index=int(labels.get("ignore_index", 255)),
        report=report,
        layout=Layout(**{k: str(v) for k, v in layout.items()}),
        source=path,
    )
