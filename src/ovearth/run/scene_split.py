"""One scene on many processes: the rows of the scene divided among torchrun's processes.

Under ``torchrun`` a scene read by windows can be shared by every process instead of
going to one of them (:func:`~ovearth.run.scene.segment_scene` with a :class:`ScenePart`):

* :func:`row_bounds` cuts the scene's pixel rows into ``world_size`` bands at multiples
  of the GeoTIFF block, so that each band holds about the same number of rows of windows;
* process ``k`` *finishes* the pixel rows of band ``k`` and runs every window that touches
  them, in the one-process order (:func:`touching_rows`). A pixel's logit sum is thus
  made of the same windows added in the same order as by one process, so the labels and
  scores are equal bit for bit; the windows that reach across a cut are run by both
  neighbours (at most ``ceil(crop / stride)`` rows of windows per cut, none when the
  windows do not overlap);
* processes ``k > 0`` write their band into hidden part files beside the outputs
  (:class:`PartWriter`: plain tiled GeoTIFFs and the quick-look's rows); process 0
  writes its own band, waits for the others, copies their parts in order into the one
  output (:func:`part_rows`) and finishes it as one process would (COG and overviews,
  side files, overlay, polygons). The parts are then removed.

Objects (``--objects``): each row of windows is *owned* by the band holding its top row;
a process writes the instances of the rows it owns, in arrival order, to a part file
(:meth:`PartWriter.add_objects`), and process 0, after its own rows, feeds every part's rows
in order into its one :class:`~ovearth.segment.instances.StreamingDedup`, settling after
each row as one process does: the objects layer equals one process's, feature for feature.

The output folder must be one every process can read (on several nodes: a shared file
system).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import torch
import torch.distributed as dist
from rasterio.windows import Window as RasterWindow

from ..data.atomic import atomic_path
from ..data.cog import GEOTIFF_BLOCK
from ..errors import InputError
from ..segment.instances import Instance, encode_instance, read_instance
from ..segment.windows import Window

#: a row of windows in an objects part file: its index among the scene's rows, its instance count
_ROW = struct.Struct("<qq")


def row_bounds(rows: list[list[Window]], height: int, parts: int, block: int = GEOTIFF_BLOCK) -> list[int]:
    """Cuts of the scene's pixel rows into ``parts`` bands: ``[0, b_1, ..., height]``.

    ``b_k`` is the top of the ``round(k R / parts)``-th of the ``R`` rows of windows,
    rounded down to a multiple of ``block`` (the rows a single process would have
    finished before that row of windows). Bands may be empty when there are fewer rows
    of windows than parts; the cuts never decrease.
    """
    cuts = [0]
    for k in range(1, parts):
        index = min(round(k * len(rows) / parts), len(rows) - 1)
        cut = rows[index][0].y1 // block * block if index > 0 else 0
        cuts.append(max(cut, cuts[-1]))
    cuts.append(height)
    return cuts


def touching_rows(rows: list[list[Window]], top: int, bottom: int) -> list[list[Window]]:
    """The rows of windows that cover any pixel row in ``[top, bottom)``, in order."""
    return [row for row in rows if row[0].y1 < bottom and row[0].y2 > top]


@dataclass(frozen=True)
class ScenePart:
    """The share of one scene that this process takes.

    Attributes:
        rank: this process (0 assembles the output).
        world_size: processes sharing the scene.
        folder: where the parts are written (the output folder).
        stem: the labels output's stem (names the part files).
        objects: SAM 3's objects are written too (``--objects``).

    """

    rank: int
    world_size: int
    folder: Path
    stem: str
    objects: bool = False

    def paths(self, rank: int) -> dict[str, Path]:
        """Part files of process ``rank``: ``labels``, ``scores`` (GeoTIFFs), ``quick``, ``objects``."""
        base = self.folder / f".{self.stem}.rank{rank}-of-{self.world_size}"
        return {
            "labels": Path(f"{base}.labels.part.tif"),
            "scores": Path(f"{base}.scores.part.tif"),
            "quick": Path(f"{base}.quick.part.npz"),
            "objects": Path(f"{base}.objects.part"),
        }

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (a collective: every process calls it)."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def merge(
        self, failure: Exception | None, presence: torch.Tensor, skipped: int, any_valid: bool
    ) -> tuple[torch.Tensor, int, bool]:
        """The whole scene's ``([P] presence, skipped windows, any valid pixel)`` from every band's.

        A collective: each process passes its own band's values and the error it met, if
        any. Presence is the max over the bands, the skipped windows their sum.

        Raises:
            Exception: ``failure``, or else the first problem another process met, in every
                process (so that all of them stop alike).

        """
        mine = (str(failure) if failure else None, presence.tolist(), skipped, any_valid)
        shares = self.gather(mine)
        problems = [share[0] for share in shares if share[0]]
        if problems:
            raise failure or InputError(problems[0])
        merged = torch.tensor([share[1] for share in shares]).amax(0)
        return merged, sum(share[2] for share in shares), any(share[3] for share in shares)

    def remove(self) -> None:
        """Remove every process's part files (process 0, once assembled or on failure)."""
        for rank in range(1, self.world_size):
            for path in self.paths(rank).values():
                path.unlink(missing_ok=True)


class PartWriter:
    """The writer of a band of rows ``[top, bottom)`` into part files (processes ``k > 0``).

    Same ``write_rows`` as :class:`~ovearth.data.scene.SceneWriter`; plain tiled deflate
    GeoTIFFs without georeferencing (process 0 copies the pixels, not the files).
    """

    def __init__(
        self, part: ScenePart, top: int, bottom: int, width: int, classes: int, scores: bool
    ) -> None:
        self.top, self.paths = top, part.paths(part.rank)
        part.folder.mkdir(parents=True, exist_ok=True)  # process 0 may not have made it yet
        rows = max(bottom - top, 1)
        profile = dict(driver="GTiff", height=rows, width=width, tiled=True, compress="deflate")
        profile.update(blockxsize=GEOTIFF_BLOCK, blockysize=GEOTIFF_BLOCK, BIGTIFF="IF_SAFER")
        self._labels = rasterio.open(self.paths["labels"], "w", count=1, dtype="uint8", **profile)
        self._scores = None
        if scores:
            self._scores = rasterio.open(self.paths["scores"], "w", count=classes, dtype="float32", **profile)
        self._objects = open(self.paths["objects"], "wb") if part.objects else None  # noqa: SIM115

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None or not self._labels.closed:  # a failure, or never closed: nothing kept
            self.abort()

    def write_rows(self, y1: int, labels: np.ndarray, scores: np.ndarray | None = None) -> None:
        """Write ``[h, W]`` labels (and ``[K, h, W]`` scores) of scene rows ``y1 .. y1 + h``."""
        window = RasterWindow(0, y1 - self.top, labels.shape[1], labels.shape[0])
        self._labels.write(labels, 1, window=window)
        if self._scores is not None and scores is not None:
            self._scores.write(scores.astype(np.float32, copy=False), window=window)

    def add_objects(self, row: int, instances: list[Instance]) -> None:
        """The instances of the ``row``-th row of windows (one this band owns), in arrival order."""
        if self._objects is not None:
            self._objects.write(_ROW.pack(row, len(instances)))
            for instance in instances:
                self._objects.write(encode_instance(instance))

    def close(self, quick: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
        """Close the GeoTIFFs and the objects, and save the quick-look rows (atomically)."""
        self._labels.close()
        if self._scores is not None:
            self._scores.close()
        if self._objects is not None:
            self._objects.close()
        with atomic_path(self.paths["quick"]) as temp, open(temp, "wb") as out:
            rgb, labels = quick
            np.savez(
                out,
                count=len(rgb),
                **{f"rgb{i}": a for i, a in enumerate(rgb)},
                **{f"labels{i}": a for i, a in enumerate(labels)},
            )

    def abort(self) -> None:
        """Close and remove what was written (a failure mid-band)."""
        for dataset in (self._labels, self._scores, self._objects):
            if dataset is not None and not dataset.closed:
                dataset.close()
        for path in self.paths.values():
            path.unlink(missing_ok=True)


def part_rows(
    paths: dict[str, Path], top: int, bottom: int, scores: bool
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """A finished part by blocks of rows: ``(y1, [h, W] labels, [K, h, W] scores or None)``."""
    with contextlib.ExitStack() as stack:
        labels_part = stack.enter_context(rasterio.open(paths["labels"]))
        score_part = stack.enter_context(rasterio.open(paths["scores"])) if scores else None
        for y in range(top, bottom, GEOTIFF_BLOCK):
            window = RasterWindow(0, y - top, labels_part.width, min(GEOTIFF_BLOCK, bottom - y))
            values = score_part.read(window=window) if score_part is not None else None
            yield y, labels_part.read(1, window=window), values


def part_quick_look(paths: dict[str, Path]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A finished part's quick-look rows: ``(rgb strips, labels strips)``, small by construction."""
    with np.load(paths["quick"]) as saved:
        count = int(saved["count"])
        return [saved[f"rgb{i}"] for i in range(count)], [saved[f"labels{i}"] for i in range(count)]


class _RowSink(Protocol):
    def write_rows(self, y1: int, labels: np.ndarray, scores: np.ndarray | None = None) -> None: ...


def part_objects(path: Path) -> Iterator[tuple[int, list[Instance]]]:
    """A finished objects part: ``(row index, instances in arrival order)`` per owned row of windows."""
    with open(path, "rb") as file:
        while head := file.read(_ROW.size):
            row, count = _ROW.unpack(head)
            yield row, [read_instance(file) for _ in range(count)]


def assemble_parts(
    part: ScenePart,
    cuts: list[int],
    writer: _RowSink,
    quick: Any,
    scores: bool,
    on_objects: Callable[[int, list[Instance]], None] | None = None,
) -> None:
    """Process 0: copy the bands of processes ``1 ..`` into ``writer``, their quick-look rows into ``quick``.

    In rank order, after process 0's own band, so rows and quick-look strips arrive as
    one process makes them (``quick.rgb`` and ``quick.labels`` are lists of strips);
    with ``on_objects``, each owned row's instances go to ``on_objects(row, instances)``
    in the scene's row order.
    """
    for rank in range(1, part.world_size):
        paths = part.paths(rank)
        for y, labels, values in part_rows(paths, cuts[rank], cuts[rank + 1], scores):
            writer.write_rows(y, labels, values)
        rgb, labels = part_quick_look(paths)
        quick.rgb.extend(rgb)
        quick.labels.extend(labels)
        if on_objects is not None and part.objects:
            for row, instances in part_objects(paths["objects"]):
                on_objects(row, instances)
