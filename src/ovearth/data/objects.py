"""SAM 3's objects (:class:`~ovearth.segment.instances.Instance`) as a vector layer.

One feature per instance: its mask traced along pixel edges (4-connected parts, holes
kept; a mask in several parts is one MultiPolygon), in the raster's CRS, with fields
``class_index``, ``class_name``, ``name`` (the prompt name that found it), ``score``,
``pixels``, ``area_m2`` (null unless the CRS is projected) and the box ``x_min, y_min,
x_max, y_max`` in CRS coordinates (the mask's extent).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import rasterio
import shapely

from ..segment.instances import Instance
from .pixel_polygons import region_polygons
from .vector_io import VectorWriter, write_vector
from .vectorize import pixel_area_m2, to_crs_coordinates

#: the fields of an objects layer, in order
OBJECT_FIELDS = (
    "class_index",
    "class_name",
    "name",
    "score",
    "pixels",
    "area_m2",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
)

#: Objects written at a time by :func:`write_objects` (memory: one batch of masks and polygons).
OBJECT_BATCH = 1000


def instance_polygon(instance: Instance) -> shapely.Geometry:
    """The instance's mask as a (Multi)Polygon in image pixel coordinates (column, row)."""
    x1, y1 = instance.box[0], instance.box[1]
    mask = instance.mask.astype(np.uint8)
    _, parts = region_polygons(mask, mask.astype(bool), rasterio.Affine.translation(x1, y1))
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(list(parts))


def write_objects(
    path: str | Path,
    instances: Iterable[Instance],
    class_names: list[str],
    crs: rasterio.crs.CRS | None,
    transform: rasterio.Affine | None,
    batch_size: int = OBJECT_BATCH,
) -> int:
    """Write ``instances`` as a vector layer (format by suffix, see :func:`write_vector`).

    Args:
        path: ``.gpkg``, ``.geojson`` or ``.parquet``.
        instances: in image pixel coordinates; any iterable (an
            :class:`~ovearth.segment.instances.ObjectSpill` reads them from disk), taken
            ``batch_size`` at a time, so memory holds one batch.
        class_names: name of each class index.
        crs: the raster's CRS (None: pixel coordinates, no CRS).
        transform: pixel -> CRS affine transform (None: identity).
        batch_size: features written at a time. Up to one batch the file is written in one
            go; the features (and a GeoJSON's bytes) do not depend on it.

    Returns:
        The number of features written.

    """
    transform = transform or rasterio.Affine.identity()
    pixel_area, _ = pixel_area_m2(crs, transform)
    batches = _batches(instances, batch_size)
    first = next(batches, [])
    geoms, columns = _features(first, class_names, transform, pixel_area)
    if len(first) < batch_size:
        write_vector(path, geoms, columns, crs, layer="objects", geometry_type="MultiPolygon")
        return len(first)
    fields = {name: np.asarray(values).dtype for name, values in columns.items()}
    with VectorWriter(path, fields, crs, layer="objects", geometry_type="MultiPolygon") as writer:
        writer.write(geoms, columns)
        for batch in batches:
            writer.write(*_features(batch, class_names, transform, pixel_area))
    return writer.features


def _batches(instances: Iterable[Instance], size: int) -> Iterator[list[Instance]]:
    iterator = iter(instances)
    while batch := list(islice(iterator, size)):
        yield batch


def _features(
    instances: list[Instance], class_names: list[str], transform: rasterio.Affine, pixel_area: float | None
) -> tuple[np.ndarray, dict]:
    """Geometries (CRS coordinates) and the :data:`OBJECT_FIELDS` of ``instances``."""
    geoms = to_crs_coordinates(transform, np.array([instance_polygon(i) for i in instances], dtype=object))
    bounds = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
    columns = {
        "class_index": np.array([i.class_index for i in instances], np.int32),
        "class_name": [class_names[i.class_index] for i in instances],
        "name": [i.name for i in instances],
        "score": np.array([i.score for i in instances], np.float64),
        "pixels": np.array([i.pixels for i in instances], np.int64),
        "area_m2": np.array([np.nan if pixel_area is None else i.pixels * pixel_area for i in instances]),
        "x_min": bounds[:, 0],
        "y_min": bounds[:, 1],
        "x_max": bounds[:, 2],
        "y_max": bounds[:, 3],
    }
    return geoms, columns
