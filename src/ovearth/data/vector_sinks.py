"""Where :class:`~ovearth.data.vector_io.VectorWriter` puts its features.

GDAL through pyogrio (GeoPackage, GeoJSON) or pyarrow (GeoParquet); field types and geometry types.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS

from ..errors import InputError

#: GeoParquet specification version written in the ``geo`` metadata.
GEOPARQUET_VERSION = "1.1.0"

_MULTI = {"Point": "MultiPoint", "LineString": "MultiLineString", "Polygon": "MultiPolygon"}


def field_dtype(dtype: Any) -> np.dtype:
    """A field's numpy dtype; text (``str``, ``"U"``, ``"S"``) is kept as ``object``."""
    dtype = np.dtype(dtype)
    return np.dtype(object) if dtype.kind in "US" else dtype


def field_column(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """A 1-D array; strings (and an empty list, whose type is unknown) become object arrays."""
    array = np.asarray(values)
    if array.dtype.kind in "US" or (not isinstance(values, np.ndarray) and array.size == 0):
        array = array.astype(object)
    return array.reshape(-1)


def geometry_types(geoms: np.ndarray) -> set[str]:
    """The geometry type names in ``geoms`` (``Polygon``, ``MultiPolygon``...)."""
    return {g.geom_type for g in geoms if g is not None}


def ogr_geometry_type(geometry_type: str | None, types: list[str]) -> tuple[str, bool]:
    """The OGR layer geometry type, and whether single parts must be promoted to multi."""
    if geometry_type is not None:
        return geometry_type, geometry_type.startswith("Multi")
    if len(types) == 1:
        return types[0], False
    if len(types) == 2 and _MULTI.get(types[1]) == types[0]:  # e.g. ["MultiPolygon", "Polygon"]
        return types[0], True
    return "Unknown", False


class Sink:
    """One format's writer of a temporary file: non-empty batches, then close (or abort)."""

    def write(self, geoms: np.ndarray, data: dict[str, np.ndarray]) -> None:
        """Write one non-empty batch: ``[n]`` geometries and their ``[n]`` columns."""
        raise NotImplementedError

    def close(self, empty: dict[str, np.ndarray]) -> None:
        """Finish the file; ``empty`` (zero-length typed columns) makes the layer when nothing was written."""
        raise NotImplementedError

    def abort(self) -> None:
        """Release what is open after an error (the temporary file is removed by the caller)."""


class OgrSink(Sink):
    """GDAL through pyogrio: the first batch creates the layer, the next ones append to it."""

    def __init__(self, temp: Path, driver: str, layer: str, crs: CRS | None, geometry_type: str | None):
        self.temp, self.driver, self.layer = temp, driver, layer
        self.crs = crs.to_wkt() if crs is not None else None
        self.geometry_type = geometry_type
        self.kind: tuple[str, bool] | None = None  # (OGR geometry type, promote to multi), from batch 1

    def write(self, geoms, data) -> None:
        """See :meth:`Sink.write`."""
        if self.kind is None:
            self.kind = ogr_geometry_type(self.geometry_type, sorted(geometry_types(geoms)))
        self._write(self.temp, geoms, data, append=self.temp.exists())

    def close(self, empty) -> None:
        """See :meth:`Sink.close`."""
        if self.kind is None:  # nothing written: an empty layer with the fields
            self.kind = ogr_geometry_type(self.geometry_type, [])
            self._write(self.temp, np.zeros(0, object), empty, append=False)

    def _write(self, path: Path, geoms, data, append: bool) -> None:
        from pyogrio.raw import write

        kind, promote = self.kind
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
            write(
                path,
                shapely.to_wkb(geoms),
                list(data.values()),
                list(data.keys()),
                layer=self.layer,
                driver=self.driver,
                geometry_type=kind,
                crs=self.crs,
                promote_to_multi=promote,
                append=append,
            )


class GeoJsonSink(OgrSink):
    """GDAL writes each batch in memory; its features are copied into the output as text.

    The output is byte for byte what GDAL writes for all features at once: GDAL's text of
    the first batch up to its last feature, the features of the next ones (after their
    ``"features": [``, each batch after a comma), and the first batch's closing lines.
    """

    _START = b'"features": ['  # a JSON string cannot hold an unescaped quote: found only as the member

    def __init__(self, temp: Path, driver: str, layer: str, crs: CRS | None, geometry_type: str | None):
        super().__init__(temp, driver, layer, crs, geometry_type)
        self.out = None
        self.tail = b""  # GDAL's text after the last feature

    def write(self, geoms, data) -> None:
        """See :meth:`Sink.write`."""
        if self.kind is None:
            self.kind = ogr_geometry_type(self.geometry_type, sorted(geometry_types(geoms)))
        buffer = io.BytesIO()
        self._write(buffer, geoms, data, append=False)
        text = buffer.getvalue()
        start = text.index(self._START) + len(self._START)
        end = text.rindex(b"]")  # GDAL's closing "]" of the features
        while text[end - 1] in b" \t\r\n":
            end -= 1
        with memoryview(text) as view:
            if self.out is None:
                self.out = open(self.temp, "wb")  # closed by close() or abort()
                self.out.write(view[:end])
                self.tail = text[end:]
            else:
                self.out.write(b",")
                self.out.write(view[start:end])

    def close(self, empty) -> None:
        """See :meth:`Sink.close`."""
        if self.out is None:
            super().close(empty)
            return
        self.out.write(self.tail)
        self.out.close()

    def abort(self) -> None:
        """See :meth:`Sink.abort`."""
        if self.out is not None:
            self.out.close()


def pyarrow_module(path: Path):
    """The ``pyarrow`` module with its parquet part, else an InputError naming ``path``."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError(
            f'{path}: writing GeoParquet needs pyarrow; pip install "ovearth[parquet]".'
        ) from None
    return pyarrow


class ParquetSink(Sink):
    """GeoParquet: one row group per batch; ``geo`` metadata (bbox, types) completed on close."""

    def __init__(self, temp: Path, fields: dict[str, np.dtype], crs: CRS | None, geometry_type: str | None):
        self.pa = pyarrow_module(temp)
        self.temp, self.fields, self.geometry_type = temp, fields, geometry_type
        self.crs = crs.to_dict(projjson=True) if crs is not None else None  # absent would mean OGC:CRS84
        self.writer = None
        self.schema = None
        self.types: set[str] = set()
        self.bbox: list[float] | None = None

    def write(self, geoms, data) -> None:
        """See :meth:`Sink.write`."""
        pa = self.pa
        if self.writer is None:
            self._open(data)
        types = self.schema.types[:-1]  # the last column is the geometry
        arrays = [_arrow_array(pa, values, kind) for values, kind in zip(data.values(), types, strict=True)]
        arrays.append(pa.array(list(shapely.to_wkb(geoms)), type=pa.binary()))
        self.writer.write_batch(pa.record_batch(arrays, schema=self.schema), row_group_size=len(geoms))
        self.types |= geometry_types(geoms)
        present = geoms[~shapely.is_empty(geoms) & ~shapely.is_missing(geoms)]
        if len(present):
            xmin, ymin, xmax, ymax = (float(v) for v in shapely.total_bounds(present))
            if self.bbox is not None:
                xmin, ymin = min(xmin, self.bbox[0]), min(ymin, self.bbox[1])
                xmax, ymax = max(xmax, self.bbox[2]), max(ymax, self.bbox[3])
            self.bbox = [xmin, ymin, xmax, ymax]

    def close(self, empty) -> None:
        """See :meth:`Sink.close`."""
        if self.writer is None:
            self._open(empty)
        if hasattr(self.writer, "add_key_value_metadata"):  # pyarrow >= 15
            self.writer.add_key_value_metadata({"geo": self._geo(final=True)})
        self.writer.close()

    def abort(self) -> None:
        """See :meth:`Sink.abort`."""
        if self.writer is not None:
            self.writer.close()

    def _open(self, data: dict[str, np.ndarray]) -> None:
        """The schema: numeric types from the fields, object ones from this batch (text if all null)."""
        import pyarrow.parquet as pq

        pa = self.pa
        fields = []
        for name, values in data.items():
            if values.dtype.kind == "O":
                kind = pa.array(list(values)).type
                kind = pa.string() if pa.types.is_null(kind) else kind
            else:
                kind = pa.from_numpy_dtype(values.dtype)
            fields.append(pa.field(name, kind))
        fields.append(pa.field("geometry", pa.binary()))
        self.schema = pa.schema(fields, metadata={b"geo": self._geo(final=False).encode()})
        self.writer = pq.ParquetWriter(self.temp, self.schema, store_schema=False)

    def _geo(self, final: bool) -> str:
        if self.geometry_type is not None:
            types = [self.geometry_type]
        else:
            types = sorted(self.types) if final else []
        column: dict[str, Any] = {"encoding": "WKB", "geometry_types": types, "crs": self.crs}
        if final and self.bbox is not None:
            column["bbox"] = self.bbox
        geo = {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}
        return json.dumps(geo)


def _arrow_array(pa, values: np.ndarray, kind):
    """An Arrow array of type ``kind``: NaN -> null in floats; None -> null in object columns."""
    if values.dtype.kind == "f":
        return pa.array(values, type=kind, from_pandas=True)
    if values.dtype.kind == "O":
        return pa.array(list(values), type=kind)
    return pa.array(values, type=kind)
