"""Segment image files and write the results into an output folder.

For an input ``<stem>.<ext>``, :func:`segment_file` writes into ``out_dir``:

* ``<stem>_labels.tif`` (georeferenced input: GeoTIFF with the input's CRS and
  transform, uint8 class indices, 255 = nodata, colour table) or ``<stem>_labels.png``
  (palette PNG) for input without georeferencing;
* ``<stem>_overlay.png``: class colours over the image, with a legend;
* with ``probs=True``, ``<stem>_probs.tif``: one float32 band per class (its logit),
  band descriptions = class names.

Every file is written atomically: a failure leaves no partial output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..data.atomic import atomic_path
from ..data.raster import IMAGE_SUFFIXES, RasterImage, read_image, write_labels, write_probs
from ..errors import InputError
from ..viz import overlay, palette
from .segmentor import Prediction, Segmentor

logger = logging.getLogger(__name__)


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the list of image files, in order.

    Folders contribute their GeoTIFF, PNG and JPEG files (not recursive), sorted.

    Raises:
        InputError: a path that does not exist, a folder without images, or no input.

    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{path}: the folder has no GeoTIFF, PNG or JPEG images.")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file.")
    if not files:
        raise InputError("No input image given.")
    stems = [f.stem for f in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise InputError(f"Several inputs are named '{clash[0]}' (outputs would overwrite each other).")
    return files


def output_paths(image: Path, out_dir: Path, georeferenced: bool, probs: bool) -> dict[str, Path]:
    """The files :func:`segment_file` writes for ``image``."""
    paths = {
        "labels": out_dir / f"{image.stem}_labels.{'tif' if georeferenced else 'png'}",
        "overlay": out_dir / f"{image.stem}_overlay.png",
    }
    if probs:
        paths["probs"] = out_dir / f"{image.stem}_probs.tif"
    return paths


def segment_file(
    segmentor: Segmentor,
    path: str | Path,
    out_dir: str | Path,
    bands: tuple[int, int, int] | None = None,
    stretch: str = "percentile",
    probs: bool = False,
) -> tuple[Prediction, dict[str, Path]]:
    """Read, segment and write one image.

    Args:
        segmentor: the configured segmentor.
        path: image file.
        out_dir: output folder (created).
        bands: 1-based bands for R, G, B (GeoTIFF).
        stretch: 8-bit scaling rule (see :mod:`ovearth.data.raster`).
        probs: also write the per-class logits.

    Returns:
        The prediction and the written files.

    Raises:
        InputError: unreadable input.

    """
    image: RasterImage = read_image(path, bands=bands, stretch=stretch)
    if not image.valid.any():
        logger.warning("%s: every pixel is nodata; all labels are 255 (nodata).", image.path)
    prediction = segmentor.predict(image.rgb, valid=image.valid)
    out = Path(out_dir)
    paths = output_paths(image.path, out, image.georeferenced, probs)
    names = prediction.class_names
    write_labels(paths["labels"], prediction.labels, image, palette(len(names)))
    with atomic_path(paths["overlay"]) as temp:
        overlay(image.rgb, prediction.labels, names).save(temp, format="PNG")
    if probs:
        logits = prediction.class_logits.numpy()
        logits[:, ~prediction.valid] = float("nan")
        write_probs(paths["probs"], logits, names, image)
    return prediction, paths
