"""SAM 3's objects (:class:`~ovearth.segment.instances.Instance`) as a vector layer.

One feature per instance: its mask traced along pixel edges (4-connected parts, holes
kept; a mask in several parts is one MultiPolygon), in the raster's CRS, with fields
``class_index``, ``class_name``, ``name`` (the prompt name that found it), ``score``,
``pixels``, ``area_m2`` (null unless the CRS is projected) and the box ``x_min, y_min,
x_max, y_max`` in CRS coordinates (the mask's extent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import shapely
from shapely.geometry import shape

from ..segment.instances import Instance
from .vector_io import write_vector
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


def instance_polygon(instance: Instance) -> shapely.Geometry:
    """The instance's mask as a (Multi)Polygon in image pixel coordinates (column, row)."""
    x1, y1 = instance.box[0], instance.box[1]
    mask = instance.mask.astype(np.uint8)
    offset = rasterio.Affine.translation(x1, y1)
    parts = [
        shape(geom) for geom, _ in rasterio.features.shapes(mask, mask=mask.astype(bool), transform=offset)
    ]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def write_objects(
    path: str | Path,
    instances: list[Instance],
    class_names: list[str],
    crs: rasterio.crs.CRS | None,
    transform: rasterio.Affine | None,
) -> int:
    """Write ``instances`` as a vector layer (format by suffix, see :func:`write_vector`).

    Args:
        path: ``.gpkg``, ``.geojson`` or ``.parquet``.
        instances: in image pixel coordinates.
        class_names: name of each class index.
        crs: the raster's CRS (None: pixel coordinates, no CRS).
        transform: pixel -> CRS affine transform (None: identity).

    Returns:
        The number of features written.

    """
    transform = transform or rasterio.Affine.identity()
    pixel_area, _ = pixel_area_m2(crs, transform)
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
    write_vector(path, geoms, columns, crs, layer="objects", geometry_type="MultiPolygon")
    return len(instances)
