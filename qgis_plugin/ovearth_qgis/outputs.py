"""What a run wrote: the output guard of a cancel, output names, metrics, the style's palette.

No QGIS import (``tests/test_qgis_runner.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

from .errors import OvearthError

# --------------------------------------------------------------------------- outputs


class OutputGuard:
    """What a run may create in a folder: on cancel, the files it created are removed.

    Only names the run can write are touched: ovearth's hidden temporary files
    (``.*.part*``), names starting with one of ``prefixes`` (e.g. ``<stem>_``) and the
    names in ``names`` (e.g. ``run.json``), and only those that were not there before.
    """

    def __init__(self, folder: str, prefixes: Sequence[str] = (), names: Sequence[str] = ()) -> None:
        self.folder = Path(folder)
        self.prefixes = tuple(prefixes)
        self.names = tuple(names)
        self.before = set()  # type: set

    def snapshot(self) -> None:
        """Remember what the folder holds now."""
        self.before = set(self._listing())

    def _listing(self) -> list[str]:
        try:
            return [p.name for p in self.folder.iterdir()]
        except OSError:
            return []

    def _ours(self, name: str) -> bool:
        return (
            (name.startswith(".") and ".part" in name) or name.startswith(self.prefixes) or name in self.names
        )

    def remove_new(self) -> list[str]:
        """Remove the run's new files (and folders); return their names."""
        removed = []
        for name in sorted(set(self._listing()) - self.before):
            if not self._ours(name):
                continue
            path = self.folder / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(str(path))
                else:
                    path.unlink()
                removed.append(name)
            except OSError:
                pass
        return removed


def output_stem(image: str) -> str:
    """The stem ovearth names an image's outputs after (``scene.tif`` -> ``scene``)."""
    name = re.split(r"[?#]", str(image).rstrip("/\\"))[0]
    name = re.split(r"[/\\]", name)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def segment_outputs(folder: str, image: str | None = None) -> dict[str, str]:
    """The files ``ovearth segment`` wrote for ``image`` (the only one when None), from ``run.json``.

    Returns:
        ``{"labels": ..., "style": ..., "scores": ..., "polygons": ..., "objects": ..., ...}``:
        the kinds it wrote, as absolute paths.

    Raises:
        OvearthError: no run.json or no entry for the image.

    """
    record_path = Path(folder) / "run.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OvearthError(f"ovearth wrote no readable run.json in {folder}: {error}.") from None
    entries = record.get("images") or []
    if image is not None and len(entries) > 1:
        wanted = _same_file_key(image)
        entries = [e for e in entries if _same_file_key(str(e.get("image", ""))) == wanted] or entries[-1:]
    if not entries:
        raise OvearthError(f"{record_path} lists no segmented image.")
    outputs = entries[-1].get("outputs") or {}
    return {kind: str(Path(folder, path)) for kind, path in outputs.items() if path}


def _same_file_key(path: str) -> str:
    if "://" in path:
        return path
    try:
        return os.path.normcase(os.path.realpath(path))
    except OSError:
        return path


def metrics_summary(folder: str) -> dict[str, float]:
    """mIoU, mAcc and aAcc (percent) from ``metrics.json`` of an ``ovearth eval`` output folder."""
    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OvearthError(f"ovearth wrote no readable metrics.json in {folder}: {error}.") from None
    return {key: float(metrics[key]) for key in ("mIoU", "mAcc", "aAcc") if key in metrics}


def palette_from_qml(style: str) -> list[tuple]:
    """``[(value, "#rrggbb", label), ...]`` of the paletted style ovearth writes beside the labels."""
    try:
        root = ElementTree.parse(style).getroot()
    except (OSError, ElementTree.ParseError):
        return []
    entries = []
    for entry in root.iter("paletteEntry"):
        try:
            entries.append(
                (int(entry.get("value", "")), entry.get("color", "#000000"), entry.get("label", ""))
            )
        except ValueError:
            continue
    return entries
