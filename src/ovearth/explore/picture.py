"""An image file as the explorer's working picture: what is shown is what is segmented.

Images whose longest side is at most ``max_side`` are read exactly as ``segment`` reads
them (:func:`~ovearth.data.raster.read_image`). Larger ones become a quick-look, decimated
by an integer ``step`` (nearest neighbour; GDAL reads a GeoTIFF's overviews when it has
them) with the same band choice and the same stretch as ``segment``: for GeoTIFFs the
stretch limits come from the whole scene (:class:`~ovearth.data.scene.SceneReader`), the
decimated bands are stretched with them, and the geotransform is scaled so exported
rasters stay georeferenced.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

from ..data.raster import (
    RASTER_SUFFIXES,
    ImageHeader,
    RasterImage,
    apply_stretch,
    check_image,
    read_bands,
    read_image,
)
from ..data.scene import SceneReader
from ..viz import MAX_OVERLAY_SIDE
from .budget import PICTURE_FILE_BYTES, RASTER_PIXEL_BYTES


@dataclass
class Picture:
    """The working image of one file.

    Attributes:
        path: the source file.
        image: ``rgb [h, w, 3]`` uint8, ``valid [h, w]`` and the georeferencing (of the
            quick-look when ``step > 1``), as ``segment``'s writers take it.
        full_size: ``(H, W)`` of the file.
        step: 1, or the quick-look's decimation.
        key: digest of the pixels and validity (the caches' key).

    """

    path: Path
    image: RasterImage
    full_size: tuple[int, int]
    step: int
    key: str

    @property
    def rgb(self) -> np.ndarray:
        """``[h, w, 3]`` uint8."""
        return self.image.rgb

    @property
    def valid(self) -> np.ndarray:
        """``[h, w]`` bool, False on nodata."""
        return self.image.valid


def working_size(height: int, width: int, max_side: int = MAX_OVERLAY_SIDE) -> tuple[int, int, int]:
    """``(h, w, step)`` of the working picture of a ``height x width`` file (no pixel read)."""
    step = max(1, math.ceil(max(height, width) / max_side))
    return math.ceil(height / step), math.ceil(width / step), step


def decode_bytes(header: ImageHeader, max_side: int = MAX_OVERLAY_SIDE) -> int:
    """Bytes that reading ``header``'s file as a working picture takes (an upper bound).

    A PNG or JPEG is decoded whole (:data:`~.budget.PICTURE_FILE_BYTES` per pixel of the
    file); a GeoTIFF is read at the working size (:data:`~.budget.RASTER_PIXEL_BYTES`
    per working pixel).
    """
    height, width, _ = working_size(header.height, header.width, max_side)
    if header.is_raster:
        return RASTER_PIXEL_BYTES * height * width
    return PICTURE_FILE_BYTES * header.height * header.width


def picture_header(path: Path, bands: tuple[int, int, int] | None = None) -> ImageHeader:
    """The header of ``path`` read with ``bands`` (PNG and JPEG: none, they are RGB).

    Raises:
        InputError: an unreadable image or a band choice it cannot satisfy.

    """
    bands = bands if Path(path).suffix.lower() in RASTER_SUFFIXES else None
    return check_image(path, bands)


def load_picture(
    path: Path,
    bands: tuple[int, int, int] | None = None,
    stretch: str = "percentile",
    max_side: int = MAX_OVERLAY_SIDE,
    header: ImageHeader | None = None,
) -> Picture:
    """Read ``path`` whole, or as a quick-look when a side exceeds ``max_side``.

    Args:
        path: the file.
        bands: GeoTIFF bands for R, G, B (None: ``segment``'s rule).
        stretch: 8-bit scaling of non-uint8 rasters.
        max_side: longest side of the working picture.
        header: :func:`picture_header` of ``path`` with ``bands``, when already read.

    Raises:
        InputError: an unreadable image or a band choice it cannot satisfy.

    """
    header = header or picture_header(path, bands)
    height, width = header.height, header.width
    step = working_size(height, width, max_side)[2]
    if step == 1:
        image = read_image(path, bands=bands, stretch=stretch, header=header)
    elif header.is_raster:
        image = _raster_quicklook(path, header.bands, stretch, step, header)
    else:
        image = read_image(path, header=header)
        size = (math.ceil(width / step), math.ceil(height / step))
        rgb = np.asarray(Image.fromarray(image.rgb).resize(size, Image.NEAREST))
        image = RasterImage(path=image.path, rgb=rgb, valid=np.ones(rgb.shape[:2], bool))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(image.rgb.shape).encode())
    digest.update(image.rgb.tobytes())
    digest.update(np.packbits(image.valid).tobytes())
    return Picture(path=Path(path), image=image, full_size=(height, width), step=step, key=digest.hexdigest())


def _raster_quicklook(path: Path, bands: tuple, stretch: str, step: int, header) -> RasterImage:
    """A GeoTIFF decimated by ``step``, stretched with the whole scene's limits."""
    with SceneReader(path, bands, stretch, header) as reader:
        limits, crs, transform = reader.limits, reader.crs, reader.transform
    shape = (math.ceil(header.height / step), math.ceil(header.width / step))
    with rasterio.open(path) as dataset:
        data, valid = read_bands(dataset, bands, path, out_shape=shape)
    rgb = data if limits is None else apply_stretch(data, limits)
    scaled = (
        None
        if transform is None
        else transform @ Affine.scale(header.width / shape[1], header.height / shape[0])
    )
    return RasterImage(
        path=Path(path),
        rgb=np.ascontiguousarray(rgb.transpose(1, 2, 0)),
        valid=valid,
        crs=crs,
        transform=scaled,
        bands=bands,
    )
