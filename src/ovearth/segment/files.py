"""Segment image files and write the results into an output folder.

For an input ``<stem>.<ext>``, :func:`segment_file` writes into ``out_dir``:

* ``<stem>_labels.tif`` (georeferenced input: GeoTIFF with the input's CRS and
  transform, uint8 class indices, 255 = nodata, colour table) or ``<stem>_labels.png``
  (palette PNG) for input without georeferencing;
* ``<stem>_overlay.png``: class colours over the image, with a legend;
* with ``probs=True``, ``<stem>_probs.tif``: one float32 band per class (its logit),
  band descriptions = class names.

GeoTIFFs larger than :data:`WINDOWED_PIXELS` (or any, with ``windowed=True``) are read
and written by windows (:mod:`ovearth.segment.scene`): same outputs, bounded memory, the
labels always a tiled GeoTIFF and the overlay a quick-look.

Every file is written atomically: a failure leaves no partial output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from ..data.atomic import atomic_path
from ..data.raster import IMAGE_SUFFIXES, RASTER_SUFFIXES, RasterImage, read_image, write_labels, write_probs
from ..errors import InputError
from ..viz import overlay, palette
from .scene import WINDOWED_PIXELS, SceneResult, segment_scene
from .segmentor import Prediction, Segmentor
from .zoom import Zoom

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


def use_windows(path: Path, segmentor: Segmentor, windowed: bool | None) -> bool:
    """Whether ``path`` is segmented by windows: as asked, else for large sliding-window GeoTIFFs.

    Raises:
        InputError: windows asked for a PNG/JPEG.

    """
    is_raster = path.suffix.lower() in RASTER_SUFFIXES
    if windowed is not None:
        if windowed and not is_raster:
            raise InputError(f"{path}: --windowed reads GeoTIFFs; PNG and JPEG are read whole.")
        return windowed
    if not is_raster:
        return False
    try:
        with rasterio.open(path) as dataset:
            large = dataset.height * dataset.width > WINDOWED_PIXELS
    except RasterioError:
        return False  # read whole, where read_image names the problem
    if large and segmentor.settings.slide_crop == 0:
        logger.warning(
            "%s is large and squeezed into one view; --slide-crop/--slide-stride would read it by windows.",
            path,
        )
    return large and segmentor.settings.slide_crop > 0 and Zoom.parse(segmentor.settings.zoom) is None


def segment_file(
    segmentor: Segmentor,
    path: str | Path,
    out_dir: str | Path,
    bands: tuple[int, int, int] | None = None,
    stretch: str = "percentile",
    probs: bool = False,
    windowed: bool | None = None,
    on_view: Callable[[int, int], None] | None = None,
) -> tuple[Prediction | SceneResult, dict[str, Path]]:
    """Read, segment and write one image.

    Args:
        segmentor: the configured segmentor.
        path: image file.
        out_dir: output folder (created).
        bands: 1-based bands for R, G, B (GeoTIFF).
        stretch: 8-bit scaling rule (see :mod:`ovearth.data.raster`).
        probs: also write the per-class logits.
        windowed: read and write by windows (None: automatic, see :func:`use_windows`).
        on_view: progress callback of windowed runs, ``on_view(done, total)``.

    Returns:
        The prediction (a :class:`SceneResult` when windowed) and the written files.

    Raises:
        InputError: unreadable input.

    """
    path = Path(path)
    out = Path(out_dir)
    if use_windows(path, segmentor, windowed):
        paths = output_paths(path, out, georeferenced=True, probs=probs)
        return segment_scene(segmentor, path, paths, bands, stretch, on_view), paths
    image: RasterImage = read_image(path, bands=bands, stretch=stretch)
    if not image.valid.any():
        logger.warning("%s: every pixel is nodata; all labels are 255 (nodata).", image.path)
    prediction = segmentor.predict(image.rgb, valid=image.valid)
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
