"""The connected regions of a labels raster, strip by strip (:func:`regions_by_strips`).

Each strip is labelled per class (4-connectivity, exact pixel counts and score sums) and
polygonized in pixel coordinates; a region touching a strip boundary stays open, linked to
the pieces of its class across the boundary (union-find), and is unioned once no piece of
its group reaches the next strip (:mod:`ovearth.data.vectorize` writes them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.errors import RasterioError
from rasterio.windows import Window
from scipy import ndimage

from ..constants import NODATA_LABEL, UNCLASSIFIED_LABEL
from ..errors import InputError
from .pixel_polygons import region_polygons

#: Pixels of a strip by default (its rows: this / the width): a strip of small regions
#: holds about 150 bytes a pixel while it is polygonized (GDAL's polygons, ids, counts).
STRIP_PIXELS = 2**21

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


@dataclass
class Region:
    """A region, or a piece of one cut by a strip boundary, in pixel coordinates."""

    value: int
    pixels: int
    score_sum: float
    score_count: int
    polygon: shapely.Geometry | None = None  # corners (column, row), integers


@contextlib.contextmanager
def open_raster(path: str | Path, what: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster, or one InputError sentence naming it."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such {what} file.")
    try:
        src = rasterio.open(path)
    except RasterioError as error:
        raise InputError(f"{path}: not a readable {what} raster ({error}).") from None
    with src:
        yield src


def regions_by_strips(
    labels: Path, scores: Path | None, height: int, classes: int, strip_rows: int
) -> Iterator[Region]:
    """The finished regions of the raster, strip by strip, in pixel coordinates.

    Held at a time: one strip (its rasters, and per-piece counts as arrays) and the open
    pieces (those touching a boundary between strips, until their region is finished).
    The rasters are opened again for every strip: closing them drops the blocks GDAL
    cached, which would otherwise grow with the scene up to ``GDAL_CACHEMAX``.
    """
    open_pieces: dict[int, Region] = {}
    links = UnionFind()
    prev_ids = prev_values = None
    base = 0  # global id of a piece = base of its strip + its id in the strip
    for row0 in range(0, height, strip_rows):
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(open_raster(labels, "labels"))
            score_src = stack.enter_context(open_raster(scores, "scores")) if scores is not None else None
            window = Window(0, row0, src.width, min(strip_rows, height - row0))
            values = src.read(1, window=window)
            check_values(values, classes, src.name)
            read_score = (
                (lambda v, w=window, s=score_src: s.read(v + 1, window=w)) if score_src is not None else None
            )
            ids, stats = strip_pieces(values, classes, read_score)
        count = len(stats[0])
        edge = np.zeros(count + 1, bool)  # by id in the strip: touches the top or bottom boundary
        if row0 > 0:
            edge[ids[0]] = True
        last = row0 + len(values) >= height
        if not last:
            edge[ids[-1]] = True
        seen = np.zeros(count + 1, bool)
        value, pixels, sums, counts = stats
        for i, polygon in strip_polygons(ids, row0):
            if seen[i]:  # GDAL gives one polygon per 4-connected set of one value: never happens
                raise RuntimeError(f"vectorize: two polygons for one region at row {row0}")
            seen[i] = True
            piece = Region(int(value[i - 1]), int(pixels[i - 1]), float(sums[i - 1]), int(counts[i - 1]))
            piece.polygon = polygon
            if edge[i]:
                open_pieces[base + i] = piece
            else:
                yield piece
        gids = np.where(ids > 0, ids.astype(np.int64) + base, 0)
        if row0 > 0:  # same class right across the boundary: one region
            same = (prev_values == values[0]) & (prev_ids > 0)
            for a, b in np.unique(np.stack([prev_ids[same], gids[0][same]], axis=1), axis=0).tolist():
                links.union(a, b)
        alive = (
            set() if last else {links.find(base + local) for local in np.unique(ids[-1]).tolist() if local}
        )
        groups: dict[int, list[int]] = {}
        for gid in open_pieces:
            root = links.find(gid)
            if root not in alive:
                groups.setdefault(root, []).append(gid)
        for members in groups.values():
            yield merge_pieces([open_pieces.pop(gid) for gid in members])
            links.forget(members)
        prev_ids, prev_values = gids[-1], values[-1]
        base += count


def default_strip_rows(src) -> int:
    """Default rows per strip: about :data:`STRIP_PIXELS` pixels, whole blocks when they fit."""
    rows = max(1, STRIP_PIXELS // src.width)
    block = src.block_shapes[0][0]
    return rows - rows % block if block <= rows else rows


def strip_polygons(ids: np.ndarray, row0: int) -> Iterator[tuple[int, shapely.Polygon]]:
    """(id, polygon) of every piece of a strip, in pixel coordinates (GDAL Polygonize, 4-connected)."""
    values, polygons = region_polygons(ids, ids > 0, rasterio.Affine.translation(0, row0))
    return zip(values, polygons, strict=True)


def check_values(values: np.ndarray, classes: int, path: str) -> None:
    """Raise an InputError naming ``path`` if ``values`` hold a label that is no class, 254 or 255."""
    bad = np.unique(values[(values >= classes) & (values != UNCLASSIFIED_LABEL) & (values != NODATA_LABEL)])
    if bad.size:
        raise InputError(
            f"{path}: holds the value {int(bad[0])}, which is no class of its table "
            f"({classes} classes, 0..{classes - 1}) nor {UNCLASSIFIED_LABEL}/{NODATA_LABEL}."
        )


def strip_pieces(
    values: np.ndarray, classes: int, read_score: Callable[[int], np.ndarray] | None
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Label one strip: ``[rows, W]`` int32 ids (0: no class, ``i``: piece ``i``) and per piece arrays.

    The arrays (index ``i - 1`` for piece ``i``) are its class value, pixels, score sum and
    count of finite scores.
    """
    ids = np.zeros(values.shape, np.int32)
    stats: list[list[np.ndarray]] = [[], [], [], []]
    count = 0
    for value in np.unique(values[values < classes]).tolist():
        mask = values == value
        lab, n = ndimage.label(mask, structure=_CROSS)
        flat = lab[mask]
        ids[mask] = flat + count
        count += n
        pixels = np.bincount(flat, minlength=n + 1)[1:]
        sums = counts = np.zeros(n)
        if read_score is not None:
            band = read_score(value)[mask].astype(np.float64)
            finite = np.isfinite(band)
            sums = np.bincount(flat, weights=np.where(finite, band, 0.0), minlength=n + 1)[1:]
            counts = np.bincount(flat, weights=finite, minlength=n + 1)[1:]
        for column, array in zip(stats, (np.full(n, value), pixels, sums, counts), strict=True):
            column.append(array)
    return ids, tuple(np.concatenate(c) if c else np.zeros(0) for c in stats)


def merge_pieces(pieces: list[Region]) -> Region:
    """One region from the pieces of it that strip boundaries cut (edge-connected, one class)."""
    if len(pieces) == 1:
        return pieces[0]
    polygon = shapely.union_all([p.polygon for p in pieces], grid_size=1.0)
    return Region(
        pieces[0].value,
        sum(p.pixels for p in pieces),
        sum(p.score_sum for p in pieces),
        sum(p.score_count for p in pieces),
        shapely.simplify(polygon, 0.0),  # drop the vertices left on the cut lines
    )


class UnionFind:
    """Groups of piece ids (only pieces ever linked are stored)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        """The group's smallest id (the root)."""
        root = item
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while item != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        """Put ``a`` and ``b`` in one group."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def forget(self, items: list[int]) -> None:
        """Drop finished ids."""
        for item in items:
            self.parent.pop(item, None)
