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

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from ..errors import InputError
from .legend import ClassTable, read_class_table
from .strip_regions import Region, default_strip_rows, open_raster, regions_by_strips
from .vector_io import VectorWriter, check_vector_path

logger = logging.getLogger(__name__)

#: Attribute fields of every feature, in this order.
FIELDS = ("class_index", "class_name", "pixels", "area_m2", "mean_score")
_DTYPES = (np.int32, object, np.int64, np.float64, np.float64)  # of FIELDS

#: Default number of features written at a time by :func:`vectorize`.
BATCH_SIZE = 20_000


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
            Default: about :data:`~ovearth.data.strip_regions.STRIP_PIXELS` pixels a strip,
            in whole blocks of the labels raster when a block has fewer rows than that.
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
    with open_raster(labels, "labels") as src:
        if src.count != 1 or src.dtypes[0] != "uint8":
            raise InputError(
                f"{labels}: a labels raster must be single-band uint8, "
                f"got {src.count} band(s) of {src.dtypes[0]}."
            )
        table = table if table is not None else read_class_table(labels)
        if scores is not None:
            with open_raster(scores, "scores") as score_src:
                _check_scores(score_src, src, len(table.names))
        pixel_area, unit = pixel_area_m2(src.crs, src.transform)
        crs, transform, height = src.crs, src.transform, src.height
        strip_rows = strip_rows or default_strip_rows(src)
    regions = (
        r
        for r in regions_by_strips(labels, scores, height, len(table.names), strip_rows)
        if r.pixels * (pixel_area or 1.0) >= min_area
    )
    per_class = np.zeros(len(table.names), np.int64)
    fields = dict(zip(FIELDS, _DTYPES, strict=True))
    with VectorWriter(out, fields, crs, layer=out.stem, geometry_type="Polygon") as writer:

        def write(batch: list[Region]) -> None:
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


def _top_left_first(regions: list[Region]) -> list[Region]:
    """Sorted by the top, then the left of their bounds, then class and pixels."""
    bounds = shapely.bounds(np.array([r.polygon for r in regions], dtype=object)).reshape(-1, 4)
    order = np.lexsort(([r.pixels for r in regions], [r.value for r in regions], bounds[:, 0], bounds[:, 1]))
    return [regions[i] for i in order]


def _columns(regions: list[Region], index: np.ndarray, table: ClassTable, pixel_area: float | None) -> dict:
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
