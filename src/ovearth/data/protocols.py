"""Dataset protocols: classes, thresholds and layout of each benchmark, as YAML data.

The built-in protocols live in ``ovearth/configs/datasets/<name>.yaml`` (one per
dataset of SegEarth-OV3's table); a user's own file in the same schema is accepted
anywhere a protocol name is. Schema::

    name: loveda
    title: LoveDA
    classes: [background, "building,house", road, ...]   # label order, synonyms by ","
    segment: {confidence_threshold: 0.5, prob_thd: 0.5, bg_idx: 0, slide_crop: 0, slide_stride: 0}
    # segment.class_prob_thd (optional): {building: 0.4, road: 0.3}, per-class thresholds
    # segment (optional): prompt_form, refine, refine_at, refine_for, use_instances,
    #   use_semantic, use_presence (the SegmentSettings fields of the same names)
    labels: {reduce_zero_label: true, ignore_index: 255, report: building}  # report optional
    layout: {images: img_dir/val, labels: ann_dir/val, image_suffix: .png, label_suffix: .png}
    # layout.split (optional): a file of image names, one per line, relative to the data root
    # calibration (optional): a record of how the file was made (``ovearth calibrate``),
    #   kept for people; it does not change what runs

A file without ``layout`` is a preset (``segment --preset FILE``): classes and settings
only; ``eval`` needs the layout. :func:`protocol_yaml` writes files in this schema.
"""

from __future__ import annotations

import dataclasses
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
from .safe_yaml import brief_text, parse_yaml, read_yaml  # noqa: F401 (parse_yaml: part of this API)

#: the schema: section -> field -> type (``float`` fields also take integers)
_FIELDS: dict[str, dict[str, type]] = {
    "": {"name": str, "title": str, "classes": list, "calibration": dict},
    "segment": {
        "confidence_threshold": float,
        "prob_thd": float,
        "class_prob_thd": dict,
        "bg_idx": int,
        "slide_crop": int,
        "slide_stride": int,
        "prompt_form": str,
        "refine": str,
        "refine_at": str,
        "refine_for": str,
        "use_instances": bool,
        "use_semantic": bool,
        "use_presence": bool,
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
        if kind is None or (section == "segment" and key == "bg_idx" and value is None):
            continue  # bg_idx: null = low-score pixels are unclassified (254)
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if kind is float
            else isinstance(value, int) and not isinstance(value, bool)
            if kind is int
            else isinstance(value, kind)
        )
        if not ok:
            field = f"{section}.{key}" if section else key
            shown = brief_text(repr(value))
            got = f"the text {shown}" if isinstance(value, str) else f"{shown} ({type(value).__name__})"
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
        layout: folder layout under the data root (None: a preset, not usable by ``eval``).
        source: the YAML file it came from.

    """

    name: str
    title: str
    vocabulary: Vocabulary
    settings: SegmentSettings
    reduce_zero_label: bool
    ignore_index: int
    report: str | None
    layout: Layout | None
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
    return _parse(read_yaml(path, "dataset protocol"), path)


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
    unknown = sorted(set(data) - set(_FIELDS[""]) - {"segment", "labels", "layout"})
    if unknown:
        raise InputError(
            f"{path}: unknown field '{unknown[0]}'; allowed: "
            f"{', '.join(sorted([*_FIELDS[''], 'segment', 'labels', 'layout']))}."
        )
    _check_types(data, "", path)
    bad = next((c for c in data["classes"] if not isinstance(c, str)), None)
    if bad is not None:
        raise InputError(
            f"{path}: each item of 'classes' must be text like 'building,house', got {brief_text(repr(bad))}."
        )
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
    layout = _section(data, "layout", _LAYOUT_KEYS, path, _LAYOUT_REQUIRED if "layout" in data else set())
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
        layout=Layout(**{k: str(v) for k, v in layout.items()}) if layout else None,
        source=path,
    )


#: ``segment`` fields written by :func:`protocol_yaml` whatever their value (the protocol's numbers)
_ALWAYS_WRITTEN = ("confidence_threshold", "prob_thd", "bg_idx", "slide_crop", "slide_stride")


def protocol_yaml(
    name: str,
    vocabulary: Vocabulary,
    settings: SegmentSettings,
    *,
    title: str | None = None,
    reduce_zero_label: bool = False,
    ignore_index: int = 255,
    report: str | None = None,
    layout: Layout | None = None,
    calibration: dict[str, Any] | None = None,
    comment: str = "",
) -> str:
    """A protocol file (the schema above) that :func:`load_protocol` reads back to the same run.

    ``segment`` holds the thresholds and slide settings always (``bg_idx: null`` for
    unclassified), the per-class thresholds when set, and every other schema field whose
    value differs from :class:`SegmentSettings`' default. Fields outside the schema (batch
    sizes, precision, zoom) are run options, not part of a protocol, and are not written.

    Args:
        name: the protocol's short name.
        vocabulary: classes in label order (synonyms written ``a,b``).
        settings: the segmentation settings.
        title: display name (``name`` when None).
        reduce_zero_label: the label rule of the same name.
        ignore_index: label value excluded from metrics.
        report: for binary sets, the class whose IoU is the headline number.
        layout: the folder layout; None writes a preset (no ``layout``).
        calibration: a record of how the file was made, kept as is.
        comment: lines written as YAML comments at the top.

    """
    defaults = SegmentSettings()
    segment: dict[str, Any] = {}
    for key in _FIELDS["segment"]:
        value = getattr(settings, key)
        if key == "class_prob_thd":
            if value:
                segment[key] = {k: float(v) for k, v in value}
        elif key in _ALWAYS_WRITTEN or value != getattr(defaults, key):
            segment[key] = float(value) if _FIELDS["segment"][key] is float else value
    labels: dict[str, Any] = {"reduce_zero_label": bool(reduce_zero_label), "ignore_index": int(ignore_index)}
    if report is not None:
        labels["report"] = report
    data: dict[str, Any] = {
        "name": name,
        "title": title or name,
        "classes": [",".join(names) for names in vocabulary.classes],
        "segment": segment,
        "labels": labels,
    }
    if layout is not None:
        data["layout"] = {k: v for k, v in dataclasses.asdict(layout).items() if v is not None}
    if calibration is not None:
        data["calibration"] = calibration
    head = "".join(f"# {line}\n".replace("# \n", "#\n") for line in comment.splitlines())
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
