"""Cloud-Optimized GeoTIFF (COG) layout for written rasters, with memory that does not grow with them.

A COG is a tiled GeoTIFF whose image directories (IFDs: sizes, georeferencing, the
offsets of every tile) all come before the pixel data, with overviews (halved copies)
down to less than one tile: a viewer or an HTTP range reader gets the layout of the
whole file from its first kilobytes and reads only the tiles and the zoom level it
shows. GDAL's ``COG`` driver writes that layout, but only by copying a finished raster.

So :func:`open_geotiff` yields a plain tiled GeoTIFF to write, whole or window by
window: a hidden scratch file beside the output (``.<stem>.<random>.part.<random>.tif``,
band-interleaved, :data:`SCRATCH_ROWS`-row tiles, fast ZSTD: :func:`scratch_compression`;
removed whatever happens, and by :func:`~ovearth.data.output.remove_stale_parts` after a
killed run). When it is complete,
its overviews are built in place, block by block (``mode`` for labels: every overview
pixel is a label that occurs below it; ``average`` for scores, nodata excluded), and the
``COG`` driver copies it, those overviews included, onto the output's temporary path.
Every step streams through GDAL's block cache, which :class:`~ovearth.data.scene.SceneWriter`
bounds (``bounded_gdal_cache``), so a scene of any size is written in bounded memory.
The pixel values are those written, whatever the layout (``cog=False`` writes the plain
tiled GeoTIFF of :func:`geotiff_profile` directly: :data:`GEOTIFF_BLOCK` tiles, no overviews).

COG creation options (:func:`cog_options`):

* ``BLOCKSIZE=512``: GDAL's COG default and what web tilers expect; fewer, larger
  requests than 256.
* ``COMPRESS=DEFLATE``, lossless and readable everywhere (GDAL, QGIS, ArcGIS, browsers'
  geotiff.js), with ``PREDICTOR=FLOATING_POINT`` for float scores (about 20 % smaller on
  smooth score surfaces) and no predictor for integer labels: they are class indices,
  whose differences mean nothing (the horizontal predictor measured larger on label maps).
* Pixel interleaving for the scores: GDAL 3.10's COG driver has no other (the scratch
  file is band-interleaved: building its overviews was 5x faster so).
* ``OVERVIEWS=FORCE_USE_EXISTING``: the overviews built above, never a second pass.
* ``BIGTIFF=IF_SAFER`` as for the plain files; ``NUM_THREADS=ALL_CPUS`` compresses tiles
  in parallel (same bytes, a few tiles in flight).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.io import DatasetWriter

#: Tile side of COG outputs; overviews are made down to less than one such tile.
COG_BLOCK = 512

#: Tile side of plain (``cog=False``) GeoTIFFs.
GEOTIFF_BLOCK = 256

#: Tile height of the scratch files COGs are copied from (their tiles are :data:`COG_BLOCK`
#: wide): the rows a windowed run writes at a time (``FINISH_ROWS`` of :mod:`ovearth.run.scene`),
#: so each tile is compressed and written once. A tile written in parts is compressed and
#: appended again at every part: 64-row writes into 256-row tiles took 3x the time and made
#: the file twice as large (4000 x 4000 x 8 float32 bands).
SCRATCH_ROWS = 64


def geotiff_profile(
    shape: tuple[int, ...],
    count: int,
    dtype: str,
    crs: rasterio.crs.CRS | None = None,
    transform: rasterio.Affine | None = None,
    nodata: float | None = None,
) -> dict:
    """Creation options of our plain GeoTIFFs.

    Deflate, 256 x 256 tiles (when the raster is that large), BigTIFF when the file
    could pass 4 GB, the nodata value and the georeferencing if any.
    """
    height, width = int(shape[0]), int(shape[1])
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=dtype,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    if nodata is not None:
        profile.update(nodata=nodata)
    if height >= GEOTIFF_BLOCK and width >= GEOTIFF_BLOCK:
        profile.update(tiled=True, blockxsize=GEOTIFF_BLOCK, blockysize=GEOTIFF_BLOCK)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    return profile


def overview_factors(height: int, width: int, block: int = COG_BLOCK) -> list[int]:
    """Decimation factors ``[2, 4, ...]`` until the overview fits in one ``block`` tile.

    An overview of factor ``f`` is ``ceil(height / f) x ceil(width / f)``; none for a
    raster that already fits in one tile.
    """
    factors: list[int] = []
    factor = 1
    while max(math.ceil(height / factor), math.ceil(width / factor)) > block:
        factor *= 2
        factors.append(factor)
    return factors


def cog_options(dtype: str | np.dtype, resampling: Resampling) -> dict[str, str | int]:
    """Creation options of the ``COG`` driver for a raster of ``dtype`` (see the module docstring)."""
    floating = np.issubdtype(np.dtype(dtype), np.floating)
    return dict(
        driver="COG",
        BLOCKSIZE=COG_BLOCK,
        COMPRESS="DEFLATE",
        PREDICTOR="FLOATING_POINT" if floating else "NO",
        OVERVIEWS="FORCE_USE_EXISTING",
        OVERVIEW_RESAMPLING=resampling.name.upper(),
        BIGTIFF="IF_SAFER",
        NUM_THREADS="ALL_CPUS",
    )


@contextlib.contextmanager
def open_geotiff(
    temp: Path, profile: dict, resampling: Resampling, cog: bool = True
) -> Iterator[DatasetWriter]:
    """A GeoTIFF open for writing; at a clean exit ``temp`` holds the finished file.

    Args:
        temp: where the finished file goes: the temporary path of an
            :func:`~ovearth.data.atomic.atomic_path`, which renames it.
        profile: rasterio creation profile of the plain GeoTIFF (:func:`geotiff_profile`).
        resampling: overview resampling (``mode`` for labels, ``average`` for scores).
        cog: write a COG (see the module docstring); False: the plain GeoTIFF.

    Yields:
        The dataset to write (whole or by windows) and describe (colour table, band
        descriptions, tags: the COG copy keeps them).

    An exception inside the block leaves ``temp`` unfinished and removes the scratch file.

    """
    if not cog:
        with rasterio.open(temp, "w", **profile) as dataset:
            yield dataset
        return
    with _scratch_path(temp) as scratch:
        staging = dict(profile, tiled=True, blockxsize=COG_BLOCK, blockysize=SCRATCH_ROWS, interleave="band")
        staging.update(scratch_compression())
        with rasterio.open(scratch, "w", **staging) as dataset:
            yield dataset
        with rasterio.open(scratch, "r+") as dataset, rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            factors = overview_factors(dataset.height, dataset.width)
            if factors:
                dataset.build_overviews(factors, resampling)
        rasterio.shutil.copy(scratch, temp, **cog_options(profile["dtype"], resampling))


@functools.cache
def scratch_compression() -> dict[str, str | int]:
    """Creation options of the scratch files: ZSTD level 1 where GDAL has it, else DEFLATE level 1.

    The scratch file is read once (overviews) and copied once; its compression changes
    neither the output's bytes nor its pixels, only time and disk. Level-6 DEFLATE (the
    plain GeoTIFFs' default) made writing the scratch scores and their overviews 2-3x
    slower than ZSTD level 1, for files of about the same size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(
                "/vsimem/ovearth-zstd-probe.tif", "w", driver="GTiff", width=1, height=1, count=1,
                dtype="uint8", compress="zstd",
            ) as probe:  # fmt: skip
                probe.write(np.zeros((1, 1, 1), np.uint8))
    except rasterio.errors.RasterioError:
        return {"compress": "deflate", "zlevel": 1}
    finally:
        with contextlib.suppress(rasterio.errors.RasterioError):
            rasterio.shutil.delete("/vsimem/ovearth-zstd-probe.tif")
    return {"compress": "zstd", "zstd_level": 1}


@contextlib.contextmanager
def _scratch_path(temp: Path) -> Iterator[Path]:
    """A new hidden ``.tif`` path beside ``temp`` (named after it), deleted on exit."""
    handle, name = tempfile.mkstemp(prefix=f"{temp.stem}.", suffix=".tif", dir=temp.parent)
    os.close(handle)
    scratch = Path(name)
    try:
        yield scratch
    finally:
        scratch.unlink(missing_ok=True)
