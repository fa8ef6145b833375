"""Benchmark dataset readers: image/label pairs in a protocol's folder layout.

Pairing follows mmsegmentation's ``BaseSegDataset`` (folder mode, no split file):
every file under ``root / layout.images`` (searched recursively, hidden files skipped)
whose relative path ends with ``layout.image_suffix`` (case-sensitive) is an image;
images are sorted by relative path; the label of ``a/b<image_suffix>`` is
``root / layout.labels / a/b<label_suffix>``. Only the trailing suffix is replaced
(mmseg's ``str.replace`` would also rewrite a suffix appearing inside a folder name).

Labels are read like mmseg's ``LoadAnnotations`` (Pillow, ``flag='unchanged'``): a
palette PNG gives its indices, never colours; GeoTIFF labels are read from band 1.
``reduce_zero_label`` maps 0 to 255 and lowers every other value by one (255 stays).
Nothing is read at construction except folder listings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import RasterioError

from ..errors import InputError
from .protocols import DatasetProtocol, load_protocol
from .raster import RASTER_SUFFIXES, RasterImage, check_image, read_image


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map exactly as stored (no palette conversion, no value mapping).

    Args:
        path: PNG/JPEG (decoded with Pillow) or GeoTIFF (band 1, via rasterio).

    Returns:
        ``[H, W]`` uint8 label values.

    Raises:
        InputError: missing or unreadable file, several channels or bands, or values
            that do not fit in 0..255.

    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such label file.")
    bands = 1
    try:
        if path.suffix.lower() in RASTER_SUFFIXES:
            with rasterio.open(path) as dataset:
                bands = dataset.count
                label = dataset.read(1)
        else:
            with Image.open(path) as picture:
                label = np.array(picture)
    except (RasterioError, OSError, ValueError) as error:  # Pillow raises OSError subclasses
        raise InputError(f"{path}: not a readable label image ({error}).") from None
    if bands != 1:
        raise InputError(f"{path}: label has {bands} bands; a label map must have one.")
    if label.ndim != 2:
        channels = label.shape[2] if label.ndim == 3 else label.ndim
        raise InputError(f"{path}: label has {channels} channels; a label map must be single-channel.")
    if label.dtype != np.uint8:
        if label.size and (not np.issubdtype(label.dtype, np.integer) and label.dtype != bool):
            raise InputError(f"{path}: label values are {label.dtype}; class indices must be integers.")
        if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
            raise InputError(
                f"{path}: label values span {label.min()}..{label.max()}; they must fit in 0..255."
            )
        label = label.astype(np.uint8)
    return label


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """Apply mmseg's ``reduce_zero_label`` to a uint8 map: 0 -> 255, v -> v - 1, 255 stays 255.

    Args:
        label: ``[H, W]`` uint8.

    Returns:
        A new ``[H, W]`` uint8 array.

    """
    out = label.astype(np.uint8, copy=True)
    out[out == 0] = 255
    out = out - np.uint8(1)
    out[out == 254] = 255
    return out


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image from its header; raises InputError if unreadable."""
    header = check_image(path)
    return header.height, header.width


@dataclass(frozen=True)
class Sample:
    """One image/label pair; nothing is read until a ``load_*`` method is called.

    Attributes:
        name: relative image path without the image suffix, ``/``-separated (the
            image identity, e.g. for caching).
        image_path: the image file.
        label_path: the label file (may be missing; see ``SegmentationDataset.check``).
        reduce_zero_label: apply mmseg's ``reduce_zero_label`` when loading the label.

    """

    name: str
    image_path: Path
    label_path: Path
    reduce_zero_label: bool = False

    def load_image(
        self, bands: tuple[int, int, int] | None = None, stretch: str = "percentile"
    ) -> RasterImage:
        """The image as ``RasterImage`` (``.rgb`` ``[H, W, 3]`` uint8, ``.valid`` ``[H, W]`` bool)."""
        return read_image(self.image_path, bands=bands, stretch=stretch)

    def load_raw_label(self) -> np.ndarray:
        """The label as stored, ``[H, W]`` uint8 (no ``reduce_zero_label``)."""
        return read_label(self.label_path)

    def load_label(self) -> np.ndarray:
        """The label for evaluation, ``[H, W]`` uint8, with ``reduce_zero_label`` applied if set."""
        label = read_label(self.label_path)
        return reduce_zero_label(label) if self.reduce_zero_label else label


def _scan(folder: Path, suffix: str) -> list[str]:
    """Relative ``/``-joined paths of non-hidden files under ``folder`` ending with ``suffix``."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, tuple[str, ...]]] = [(folder, ())]
    while stack:
        current, parts = stack.pop()
        stat = current.stat()
        if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop
            continue
        seen.add((stat.st_dev, stat.st_ino))
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_file():
                    if not entry.name.startswith(".") and entry.name.endswith(suffix):
                        found.append("/".join((*parts, entry.name)))
                elif entry.is_dir():
                    stack.append((Path(entry.path), (*parts, entry.name)))
    return sorted(found)


def _listing(folder: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not names:
        return "it is empty"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return "it holds " + ", ".join(names[:limit]) + more


class SegmentationDataset:
    """Image/label pairs of one benchmark under a data root, in protocol order.

    Args:
        protocol: the dataset protocol (or a protocol name / YAML path).
        root: the data root holding ``layout.images`` and ``layout.labels``.
        limit: keep only the first ``limit`` samples (in sorted order); None keeps all.
        require_labels: when False, the labels folder may be missing (images only, e.g.
            for self-training on pseudo-labels).

    Raises:
        InputError: a protocol without layout (a preset), missing root, images or labels
            folder, no image with the protocol's suffix, or a bad ``limit``.

    """

    def __init__(
        self,
        protocol: DatasetProtocol | str | Path,
        root: str | Path,
        limit: int | None = None,
        require_labels: bool = True,
    ):
        self.protocol = protocol if isinstance(protocol, DatasetProtocol) else load_protocol(protocol)
        self.root = Path(root)
        layout = self.protocol.layout
        if layout is None:
            raise InputError(
                f"{self.protocol.source}: no 'layout' section; this file is a preset (classes and "
                "settings, for segment --preset), not a dataset protocol. Add layout: {images, labels, "
                "image_suffix, label_suffix} to evaluate with it."
            )
        self.images_dir = self.root / layout.images
        self.labels_dir = self.root / layout.labels
        expect = (
            f"the {self.protocol.title} protocol ({self.protocol.source}) expects images "
            f"'*{layout.image_suffix}' in '{layout.images}' and labels '*{layout.label_suffix}' "
            f"in '{layout.labels}' under the data root"
        )
        if not self.root.is_dir():
            raise InputError(f"Dataset root {self.root} not found; {expect} (expected {self.images_dir}).")
        folders = [("images", self.images_dir)] + ([("labels", self.labels_dir)] if require_labels else [])
        for kind, folder in folders:
            if not folder.is_dir():
                raise InputError(
                    f"{folder}: {kind} folder not found under the data root {self.root}; {expect} "
                    f"({_listing(self.root)})."
                )
        if limit is not None and limit < 1:
            raise InputError(f"limit must be a positive number of images, not {limit}.")
        suffix = layout.image_suffix
        relative = self._split_names() if layout.split else _scan(self.images_dir, suffix)
        if not relative:
            other_case = _scan(self.images_dir, "")
            other_case = [r for r in other_case if r.lower().endswith(suffix.lower())]
            hint = (
                f" ({len(other_case)} file name(s) end with it in another letter case)" if other_case else ""
            )
            raise InputError(
                f"{self.images_dir}: no image ending with '{suffix}' (case-sensitive) for "
                f"{self.protocol.title}{hint}; {_listing(self.images_dir)}."
            )
        self.limit = limit
        self._samples = [
            Sample(
                name=rel[: -len(suffix)],
                image_path=self.images_dir / rel,
                label_path=self.labels_dir / (rel[: -len(suffix)] + layout.label_suffix),
                reduce_zero_label=self.protocol.reduce_zero_label,
            )
            for rel in relative[:limit]
        ]

    def _split_names(self) -> list[str]:
        """Image paths (relative, with suffix) listed by the protocol's split file, in file order."""
        layout = self.protocol.layout
        split = Path(layout.split or "")
        split = split if split.is_absolute() else self.root / split
        if not split.is_file():
            raise InputError(
                f"{split}: split file not found; the {self.protocol.title} protocol evaluates the images "
                "it lists (one name per line, no suffix). Put the reference's list there or point "
                "layout.split at it."
            )
        names = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        missing = [n for n in names if not (self.images_dir / (n + layout.image_suffix)).is_file()]
        if missing:
            raise InputError(
                f"{split}: {len(missing)} listed image(s) not found in {self.images_dir}, "
                f"e.g. '{missing[0]}{layout.image_suffix}'."
            )
        return [n + layout.image_suffix for n in names]

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:
        return self._samples[index]

    def __iter__(self):
        return iter(self._samples)

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.protocol.name!r}, root={str(self.root)!r}, {len(self)} samples)"

    @property
    def num_classes(self) -> int:
        """``K``, the number of classes of the protocol."""
        return len(self.protocol.vocabulary.classes)

    def check(self, index: int) -> str | None:
        """Validate one pair: files present and readable, sizes equal, label values in range.

        Reads the image header and the whole label once.

        Args:
            index: sample index.

        Returns:
            One sentence naming the file and the problem, or None when the pair is usable.

        """
        sample = self._samples[index]
        if not sample.label_path.is_file():
            return f"{sample.label_path}: label file missing for image {sample.image_path}."
        try:
            height, width = image_size(sample.image_path)
            label = sample.load_label()
        except InputError as error:
            return str(error)
        except (RasterioError, OSError) as error:
            return f"{sample.image_path}: not a readable image ({error})."
        if label.shape != (height, width):
            return (
                f"{sample.label_path}: label is {label.shape[0]} x {label.shape[1]} (H x W) but image "
                f"{sample.image_path.name} is {height} x {width}."
            )
        k, ignore = self.num_classes, self.protocol.ignore_index
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        bad = [int(v) for v in values if v >= k and v != ignore]
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            after = " (after reduce_zero_label)" if self.protocol.reduce_zero_label else ""
            return (
                f"{sample.label_path}: label values {shown}{after} are outside the {k} classes "
                f"[0, {k}) and are not the ignore index {ignore}."
            )
        return None

    def problems(self) -> list[tuple[str, str]]:
        """Check every sample; ``(name, problem)`` for each unusable one, in order."""
        found = []
        for index, sample in enumerate(self._samples):
            problem = self.check(index)
            if problem is not None:
                found.append((sample.name, problem))
        return found

    def samples(self, skip_bad: bool) -> tuple[list[Sample], list[tuple[str, str]]]:
        """The usable samples, after checking each one.

        Args:
            skip_bad: leave out bad pairs (and report them) instead of failing.

        Returns:
            ``(usable samples, [(name, problem) of skipped samples])``.

        Raises:
            InputError: the first problem found, when ``skip_bad`` is False.

        """
        usable: list[Sample] = []
        skipped: list[tuple[str, str]] = []
        for index, sample in enumerate(self._samples):
            problem = self.check(index)
            if problem is None:
                usable.append(sample)
            elif skip_bad:
                skipped.append((sample.name, problem))
            else:
                raise InputError(problem)
        return usable, skipped
