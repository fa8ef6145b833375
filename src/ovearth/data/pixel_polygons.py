"""Polygons of the 4-connected regions of a raster (GDAL Polygonize), as shapely geometries in bulk.

``rasterio.features.shapes`` gives each region as a GeoJSON mapping; turning those into
shapely geometries one by one (``shapely.geometry.shape``) checks every coordinate in
Python and took longer than GDAL's polygonizing itself (a strip of 2000 x 256 noisy
labels: 5.6 s against 1.5 s here). :func:`region_polygons` gathers the rings' coordinates
of all regions and builds the geometries in three vectorized calls. The result is the
same geometry, vertex for vertex (the same rings in the same order and orientation, as
``shape`` builds them: shell first, then holes), so its WKB is the same bytes.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import rasterio
import shapely
from rasterio.features import shapes


def region_polygons(
    image: np.ndarray, mask: np.ndarray, transform: rasterio.Affine, connectivity: int = 4
) -> tuple[list[int], np.ndarray]:
    """``rasterio.features.shapes(image, mask, connectivity, transform)`` as shapely polygons.

    Args:
        image: ``[h, w]`` integer raster (a value per region, e.g. region ids).
        mask: ``[h, w]`` bool, True where regions are made.
        transform: pixel -> output coordinates (a translation keeps them exact).
        connectivity: 4 or 8.

    Returns:
        ``(values, polygons)``: the value of each region (as an ``int``) and an ``[N]``
        object array of ``shapely.Polygon``, in GDAL's order.

    """
    values: list[int] = []
    rings: list[list] = []  # every ring of every polygon, in order
    ring_counts: list[int] = []  # rings per polygon
    for geometry, value in shapes(image, mask=mask, connectivity=connectivity, transform=transform):
        values.append(int(value))
        polygon = geometry["coordinates"]
        ring_counts.append(len(polygon))
        rings.extend(polygon)
    if not values:
        return values, np.zeros(0, dtype=object)
    sizes = np.fromiter(map(len, rings), np.int64, len(rings))
    coordinates = np.array(list(chain.from_iterable(rings)), dtype=np.float64).reshape(-1, 2)
    linear = shapely.linearrings(coordinates, indices=np.repeat(np.arange(len(rings)), sizes))
    polygons = shapely.polygons(linear, indices=np.repeat(np.arange(len(values)), ring_counts))
    return values, polygons
