"""Write labels and class scores of an image: GeoTIFF (COG) with georeferencing, or palette PNG.

The readers are in :mod:`ovearth.data.raster`; scenes written by windows in
:mod:`ovearth.data.scene`. Every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .describe import open_labels, open_scores, palette_png, png_alpha, write_sidecars
from .legend import ClassTable
from .raster import RASTER_SUFFIXES, RasterImage


def write_labels(
    path: str | Path, labels: np.ndarray, image: RasterImage, table: ClassTable, cog: bool = True
) -> None:
    """Write class labels: a GeoTIFF keeping CRS and transform, else a palette PNG; atomically.

    The GeoTIFF (a Cloud-Optimized GeoTIFF unless ``cog`` is False, see
    :mod:`ovearth.data.cog`) has nodata 255, the colour table of ``table``, the band
    description ``class`` and the table as tags; its GDAL and QGIS sidecars are written
    beside it (:mod:`ovearth.data.describe`). The PNG's palette is ``table``'s colours,
    value 255 transparent.

    Args:
        path: output file (``.tif`` for georeferenced input, ``.png`` otherwise).
        labels: ``[H, W]`` uint8 class indices; 254 unclassified, 255 nodata.
        image: the source image (georeferencing).
        table: names and colours of the values.
        cog: COG layout (tiles 512, overviews); False: plain tiled GeoTIFF.

    """
    path = Path(path)
    if path.suffix.lower() not in RASTER_SUFFIXES:
        with atomic_path(path) as temp:
            palette_png(labels, table).save(temp, format="PNG", transparency=png_alpha(table))
        return
    with atomic_path(path) as temp:
        with open_labels(temp, labels.shape, table, image.crs, image.transform, cog) as out:
            out.write(labels, 1)
        write_sidecars(path, table)


def write_scores(
    path: str | Path, scores: np.ndarray, names: list[str], image: RasterImage, cog: bool = True
) -> None:
    """Write fused class scores as a float32 GeoTIFF, one band per class named after it; atomically.

    Args:
        path: output ``.tif``.
        scores: ``[K, H, W]`` class scores in ``[0, 1]``, NaN where the input has no data.
        names: the ``K`` class names (band descriptions).
        image: the source image (georeferencing, if any).
        cog: COG layout (see :func:`write_labels`).

    Raises:
        ValueError: not one name per class.

    """
    if len(names) != len(scores):
        raise ValueError(f"{len(names)} class names for {len(scores)} score bands")
    with atomic_path(path) as temp:
        with open_scores(temp, scores.shape[1:], names, image.crs, image.transform, cog) as out:
            out.write(scores.astype(np.float32, copy=False))
