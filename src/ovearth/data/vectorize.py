"""Polygons from a labels raster: one GIS feature per connected region of each class.

A region is a 4-connected set of pixels of one class value ``0..K-1`` (as GDAL Polygonize
with 4-connectivity: pixels touching only at a corner are separate regions);
:data:`UNCLASSIFIED_LABEL` and :data:`NODATA_LABEL` pixels make no polygons (they are holes
or gaps). Polygons are in the raster's CRS, with holes, and carry the fields of
:data:`FIELDS`.

Memory is bounded by a strip: the labels (and the scores) are read by windows of
``strip_rows`` rows. Each strip is labelled per class (``scipy.ndimage.label``, exact pixel
counts and score sums) and polygonized in pixel coordinates (integer corners, exact). A
region not touching the strip's top or bottom row is finished at once; the pieces that do
are linked to the pieces of the same class directly across the boundary (edge contact
only, union-find) and unioned when no piece of their group reaches the next strip. Only
then are coordinates mapped through the affine transform, so the result equals vectorizing
the whole raster at once, whatever ``strip_rows`` is.
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
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage

from ..constants import NODATA_LABEL, UNCLASSIFIED_LABEL
from ..errors import InputError
from .legend import ClassTable, read_class_table
from .vector_io import check_vector_path, write_vector

logger = logging.getLogger(__name__)

#: Attribute fields of every feature, in this order.
FIELDS = ("class_index", "class_name", "pixels", "area_m2", "mean_score")

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
    strip_rows: int = 1024,
) -> VectorSummary:
    """Write one polygon per 4-connected region of each class of a labels raster.

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
            0 keeps the exact pixel edges.
        strip_rows: rows read at a time (memory bound); the result does not depend on it.

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
    if strip_rows < 1:
        raise InputError(f"strip_rows must be at least 1, got {strip_rows}.")
    with _open(labels, "labels") as src, contextlib.ExitStack() as stack:
        if src.count != 1 or src.dtypes[0] != "uint8":
            raise InputError(
                f"{labels}: a labels raster must be single-band uint8, "
                f"got {src.count} band(s) of {src.dtypes[0]}."
            )
        table = table if table is not None else read_class_table(labels)
        score_src = stack.enter_context(_open(scores, "scores")) if scores is not None else None
        if score_src is not None:
            _check_scores(score_src, src, len(table.names))
        pixel_area, unit = pixel_area_m2(src.crs, src.transform)
        regions = [
            r
            for r in _regions(src, score_src, len(table.names), strip_rows)
            if r.pixels * (pixel_area or 1.0) >= min_area
        ]
        crs, transform = src.crs, src.transform

    bounds = shapely.bounds(np.array([r.polygon for r in regions], dtype=object)).reshape(-1, 4)
    order = np.lexsort(([r.pixels for r in regions], [r.value for r in regions], bounds[:, 0], bounds[:, 1]))
    regions = [regions[i] for i in order]  # top-left first: the order does not depend on the strips
    index = np.array([r.value for r in regions], dtype=np.int32)
    pixels = np.array([r.pixels for r in regions], dtype=np.int64)
    sums = np.array([r.score_sum for r in regions], dtype=np.float64)
    counts = np.array([r.score_count for r in regions], dtype=np.float64)
    nan = np.full(len(regions), np.nan)
    columns = {
        "class_index": index,
        "class_name": np.array([table.names[v] for v in index], dtype=object),
        "pixels": pixels,
        "area_m2": pixels * pixel_area if pixel_area is not None else nan,
        "mean_score": np.divide(sums, counts, out=nan.copy(), where=counts > 0),  # NaN (null) w/o scores
    }
    geoms = _geometries([r.polygon for r in regions], transform, unit, simplify)
    write_vector(out, geoms, columns, crs, layer=out.stem, geometry_type="Polygon")
    per_class = {name: int((index == k).sum()) for k, name in enumerate(table.names)}
    logger.info("vectorize: %d regions from %s -> %s", len(regions), labels, out)
    crs_text = crs.to_string() if crs else None
    return VectorSummary(out, len(regions), per_class, crs_text, "m2" if unit else "pixels")


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


def _regions(src, score_src, classes: int, strip_rows: int) -> Iterator[_Region]:
    """The finished regions of the raster, strip by strip, in pixel coordinates."""
    height, width = src.height, src.width
    open_pieces: dict[int, _Region] = {}
    links = _UnionFind()
    prev_ids = prev_values = None
    base = 0  # global id of a piece = base of its strip + its id in the strip
    for row0 in range(0, height, strip_rows):
        window = Window(0, row0, width, min(strip_rows, height - row0))
        values = src.read(1, window=window)
        _check_values(values, classes, src.name)
        read_score = (lambda v, w=window: score_src.read(v + 1, window=w)) if score_src is not None else None
        ids, pieces = _strip_pieces(values, row0, classes, read_score)
        gids = np.where(ids > 0, ids.astype(np.int64) + base, 0)
        top = set(np.unique(ids[0]).tolist()) if row0 > 0 else set()
        bottom = set(np.unique(ids[-1]).tolist()) if row0 + len(values) < height else set()
        for local, piece in enumerate(pieces, 1):
            if local in top or local in bottom:
                open_pieces[base + local] = piece
            else:
                yield piece
        if row0 > 0:  # same class right across the boundary: one region
            same = (prev_values == values[0]) & (prev_ids > 0)
            for a, b in np.unique(np.stack([prev_ids[same], gids[0][same]], axis=1), axis=0).tolist():
                links.union(a, b)
        alive = {links.find(base + local) for local in bottom - {0}}
        groups: dict[int, list[int]] = {}
        for gid in open_pieces:
            root = links.find(gid)
            if root not in alive:
                groups.setdefault(root, []).append(gid)
        for members in groups.values():
            yield _merge([open_pieces.pop(gid) for gid in members])
            links.forget(members)
        prev_ids, prev_values = gids[-1], values[-1]
        base += len(pieces)


def _check_values(values: np.ndarray, classes: int, path: str) -> None:
    bad = np.unique(values[(values >= classes) & (values != UNCLASSIFIED_LABEL) & (values != NODATA_LABEL)])
    if bad.size:
        raise InputError(
            f"{path}: holds the value {int(bad[0])}, which is no class of its table "
            f"({classes} classes, 0..{classes - 1}) nor {UNCLASSIFIED_LABEL}/{NODATA_LABEL}."
        )


def _strip_pieces(
    values: np.ndarray, row0: int, classes: int, read_score: Callable[[int], np.ndarray] | None
) -> tuple[np.ndarray, list[_Region]]:
    """Label one strip: ``[rows, W]`` int32 ids (0: no class, ``i``: ``pieces[i - 1]``) and the pieces."""
    ids = np.zeros(values.shape, np.int32)
    pieces: list[_Region] = []
    for value in np.unique(values[values < classes]).tolist():
        mask = values == value
        lab, n = ndimage.label(mask, structure=_CROSS)
        flat = lab[mask]
        ids[mask] = flat + len(pieces)
        pixels = np.bincount(flat, minlength=n + 1)[1:]
        sums = counts = np.zeros(n)
        if read_score is not None:
            band = read_score(value)[mask].astype(np.float64)
            finite = np.isfinite(band)
            sums = np.bincount(flat, weights=np.where(finite, band, 0.0), minlength=n + 1)[1:]
            counts = np.bincount(flat, weights=finite, minlength=n + 1)[1:]
        pieces += [
            _Region(value, int(p), float(s), int(c)) for p, s, c in zip(pixels, sums, counts, strict=True)
        ]
    offset = rasterio.Affine.translation(0, row0)
    for geometry, local in shapes(ids, mask=ids > 0, connectivity=4, transform=offset):
        piece = pieces[int(local) - 1]
        polygon = shapely.geometry.shape(geometry)
        piece.polygon = polygon if piece.polygon is None else shapely.union(piece.polygon, polygon)
    return ids, pieces


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
