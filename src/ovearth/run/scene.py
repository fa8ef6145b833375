"""Segment a GeoTIFF of any size window by window, with memory bounded by one row of windows.

The sliding windows are placed on the *whole scene* exactly as :func:`views_for` places
them on a whole image, and run in the same row-major order; per-name logits are summed
into a buffer that holds only the rows still covered by a pending window. Once every
window touching a row is done, the row is final: ``logits = sum / count`` (the
reference's averaging rule), then class max, thresholds and labels as in
:meth:`Segmentor.predict`, written into a tiled, deflate GeoTIFF and dropped from the
buffer. The output therefore equals the whole-image output bit for bit (tested).

Memory: the buffer holds ``P`` names x ``crop + 256`` rows x the scene width in float32,
allocated once, and the valid mask of those rows (one byte a pixel) with the quick-look's
samples: rows are finished from what the windows read, so each pixel is read and
stretched once per covering window and never again. Rows are finished 64 at a time;
with objects (``found``), an :class:`~ovearth.segment.instances.ObjectSpill` keeps the
settled ones on disk. GDAL's block cache is capped at
:data:`~ovearth.data.scene.GDAL_CACHE_MB`. Memory grows with the scene's width, never
with its height or area.

Extra saving, exact: when the windows do not overlap, a window without any valid pixel
is not run (its pixels are all nodata, 255, whatever it would predict).
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..constants import UNCLASSIFIED_LABEL
from ..data.atomic import atomic_path
from ..data.cog import GEOTIFF_BLOCK
from ..data.legend import ClassTable
from ..data.raster import ImageHeader
from ..data.scene import SceneReader, SceneWriter, bounded_gdal_cache
from ..errors import InputError
from ..model.preprocess import to_chw_uint8
from ..segment.accumulate import RowBuffer, run_windows, window_rows
from ..segment.fusion import finish, names_to_classes, scores_for_writing
from ..segment.instances import Instance, ObjectSpill, StreamingDedup, restricted, shifted
from ..segment.segmentor import Segmentor
from ..segment.views import ViewOutput
from ..segment.windows import Window, tiles_without_overlap, views_for
from ..viz import MAX_OVERLAY_SIDE, overlay, palette
from .scene_split import PartWriter, ScenePart, assemble_parts, row_bounds, touching_rows

logger = logging.getLogger(__name__)

#: Scenes with more pixels than this are read by windows by default (``segment``).
WINDOWED_PIXELS = 64_000_000


@dataclass
class SceneResult:
    """What a windowed run found.

    Attributes:
        class_names: the ``K`` display names.
        presence: ``[K]`` presence per class (max over names and views).
        height, width: scene size.
        views: windows placed on the scene.
        skipped_views: windows not run because they hold no valid pixel (disjoint windows only).
        crs, transform: the scene's georeferencing.

    """

    class_names: list[str]
    presence: Tensor
    height: int
    width: int
    views: int
    skipped_views: int
    crs: Any = None
    transform: Any = None


def segment_scene(
    segmentor: Segmentor,
    path: str | Path,
    paths: dict[str, Path],
    bands: tuple[int, int, int] | None = None,
    stretch: str = "percentile",
    on_view: Callable[[int, int], None] | None = None,
    header: ImageHeader | None = None,
    cog: bool = True,
    found: list[Instance] | ObjectSpill | None = None,
    table: ClassTable | None = None,
    part: ScenePart | None = None,
) -> SceneResult:
    """Segment a GeoTIFF by windows and write ``paths["labels"]`` (and ``"scores"``, ``"overlay"``).

    Args:
        segmentor: its settings must slide (``slide_crop > 0``) and not zoom.
        path: the GeoTIFF.
        paths: output files: ``labels`` (GeoTIFF), ``overlay`` (PNG quick-look, longest
            side at most :data:`MAX_OVERLAY_SIDE`), optional ``scores`` (float32 GeoTIFF).
        bands: 1-based bands for R, G, B.
        stretch: 8-bit scaling rule, computed over the whole scene.
        header: :func:`~ovearth.data.raster.check_image` of ``path``, when already read.
        on_view: called as ``on_view(done, total)`` after each window (progress).
        cog: write Cloud-Optimized GeoTIFFs (else plain tiles).
        found: when a list, SAM 3's objects of every window are added to it (image
            coordinates, cut to valid pixels, deduplicated across windows); when an
            :class:`~ovearth.segment.instances.ObjectSpill`, they are written to it as
            they settle, so memory holds only the objects later windows may still meet
            (iterate it afterwards, e.g. into :func:`~ovearth.data.objects.write_objects`).
        table: the outputs' class table (:class:`~ovearth.run.plan.FilePlan`), else built here.
        part: this process's share when every torchrun process takes a band of the scene
            (:mod:`~ovearth.run.scene_split`; a collective, every process calls it). Process 0
            writes ``paths`` and copies the others' bands in; the others write part files only.
            With objects, process 0 passes ``found`` and the others record theirs in parts
            (``part.objects``).

    Returns:
        The :class:`SceneResult`.

    Raises:
        InputError: unreadable input, or settings that need the whole image at once.

    """
    s = segmentor.settings
    if s.slide_crop == 0:
        raise InputError(
            f"{path}: reading a scene by windows needs sliding windows; pass --slide-crop and --slide-stride."
        )
    if s.parsed_zoom is not None:
        raise InputError(f"{path}: --zoom ranks regions of the whole first pass, not by windows.")
    names = segmentor.vocabulary.labels
    with bounded_gdal_cache(), SceneReader(path, bands, stretch, header) as reader:
        height, width = reader.height, reader.width
        windows = views_for(height, width, s.slide_crop, s.slide_stride)
        disjoint = tiles_without_overlap(windows, height, width)
        skip = segmentor.can_skip(windows, height, width)
        rows, top, bottom, cuts = window_rows(windows), 0, height, [0, height]
        row_tops = [row[0].y1 for row in rows]  # of every row of windows of the scene
        if part is not None:  # the rows of windows touching this process's band
            cuts = row_bounds(rows, height, part.world_size)
            top, bottom = cuts[part.rank], cuts[part.rank + 1]
            rows = touching_rows(rows, top, bottom)
        first_row = row_tops.index(rows[0][0].y1) if rows else 0  # index of rows[0] in the scene
        # the buffer starts at most one block above a row of windows and reaches its bottom
        buffer = RowBuffer(len(segmentor.vocabulary.names), min(s.slide_crop + GEOTIFF_BLOCK, height), width)
        presence = torch.zeros(len(segmentor.vocabulary.names))
        done = skipped = 0
        total = sum(len(row) for row in rows)
        quick = _QuickLook(height, width)
        seen = _ReadRows(buffer.count.shape[0], width, quick.step)
        if rows:  # where one process's buffer starts when this row of windows comes
            buffer.top = seen.top = rows[0][0].y1 // GEOTIFF_BLOCK * GEOTIFF_BLOCK
        table = table or ClassTable.build(names, palette(len(names)), s.low_score_label == UNCLASSIFIED_LABEL)
        # holds only the instances later windows may still meet (and, without a spill, the kept ones)
        objects = StreamingDedup(spill=found if isinstance(found, ObjectSpill) else None)
        if part is None or part.rank == 0:
            writer: SceneWriter | PartWriter = SceneWriter(
                paths["labels"], reader, table, paths.get("scores"), names, cog=cog
            )
        else:
            writer = PartWriter(part, top, bottom, width, len(names), "scores" in paths)
        with writer:
            valids: dict[Window, np.ndarray] = {}  # of the windows read and not yet added

            def read(window: Window) -> Tensor | None:
                rgb, valid = reader.read(*window)
                seen.add(window, rgb, valid)  # the rows are finished from these, not read again
                if disjoint and not valid.any():
                    return None  # all nodata (255) whatever it would predict
                valids[window] = valid
                return to_chw_uint8(rgb)

            def add(window: Window, output: ViewOutput) -> None:
                buffer.add(window, output.logits.cpu())
                torch.maximum(presence, output.presence.cpu(), out=presence)
                valid = valids.pop(window)
                if output.instances is not None:  # cut to the valid pixels, then to image coordinates
                    kept = restricted(output.instances, valid)
                    row_objects.extend(shifted(one, window.y1, window.x1) for one in kept)

            def settled(row: int, found_in_row: list[Instance]) -> None:
                """The instances of the scene's ``row``-th row of windows, then what can be settled."""
                objects.add(found_in_row)
                if row < len(row_tops) - 1:
                    objects.settle(row_tops[row + 1])  # later instances start at or below that row

            def progress(count: int) -> None:
                nonlocal done
                done += count
                if on_view is not None:
                    on_view(done, total)

            instances = found is not None or (part is not None and part.objects)
            failure: InputError | None = None
            try:
                for r, row in enumerate(rows):
                    row_objects: list[Instance] = []
                    ran = run_windows(
                        segmentor.engine, row, read, add, skip=skip, instances=instances, on_batch=progress
                    )
                    owned = row[0].y1 >= top  # each row of windows is counted (and its objects kept) once
                    skipped += ran if owned else 0
                    if isinstance(writer, PartWriter):
                        if owned:
                            writer.add_objects(first_row + r, row_objects)
                    elif found is not None:
                        settled(first_row + r, row_objects)
                    if r == len(rows) - 1:
                        final = bottom
                    else:  # rows above the next windows are final; write whole GeoTIFF blocks only
                        final = min(rows[r + 1][0].y1 // GEOTIFF_BLOCK * GEOTIFF_BLOCK, bottom)
                    if final > max(buffer.top, top):
                        rows_done = (max(buffer.top, top), final)
                        _finish_rows(segmentor, seen, writer, buffer, rows_done, quick, "scores" in paths)
                    if final > buffer.top:
                        buffer.drop(final)
                        seen.drop(final)
                    release_free_memory()
            except InputError as error:  # the other processes hear of it in part.merge below
                if part is None:
                    raise
                failure = error
            any_valid = quick.any_valid
            if part is not None:
                if part.rank > 0 and failure is None:
                    writer.close((quick.rgb, quick.labels))  # type: ignore[union-attr]
                try:
                    presence, skipped, any_valid = part.merge(failure, presence, skipped, any_valid)
                    if part.rank > 0:
                        return SceneResult(
                            names, _class_presence(segmentor, presence), height, width, len(windows), skipped
                        )
                    on_objects = settled if found is not None else None
                    assemble_parts(part, cuts, writer, quick, "scores" in paths, on_objects)  # type: ignore[arg-type]
                finally:
                    if part.rank == 0:
                        part.remove()
    if isinstance(found, list):
        found.extend(objects.finish())
    elif found is not None:
        objects.finish()  # the last rows' objects into the spill
    if not any_valid:
        logger.warning("%s: every pixel is nodata; all labels are 255 (nodata).", path)
    with atomic_path(paths["overlay"]) as temp:
        overlay(*quick.arrays(), names).save(temp, format="PNG")
    class_presence = _class_presence(segmentor, presence)
    return SceneResult(
        names, class_presence, height, width, len(windows), skipped, reader.crs, reader.transform
    )


def _class_presence(segmentor: Segmentor, presence: Tensor) -> Tensor:
    """``[K]`` presence per class from the ``[P]`` presence per name (max over a class's names)."""
    name_class, classes = segmentor.vocabulary.name_class, len(segmentor.vocabulary.labels)
    return names_to_classes(presence[:, None, None], name_class, classes)[:, 0, 0]


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Each window allocates and frees tensors of many sizes; glibc keeps the freed blocks
    in its heaps, so without this the resident set of a 10,000 x 10,000 scene grew by
    about 1 GB over its 400 windows (measured with ``benchmarks/scene_memory.py``).
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: ctypes.CDLL | bool | None = None

#: Rows finished at a time (bounds the temporaries of the class rules).
FINISH_ROWS = 64


def _finish_rows(
    segmentor: Segmentor,
    seen: _ReadRows,
    writer: SceneWriter | PartWriter,
    buffer: RowBuffer,
    rows: tuple[int, int],
    quick: _QuickLook,
    scores: bool,
) -> None:
    """Labels (and logits) of scene rows ``rows[0] .. rows[1]``, as :meth:`Segmentor.predict` makes them."""
    s = segmentor.settings
    vocabulary = segmentor.vocabulary
    first, final = rows
    for y in range(first, final, FINISH_ROWS):
        y_end = min(y + FINISH_ROWS, final)
        samples, valid = seen.rows(y, y_end)
        low = s.low_score_label
        class_logits, labels = finish(
            buffer.mean(y, y_end), valid, vocabulary.name_class, len(vocabulary), segmentor.thresholds, low
        )
        writer.write_rows(y, labels, scores_for_writing(class_logits, valid) if scores else None)
        quick.add(y, samples, labels, valid)


class _ReadRows:
    """What the window reads saw of the buffered scene rows ``[top, top + capacity)``.

    ``valid`` ``[capacity, W]`` bool (False on nodata, and where no window was read yet)
    and the quick-look's samples of the RGB: ``[capacity, ceil(W / step), 3]`` uint8, set
    on the rows ``y % step == 0`` at the columns ``x % step == 0``. Every pixel reads alike
    in any window (the stretch is the scene's), so the rows are finished from what the
    windows read, without reading the scene a second time.
    """

    def __init__(self, capacity: int, width: int, step: int) -> None:
        self.valid = np.zeros((capacity, width), bool)
        self.samples = np.zeros((capacity, math.ceil(width / step), 3), np.uint8)
        self.step = step
        self.top = 0

    def add(self, window: Window, rgb: np.ndarray, valid: np.ndarray) -> None:
        """Keep a window's ``[h, w] valid`` and the samples of its ``[h, w, 3] rgb``."""
        y1, x1, step = window.y1 - self.top, window.x1, self.step
        self.valid[y1 : y1 + valid.shape[0], x1 : x1 + valid.shape[1]] = valid
        first_y, first_x = (-window.y1) % step, (-x1) % step
        picked = rgb[first_y::step, first_x::step]
        column = (x1 + first_x) // step
        self.samples[y1 + first_y : y1 + rgb.shape[0] : step, column : column + picked.shape[1]] = picked

    def rows(self, y1: int, y2: int) -> tuple[np.ndarray, np.ndarray]:
        """``(samples, valid)`` of rows ``y1 .. y2``.

        ``samples``: ``[n, ceil(W / step), 3]``, the rows ``y % step == 0``; ``valid``: ``[y2 - y1, W]``.
        Both are views of rows that :meth:`drop` moves.
        """
        first = (-y1) % self.step
        return self.samples[y1 - self.top + first : y2 - self.top : self.step], self.valid[
            y1 - self.top : y2 - self.top
        ]

    def drop(self, upto: int) -> None:
        """Forget the rows above ``upto``; the rows then start there."""
        n = upto - self.top
        for plane in (self.valid, self.samples):
            plane[: len(plane) - n] = plane[n:].copy()
            plane[len(plane) - n :] = 0
        self.top = upto


class _QuickLook:
    """Every ``step``-th row and column of the image and labels, for the overlay picture."""

    def __init__(self, height: int, width: int) -> None:
        self.step = max(1, math.ceil(max(height, width) / MAX_OVERLAY_SIDE))
        self.rgb: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.any_valid = False

    def add(self, y: int, samples: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> None:
        """Rows ``y .. y + len(labels)``: their RGB ``samples`` (:meth:`_ReadRows.rows`), labels and valid."""
        first = (-y) % self.step
        self.rgb.append(samples.copy())  # a view of rows that will be dropped
        self.labels.append(labels[first :: self.step, :: self.step])
        self.any_valid |= bool(valid.any())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.rgb), np.concatenate(self.labels)
