"""Read and write GeoTIFF scenes window by window, so memory does not grow with the scene.

:class:`SceneReader` gives 8-bit RGB windows of a raster of any size. Its stretch is
computed once for the whole scene and is *the same* as :func:`~ovearth.data.raster.read_image`
computes on the whole image: the statistics sample is every ``step``-th valid value in
raster order, with ``step`` from the scene's valid count (two streaming passes over the
raster; no pass at all for uint8 data or fixed rules). Windows read through it therefore
equal the same windows cut from the whole image.

:class:`SceneWriter` writes labels (and optionally class scores) rows at a time into tiled
GeoTIFFs beside the outputs; when the whole scene is written they are finished as
Cloud-Optimized GeoTIFFs (:mod:`ovearth.data.cog`) and only then renamed onto the outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window as RasterWindow

from ..errors import InputError
from .atomic import atomic_path
from .describe import open_labels, open_scores, write_sidecars
from .legend import ClassTable
from .raster import (
    RASTER_SUFFIXES,
    ImageHeader,
    apply_stretch,
    as_input,
    check_image,
    needs_statistics,
    read_bands,
    sample_step,
    stretch_limits,
)
from .remote import gdal_options

#: Rows per read in the statistics passes (a strip of the scene, all columns).
STATS_ROWS = 512

#: GDAL's block cache while a scene is read and written, in MB. GDAL's default is 5 %
#: of the machine's memory, which a large scene fills with cached and dirty tiles.
GDAL_CACHE_MB = 128


def bounded_gdal_cache() -> rasterio.Env:
    """A ``rasterio.Env`` whose block cache holds at most :data:`GDAL_CACHE_MB`.

    rasterio hands an integer ``GDAL_CACHEMAX`` to ``GDALSetCacheMax64`` as **bytes**
    (GDAL's "under 100,000 means MB" rule applies only to the string form), so the
    value is given in bytes: ``GDAL_CACHEMAX=128`` was a 128-byte cache, which decoded
    (and, for a remote scene, fetched) every block again on each read.
    """
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024)


class SceneReader:
    """A GeoTIFF opened for windowed reading as 8-bit RGB (use as a context manager).

    Args:
        path: a GeoTIFF.
        bands: 1-based bands for R, G, B (default: see :mod:`ovearth.data.raster`).
        stretch: the 8-bit scaling rule (see :mod:`ovearth.data.raster`).

    Attributes:
        height, width: scene size in pixels.
        crs, transform: georeferencing (None without a CRS).
        bands: the bands read as R, G, B.
        limits: per band ``(low, high)`` of the stretch (None for uint8 data).

    Raises:
        InputError: not a GeoTIFF, unreadable, a bad band choice or stretch rule.

    """

    def __init__(
        self,
        path: str | Path,
        bands: tuple[int, int, int] | None = None,
        stretch: str = "percentile",
        header: ImageHeader | None = None,
    ) -> None:
        self.path = as_input(path)
        if self.path.suffix.lower() not in RASTER_SUFFIXES:
            raise InputError(f"{self.path}: windowed reading needs a GeoTIFF; PNG and JPEG are read whole.")
        self.bands = (header or check_image(self.path, bands)).bands
        self._open = contextlib.ExitStack()  # GDAL's remote settings stay while the raster is open
        self._open.enter_context(gdal_options(self.path))
        try:
            self._dataset = self._open.enter_context(rasterio.open(self.path))
        except BaseException:
            self._open.close()
            raise
        data = self._dataset
        self.height, self.width = data.height, data.width
        self.crs = data.crs
        self.transform = data.transform if data.crs is not None else None
        self.dtype = np.dtype(data.dtypes[self.bands[0] - 1])
        self.limits = None
        if self.dtype != np.uint8:
            samples = self._samples() if needs_statistics(self.dtype, stretch) else None
            self.limits = stretch_limits(samples, self.dtype, stretch, self.path)

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the raster."""
        self._open.close()

    def read_raw(self, y1: int, y2: int, x1: int, x2: int) -> tuple[np.ndarray, np.ndarray]:
        """``([3, h, w] band data, [h, w] valid)`` of ``[y1:y2, x1:x2]``, before stretching.

        Raises:
            InputError: corrupt pixel data.

        """
        return read_bands(self._dataset, self.bands, self.path, RasterWindow(x1, y1, x2 - x1, y2 - y1))

    def read(self, y1: int, y2: int, x1: int, x2: int) -> tuple[np.ndarray, np.ndarray]:
        """``([h, w, 3] uint8 RGB, [h, w] valid)`` of the window ``[y1:y2, x1:x2]``."""
        data, valid = self.read_raw(y1, y2, x1, x2)
        rgb = data if self.limits is None else apply_stretch(data, self.limits)
        return np.ascontiguousarray(rgb.transpose(1, 2, 0)), valid

    def _strips(self) -> list[tuple[int, int]]:
        return [(y, min(y + STATS_ROWS, self.height)) for y in range(0, self.height, STATS_ROWS)]

    def _samples(self) -> list[np.ndarray]:
        """Every ``step``-th valid value per band in raster order (two passes, strip by strip)."""
        count = 0
        for y1, y2 in self._strips():
            count += int(self.read_raw(y1, y2, 0, self.width)[1].sum())
        step = sample_step(count)
        samples: list[list[np.ndarray]] = [[], [], []]
        seen = 0  # valid values before the current strip
        for y1, y2 in self._strips():
            data, valid = self.read_raw(y1, y2, 0, self.width)
            n = int(valid.sum())
            first = (-seen) % step  # index within this strip of the next sampled value
            for b in range(3):
                samples[b].append(data[b][valid][first::step].astype(np.float64))
            seen += n
        return [np.concatenate(parts) for parts in samples]


class SceneWriter:
    """Labels (and optionally class scores) of a scene, written rows at a time with bounded memory.

    Use as a context manager. The rows go into plain tiled GeoTIFFs beside the outputs;
    at a clean exit both are finished (overviews, COG copy: :mod:`ovearth.data.cog`),
    the labels' sidecars are written (:mod:`ovearth.data.describe`), and only then are
    the outputs renamed onto their paths. On an exception nothing appears and every
    temporary file is removed. GDAL's block cache stays within :data:`GDAL_CACHE_MB`
    throughout, the finishing steps included.

    Args:
        labels_path: the uint8 labels GeoTIFF (255 nodata, 254 unclassified; colour table,
            class names).
        reader: the scene (size and georeferencing).
        table: names and colours of the label values.
        scores_path: optional float32 class-scores GeoTIFF, one band per class, NaN nodata.
        names: band descriptions of the scores (default: the class names of ``table``).
        cog: Cloud-Optimized GeoTIFFs (default); False: plain tiled GeoTIFFs.

    """

    def __init__(
        self,
        labels_path: Path,
        reader: SceneReader,
        table: ClassTable,
        scores_path: Path | None = None,
        names: list[str] | None = None,
        cog: bool = True,
    ) -> None:
        self._stack = contextlib.ExitStack()
        shape = (reader.height, reader.width)
        where = dict(crs=reader.crs, transform=reader.transform, cog=cog)
        self._scores = None
        try:
            stack = self._stack
            stack.enter_context(bounded_gdal_cache())
            # entered in this order, left in reverse: finish both files, write the sidecars, then rename
            labels_temp = stack.enter_context(atomic_path(labels_path))
            scores_temp = stack.enter_context(atomic_path(scores_path)) if scores_path is not None else None
            stack.enter_context(_on_success(write_sidecars, labels_path, table))
            self._labels = stack.enter_context(open_labels(labels_temp, shape, table, **where))
            if scores_temp is not None:
                bands = list(table.names) if names is None else names
                self._scores = stack.enter_context(open_scores(scores_temp, shape, bands, **where))
        except BaseException as error:  # remove what was opened, as a failed write would
            self._stack.__exit__(type(error), error, error.__traceback__)
            raise

    def __enter__(self) -> SceneWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)

    def write_rows(self, y1: int, labels: np.ndarray, scores: np.ndarray | None = None) -> None:
        """Write ``[h, W]`` labels (and ``[K, h, W]`` scores, NaN on nodata) at rows ``y1 .. y1 + h``."""
        window = RasterWindow(0, y1, labels.shape[1], labels.shape[0])
        self._labels.write(labels, 1, window=window)
        if self._scores is not None and scores is not None:
            self._scores.write(scores.astype(np.float32, copy=False), window=window)


@contextlib.contextmanager
def _on_success(action: Callable[..., object], *args: object) -> Iterator[None]:
    """Call ``action(*args)`` when the block exits without an exception."""
    yield
    action(*args)
