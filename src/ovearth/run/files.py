"""Segment image files and write the results into an output folder.

For an input ``<stem>.<ext>``, :func:`segment_file` writes into ``out_dir``:

* ``<stem>_labels.tif`` (georeferenced input: GeoTIFF with the input's CRS and
  transform, uint8 class indices, 255 = nodata, colour table) or ``<stem>_labels.png``
  (palette PNG) for input without georeferencing;
* ``<stem>_overlay.png``: class colours over the image, with a legend;
* with ``probs=True``, ``<stem>_probs.tif``: one float32 band per class (its logit),
  band descriptions = class names.

GeoTIFFs larger than :data:`WINDOWED_PIXELS` (or any, with ``windowed=True``) are read
and written by windows (:mod:`ovearth.run.scene`): same outputs, bounded memory, the
labels always a tiled GeoTIFF and the overlay a quick-look.

Every file is written atomically: a failure leaves no partial output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from ..data.atomic import atomic_path
from ..data.output import is_own_output
from ..data.raster import (
    IMAGE_SUFFIXES,
    RASTER_SUFFIXES,
    ImageHeader,
    RasterImage,
    check_image,
    read_image,
    write_labels,
    write_probs,
)
from ..errors import InputError
from ..segment.fusion import scores_for_writing
from ..segment.segmentor import Prediction, Segmentor
from ..viz import overlay, palette
from .scene import WINDOWED_PIXELS, SceneResult, segment_scene

logger = logging.getLogger(__name__)


def collect_images(inputs: Iterable[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Expand files and folders into the list of image files, in order.

    Folders contribute their GeoTIFF, PNG and JPEG files (not recursive), sorted; hidden
    files (``.DS_Store``, ``._scene.tif``, temporary ``.*.part`` files) are skipped, and so,
    in a folder that is also the output folder ``out_dir``, are ``segment``'s own outputs
    (``<stem>_labels``, ``_overlay``, ``_probs``), so a second run does not segment them.

    Raises:
        InputError: a path that does not exist, a folder without images, or no input.

    """
    files: list[Path] = []
    out = Path(out_dir).resolve() if out_dir is not None else None
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            own = out is not None and path.resolve() == out
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES
                and p.is_file()
                and not p.name.startswith(".")
                and not (own and is_own_output(p))
            )
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


def whole_image_bytes(height: int, width: int, num_names: int, num_classes: int) -> int:
    """Estimated peak host memory of segmenting ``height x width`` pixels in one piece.

    Per pixel: the source bands as float32 for stretching (12 B), RGB and valid mask
    (4 B), the per-name logit sums and the view count (``4 (names + 1)`` B), the class
    logits (``4 classes`` B) and the labels (8 B).
    """
    return height * width * (24 + 4 * (num_names + 1) + 4 * num_classes)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def use_windows(
    path: Path, segmentor: Segmentor, windowed: bool | None, header: ImageHeader | None = None
) -> bool:
    """Whether ``path`` is segmented by windows: as asked, else for large sliding-window GeoTIFFs.

    An image too large for the available memory on the whole-image path goes by windows
    when it can (a GeoTIFF with sliding windows and no zoom, ``windowed`` not False) and
    is refused in one sentence otherwise.

    ``header`` (from :func:`~ovearth.data.raster.check_image`) saves opening the file again.

    Raises:
        InputError: windows asked for a PNG/JPEG, or an image too large for memory.

    """
    is_raster = path.suffix.lower() in RASTER_SUFFIXES
    if windowed and not is_raster:
        raise InputError(f"{path}: --windowed reads GeoTIFFs; PNG and JPEG are read whole.")
    if windowed:
        return True
    if header is None:
        try:
            header = check_image(path)
        except InputError:
            return False  # read whole, where read_image names the problem
    height, width = header.height, header.width
    s, vocabulary = segmentor.settings, segmentor.vocabulary
    can_window = is_raster and s.slide_crop > 0 and s.parsed_zoom is None
    need = whole_image_bytes(height, width, len(vocabulary.names), len(vocabulary))
    free = available_memory()
    if free is not None and need > free:
        if can_window and windowed is None:
            logger.warning("%s is too large to hold whole in memory; it is read by windows.", path)
            return True
        how = (
            "read it by windows (--windowed)"
            if can_window
            else "read it by windows with --slide-crop 1008 --slide-stride 1008"
            if is_raster
            else "convert it to a GeoTIFF and read it by windows (--slide-crop 1008 --slide-stride 1008)"
        )
        raise InputError(
            f"{path}: {height} x {width} pixels need about {need / 2**30:.1f} GB in one piece, more than the "
            f"{free / 2**30:.1f} GB available; {how}."
        )
    if windowed is not None or not is_raster:
        return False
    large = height * width > WINDOWED_PIXELS
    if large and s.slide_crop == 0:
        logger.warning(
            "%s is large and squeezed into one view; --slide-crop/--slide-stride would read it by windows.",
            path,
        )
    return large and can_window


def segment_file(
    segmentor: Segmentor,
    path: str | Path,
    out_dir: str | Path,
    bands: tuple[int, int, int] | None = None,
    stretch: str = "percentile",
    probs: bool = False,
    windowed: bool | None = None,
    on_view: Callable[[int, int], None] | None = None,
    header: ImageHeader | None = None,
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
        header: :func:`~ovearth.data.raster.check_image` of ``path``, when already read.

    Returns:
        The prediction (a :class:`SceneResult` when windowed) and the written files.

    Raises:
        InputError: unreadable input.

    """
    path = Path(path)
    out = Path(out_dir)
    if use_windows(path, segmentor, windowed, header):
        paths = output_paths(path, out, georeferenced=True, probs=probs)
        return segment_scene(segmentor, path, paths, bands, stretch, on_view, header), paths
    image: RasterImage = read_image(path, bands=bands, stretch=stretch, header=header)
    if not image.valid.any():
        logger.warning("%s: every pixel is nodata; all labels are 255 (nodata).", image.path)
    prediction = segmentor.predict(image.rgb, valid=image.valid)
    paths = output_paths(image.path, out, image.georeferenced, probs)
    names = prediction.class_names
    write_labels(paths["labels"], prediction.labels, image, palette(len(names)))
    with atomic_path(paths["overlay"]) as temp:
        overlay(image.rgb, prediction.labels, names).save(temp, format="PNG")
    if probs:
        write_probs(
            paths["probs"], scores_for_writing(prediction.class_logits, prediction.valid), names, image
        )
    return prediction, paths
