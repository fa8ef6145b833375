"""Palette PNGs written row by row, so labels of any size go out in bounded memory.

The labels of a non-georeferenced input are a palette PNG (:func:`~ovearth.data.describe.palette_png`).
A scene read by windows finishes its labels a band of rows at a time into a tiled
GeoTIFF; :func:`geotiff_to_palette_png` turns that file into the same PNG, reading
:data:`STRIP_ROWS` rows at a time. The PNG holds the same values, palette and
transparency as :func:`~ovearth.data.describe.palette_png` with
:func:`~ovearth.data.describe.png_alpha` (tested): 8-bit palette (colour type 3), no
interlace, filter type 0 on every row, deflate level 6 (the pixels are what is equal;
the bytes of a Pillow-written file may differ).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rasterio
from rasterio.windows import Window

from .atomic import atomic_path
from .describe import png_alpha
from .legend import ClassTable

#: rows read from the GeoTIFF per step of :func:`geotiff_to_palette_png`
STRIP_ROWS = 512
#: uncompressed bytes gathered before they go out as one IDAT chunk
CHUNK_BYTES = 1 << 20

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(out: BinaryIO, kind: bytes, data: bytes) -> None:
    out.write(struct.pack(">I", len(data)) + kind + data)
    out.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_palette_png(
    path: str | Path, height: int, width: int, strips: Iterable[np.ndarray], table: ClassTable
) -> None:
    """Write ``[h, width]`` uint8 strips, top to bottom, as one palette PNG; atomically.

    Args:
        path: the ``.png`` file.
        height: the picture's rows; the strips' rows must add up to it.
        width: the picture's columns.
        strips: ``[h_i, width]`` uint8 label rows, in order.
        table: the colours (palette) and the transparent values (nodata).

    Raises:
        ValueError: a strip of another width or dtype, or rows that do not add up to ``height``.

    """
    palette = np.zeros((256, 3), np.uint8)
    for value, (red, green, blue, _) in table.colormap().items():
        palette[value] = (red, green, blue)
    with atomic_path(path) as temp, open(temp, "wb") as out:
        out.write(_SIGNATURE)
        _chunk(out, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        _chunk(out, b"PLTE", palette.tobytes())
        _chunk(out, b"tRNS", png_alpha(table))
        packer, pending, rows = zlib.compressobj(6), bytearray(), 0
        for strip in strips:
            if strip.dtype != np.uint8 or strip.ndim != 2 or strip.shape[1] != width:
                raise ValueError(f"a strip of shape {strip.shape} ({strip.dtype}) for a width of {width}")
            filtered = np.zeros((strip.shape[0], width + 1), np.uint8)  # filter byte 0: none
            filtered[:, 1:] = strip
            pending += packer.compress(filtered.tobytes())
            rows += strip.shape[0]
            if len(pending) >= CHUNK_BYTES:
                _chunk(out, b"IDAT", bytes(pending))
                pending.clear()
        if rows != height:
            raise ValueError(f"the strips hold {rows} rows for a height of {height}")
        pending += packer.flush()
        _chunk(out, b"IDAT", bytes(pending))
        _chunk(out, b"IEND", b"")


def geotiff_to_palette_png(source: str | Path, path: str | Path, table: ClassTable) -> None:
    """The labels GeoTIFF ``source`` (band 1, uint8) as the palette PNG ``path``, by strips."""
    with rasterio.open(source) as dataset:
        height, width = dataset.height, dataset.width

        def strips() -> Iterable[np.ndarray]:
            for y in range(0, height, STRIP_ROWS):
                rows = min(STRIP_ROWS, height - y)
                yield dataset.read(1, window=Window(0, y, width, rows))

        write_palette_png(path, height, width, strips(), table)
