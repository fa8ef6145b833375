"""Polygons from a labels raster: one GIS feature per connected region of each class.

A region is a 4-connected set of pixels of one class value ``0..K-1`` (as GDAL Polygonize
with 4-connectivity: pixels touching only at a corner are separate regions);
:data:`UNCLASSIFIED_LABEL` and :data:`NODATA_LABEL` pixels make no polygons (they are holes
or gaps). Polygons are in the raster's CRS, with holes, and carry the fields of
:data:`FIELDS`.

The raster is read by strips and the features are streamed out, so memory does not grow
with the scene's area. The labels (and the scores) are read by windows of ``strip_rows``
rows. Each strip is labelled per class (``scipy.ndimage.label``, exact pixel counts and
score sums) and polygonized in pixel coordinates (integer corners, exact). A region not
touching the strip's top or bottom row is finished at once; the pieces that do stay open:
they are linked to the pieces of the same class directly across the boundary (edge
contact only, union-find) and unioned when no piece of their group reaches the next strip.
Only then are coordinates mapped through the affine transform, so the features equal
those of the whole raster vectorized at once, whatever ``strip_rows`` is. Finished regions
are written by batches of ``batch_size`` (:class:`~ovearth.data.vector_io.VectorWriter`):
memory holds one strip, the open regions (those crossing the current strip boundary; a
region crossing many strips keeps its pieces until it is finished) and one batch.
Coverage simplification (``simplify`` > 0) needs all polygons together, so it holds every
polygon in memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
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
from .legend import ClassTable, read_class_table
from .pixel_polygons import region_polygons
from .vector_io import VectorWriter, check_vector_path

logger = logging.getLogger(__name__)

#: Attribute fields of every feature, in this order.
FIELDS = ("class_index", "class_name", "pixels", "area_m2", "mean_score")
_DTYPES = (np.int32, object, np.int64, np.float64, np.float64)  # of FIELDS

#: Default number of features written at a time by :func:`vectorize`.
BATCH_SIZE = 20_000

#: Pixels of a strip by default (its rows: this / the width): a strip of small regions
#: holds about 150 bytes a pixel while it is polygonized (GDAL's polygons, ids, counts).
STRIP_PIXELS = 2**21

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


@dataclass(frozen=True)
class VectorSummary:
    """What :func:`vectorize` wrote.

    Attributes:
        path: the vector file.
        features: number of features (regions) written.
        per_class: class name -> features of that class, for every class of the table.
        crs: the CRS as a string ("EPSG:32618" or WKT), None when the raster has none.
        area_unit: "m2" when the CRS is projected (``area_m2`` filled, ``min_area`` in
            square metres, ``simplify`` in metres), else "pixels" (``area_m2`` null,
            ``min_area`` in pixels, ``simplify`` in pixel widths).

    """

    path: Path
    features: int
    per_class: dict[str, int]
    crs: str | None
    area_unit: str


@dataclass
class _Region:
    """A region, or a piece of one cut by a strip boundary, in pixel coordinates."""

    value: int
    pixels: int
    score_sum: float
    score_count: int
    polygon: shapely.Geometry | None = None  # corners (column, row), integers


def vectorize(
    labels: str | Path,
    out: str | Path,
    *,
    scores: str | Path | None = None,
    table: ClassTable | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    strip_rows: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> VectorSummary:
    """Write one polygon per 4-connected region of each class of a labels raster.

    The features are written while the raster is read (by strips), ``batch_size`` at a
    time, in the order their regions are finished, each batch sorted top-left first: the
    order is the same for the same ``strip_rows`` and ``batch_size``, the features are the
    same whatever they are. With ``simplify`` > 0 every polygon is held in memory (coverage
    simplification needs them all together) and they are written sorted top-left first.

    Args:
        labels: single-band uint8 labels raster (``0..K-1``, 254 unclassified, 255 nodata).
        out: ``.gpkg``, ``.geojson`` or ``.parquet`` (see :func:`write_vector`).
        scores: float raster with one band per class (band ``k`` = score of class ``k``,
            same size as ``labels``); gives ``mean_score`` (the mean of the region's class
            band over its pixels, non-finite values skipped), else null.
        table: the class table; default: the one the labels GeoTIFF carries.
        min_area: regions smaller than this are dropped (square metres when the CRS is
            projected, else pixels).
        simplify: coverage simplification tolerance (metres when projected, else pixels):
            all polygons are simplified together, so neighbours keep their shared edges;
            holds every polygon in memory. 0 keeps the exact pixel edges and streams.
        strip_rows: rows read at a time (memory bound); the features do not depend on it.
            Default: about :data:`STRIP_PIXELS` pixels a strip, in whole blocks of the
            labels raster when a block has fewer rows than that.
        batch_size: features written at a time (memory bound).

    Returns:
        A :class:`VectorSummary`. ``area_m2`` is ``pixels`` x the pixel area in square
        metres (the CRS's linear unit converted), null without a projected CRS.

    Raises:
        InputError: a missing or unreadable labels raster, one that is not single-band
            uint8, that has no class table (and none is given), or holds values that are
            no class; a scores raster that cannot be read or does not match; a negative
            or non-finite ``min_area`` / ``simplify``; an unsupported output suffix.

    """
    labels = Path(labels)
    out = check_vector_path(out)
    for name, number in (("min_area", min_area), ("simplify", simplify)):
        if not math.isfinite(number) or number < 0:
            option = name.replace("_", "-")
            raise InputError(f"{name} (--{option}) must be a finite number >= 0, got {number}.")
    for name, number in (("strip_rows", strip_rows), ("batch_size", batch_size)):
        if number is not None and number < 1:
            raise InputError(f"{name} must be at least 1, got {number}.")
    with _open(labels, "labels") as src:
        if src.count != 1 or src.dtypes[0] != "uint8":
            raise InputError(
                f"{labels}: a labels raster must be single-band uint8, "
                f"got {src.count} band(s) of {src.dtypes[0]}."
            )
        table = table if table is not None else read_class_table(labels)
        if scores is not None:
            with _open(scores, "scores") as score_src:
                _check_scores(score_src, src, len(table.names))
        pixel_area, unit = pixel_area_m2(src.crs, src.transform)
        crs, transform, height = src.crs, src.transform, src.height
        strip_rows = strip_rows or _strip_rows(src)
    regions = (
        r
        for r in _regions(labels, scores, height, len(table.names), strip_rows)
        if r.pixels * (pixel_area or 1.0) >= min_area
    )
    per_class = np.zeros(len(table.names), np.int64)
    fields = dict(zip(FIELDS, _DTYPES, strict=True))
    with VectorWriter(out, fields, crs, layer=out.stem, geometry_type="Polygon") as writer:

        def write(batch: list[_Region]) -> None:
            batch = _top_left_first(batch)
            index = np.array([r.value for r in batch], dtype=np.int32)
            geoms = _geometries([r.polygon for r in batch], transform, unit, simplify)
            writer.write(geoms, _columns(batch, index, table, pixel_area))
            per_class[:] += np.bincount(index, minlength=len(per_class))

        if simplify > 0:
            write(list(regions))  # coverage simplification: every polygon at once
        else:
            batch = []
            for region in regions:
                batch.append(region)
                if len(batch) == batch_size:
                    write(batch)
                    batch = []
            write(batch)
    features = writer.features
    logger.info("vectorize: %d regions from %s -> %s", features, labels, out)
    crs_text = crs.to_string() if crs else None
    return VectorSummary(
        out,
        features,
        {name: int(per_class[k]) for k, name in enumerate(table.names)},
        crs_text,
        "m2" if unit else "pixels",
    )


def _top_left_first(regions: list[_Region]) -> list[_Region]:
    """Sorted by the top, then the left of their bounds, then class and pixels."""
    bounds = shapely.bounds(np.array([r.polygon for r in regions], dtype=object)).reshape(-1, 4)
    order = np.lexsort(([r.pixels for r in regions], [r.value for r in regions], bounds[:, 0], bounds[:, 1]))
    return [regions[i] for i in order]


def _columns(regions: list[_Region], index: np.ndarray, table: ClassTable, pixel_area: float | None) -> dict:
    """The :data:`FIELDS` of the regions."""
    pixels = np.array([r.pixels for r in regions], dtype=np.int64)
    sums = np.array([r.score_sum for r in regions], dtype=np.float64)
    counts = np.array([r.score_count for r in regions], dtype=np.float64)
    nan = np.full(len(regions), np.nan)
    return {
        "class_index": index,
        "class_name": np.array([table.names[v] for v in index], dtype=object),
        "pixels": pixels,
        "area_m2": pixels * pixel_area if pixel_area is not None else nan,
        "mean_score": np.divide(sums, counts, out=nan.copy(), where=counts > 0),  # NaN (null) w/o scores
    }


@contextlib.contextmanager
def _open(path: str | Path, what: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster, or one InputError sentence naming it."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such {what} file.")
    try:
        src = rasterio.open(path)
    except RasterioError as error:
        raise InputError(f"{path}: not a readable {what} raster ({error}).") from None
    with src:
        yield src


def _check_scores(src, labels, classes: int) -> None:
    if (src.height, src.width) != (labels.height, labels.width):
        raise InputError(
            f"{src.name}: scores are {src.width} x {src.height} pixels but the labels "
            f"{labels.width} x {labels.height}."
        )
    if src.count != classes:
        raise InputError(f"{src.name}: {src.count} score band(s) but the class table has {classes} classes.")


def _geometries(polygons: list, transform, unit: float | None, simplify: float) -> np.ndarray:
    """Pixel-coordinate polygons -> CRS polygons, coverage-simplified when ``simplify`` > 0."""
    geoms = np.array(polygons, dtype=object)
    if simplify > 0 and len(geoms):
        geoms = shapely.segmentize(geoms, 1.0)  # a vertex on every pixel corner: shared edges match
        if unit is None:  # tolerance in pixels
            geoms = shapely.coverage_simplify(geoms, simplify)
    geoms = to_crs_coordinates(transform, geoms)
    if simplify > 0 and unit is not None and len(geoms):  # tolerance in metres -> CRS units
        geoms = shapely.coverage_simplify(geoms, simplify / unit)
    return geoms


def pixel_area_m2(crs, transform) -> tuple[float | None, float | None]:
    """Pixel area in square metres and the CRS's metres per unit; (None, None) unless projected."""
    if crs is None or not crs.is_projected:
        return None, None
    unit = float(crs.linear_units_factor[1])
    return abs(transform.determinant) * unit * unit, unit


def to_crs_coordinates(transform, geoms: np.ndarray) -> np.ndarray:
    """Pixel corners (column, row) -> CRS coordinates (the same corner always maps alike)."""
    t = transform

    def affine(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f])

    return shapely.transform(geoms, affine)


def _regions(
    labels: Path, scores: Path | None, height: int, classes: int, strip_rows: int
) -> Iterator[_Region]:
    """The finished regions of the raster, strip by strip, in pixel coordinates.

    Held at a time: one strip (its rasters, and per-piece counts as arrays) and the open
    pieces (those touching a boundary between strips, until their region is finished).
    The rasters are opened again for every strip: closing them drops the blocks GDAL
    cached, which would otherwise grow with the scene up to ``GDAL_CACHEMAX``.
    """
    open_pieces: dict[int, _Region] = {}
    links = _UnionFind()
    prev_ids = prev_values = None
    base = 0  # global id of a piece = base of its strip + its id in the strip
    for row0 in range(0, height, strip_rows):
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(_open(labels, "labels"))
            score_src = stack.enter_context(_open(scores, "scores")) if scores is not None else None
            window = Window(0, row0, src.width, min(strip_rows, height - row0))
            values = src.read(1, window=window)
            _check_values(values, classes, src.name)
            read_score = (
                (lambda v, w=window, s=score_src: s.read(v + 1, window=w)) if score_src is not None else None
            )
            ids, stats = _strip_pieces(values, classes, read_score)
        count = len(stats[0])
        edge = np.zeros(count + 1, bool)  # by id in the strip: touches the top or bottom boundary
        if row0 > 0:
            edge[ids[0]] = True
        last = row0 + len(values) >= height
        if not last:
            edge[ids[-1]] = True
        seen = np.zeros(count + 1, bool)
        value, pixels, sums, counts = stats
        for i, polygon in _strip_polygons(ids, row0):
            if seen[i]:  # GDAL gives one polygon per 4-connected set of one value: never happens
                raise RuntimeError(f"vectorize: two polygons for one region at row {row0}")
            seen[i] = True
            piece = _Region(int(value[i - 1]), int(pixels[i - 1]), float(sums[i - 1]), int(counts[i - 1]))
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
            yield _merge([open_pieces.pop(gid) for gid in members])
            links.forget(members)
        prev_ids, prev_values = gids[-1], values[-1]
        base += count


def _strip_rows(src) -> int:
    """Default rows per strip: about :data:`STRIP_PIXELS` pixels, whole blocks when they fit."""
    rows = max(1, STRIP_PIXELS // src.width)
    block = src.block_shapes[0][0]
    return rows - rows % block if block <= rows else rows


def _strip_polygons(ids: np.ndarray, row0: int) -> Iterator[tuple[int, shapely.Polygon]]:
    """(id, polygon) of every piece of a strip, in pixel coordinates (GDAL Polygonize, 4-connected)."""
    values, polygons = region_polygons(ids, ids > 0, rasterio.Affine.translation(0, row0))
    return zip(values, polygons, strict=True)


def _check_values(values: np.ndarray, classes: int, path: str) -> None:
    bad = np.unique(values[(values >= classes) & (values != UNCLASSIFIED_LABEL) & (values != NODATA_LABEL)])
    if bad.size:
        raise InputError(
            f"{path}: holds the value {int(bad[0])}, which is no class of its table "
            f"({classes} classes, 0..{classes - 1}) nor {UNCLASSIFIED_LABEL}/{NODATA_LABEL}."
        )


def _strip_pieces(
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


def _merge(pieces: list[_Region]) -> _Region:
    """One region from the pieces of it that strip boundaries cut (edge-connected, one class)."""
    if len(pieces) == 1:
        return pieces[0]
    polygon = shapely.union_all([p.polygon for p in pieces], grid_size=1.0)
    return _Region(
        pieces[0].value,
        sum(p.pixels for p in pieces),
        sum(p.score_sum for p in pieces),
        sum(p.score_count for p in pieces),
        shapely.simplify(polygon, 0.0),  # drop the vertices left on the cut lines
    )


class _UnionFind:
    """Groups of piece ids (only pieces ever linked are stored)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        root = item
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while item != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def forget(self, items: list[int]) -> None:
        for item in items:
            self.parent.pop(item, None)
