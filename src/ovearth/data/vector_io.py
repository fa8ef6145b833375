"""Write vector features (shapely geometries plus attribute columns) as GeoPackage, GeoJSON or GeoParquet.

The format follows the suffix of the path (:data:`VECTOR_SUFFIXES`). GeoPackage and GeoJSON
are written by GDAL through ``pyogrio``; GeoParquet 1.1 with ``pyarrow`` (an optional
dependency, ``pip install "ovearth[parquet]"``): a WKB column ``geometry`` and the ``geo``
file metadata with the CRS as PROJJSON.

:class:`VectorWriter` writes one layer batch by batch, so a layer of any size is written
with one batch in memory; :func:`write_vector` writes one batch with it. Every write is
atomic (temporary file beside the target, renamed when the writer closes without error),
so an error never leaves a partial file. Per format:

- GeoPackage: each batch is appended to the layer by GDAL (one transaction per batch).
- GeoJSON: GDAL writes each batch in memory (``io.BytesIO``) and its features are copied
  into the output as text (GDAL's own appending re-reads the whole file for every batch,
  which is quadratic). The output is, byte for byte, the file GDAL writes in one go.
- GeoParquet: one row group per batch (``pyarrow.parquet.ParquetWriter``). The ``geo``
  metadata is written when the writer closes, with the bounding box and geometry types
  of all batches; it is file key-value metadata and the Arrow schema is not stored
  (``store_schema=False``), so pyarrow and GDAL read the same ``geo``. With pyarrow
  older than 15 (no ``add_key_value_metadata``) the ``geo`` known up front is kept
  (CRS, encoding, the given geometry type; no bounding box).

GeoJSON is written in the features' CRS with GDAL's ``crs`` member (not RFC 7946's
WGS 84 only); a GeoJSON without a CRS reads back as WGS 84, and an empty one keeps no
field schema (GeoPackage and GeoParquet keep both).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError

from ..errors import InputError
from .atomic import atomic_path
from .output import check_writable_under

#: Supported output suffixes and their GDAL driver (None: written with pyarrow).
VECTOR_SUFFIXES: dict[str, str | None] = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".parquet": None}

#: GeoParquet specification version written in the ``geo`` metadata.
GEOPARQUET_VERSION = "1.1.0"

_MULTI = {"Point": "MultiPoint", "LineString": "MultiLineString", "Polygon": "MultiPolygon"}


def check_vector_path(path: str | Path) -> Path:
    """A vector output path whose format is supported and whose folder can be made and written.

    Raises:
        InputError: an unknown suffix, a folder at ``path``, a file where a folder must be,
            or ``.parquet`` without ``pyarrow`` installed.

    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        raise InputError(
            f"{path}: unknown vector format '{suffix or '(none)'}'; use one of {', '.join(VECTOR_SUFFIXES)}."
        )
    if path.is_dir():
        raise InputError(f"{path}: this is a folder; give a file name ending in {suffix}.")
    check_writable_under(path.parent, str(path), "the output cannot be written under it")
    if VECTOR_SUFFIXES[suffix] is None:
        _pyarrow(path)
    return path


def write_vector(
    path: str | Path,
    geometries: Sequence[shapely.Geometry] | np.ndarray,
    columns: Mapping[str, Sequence[Any] | np.ndarray],
    crs: CRS | str | None,
    layer: str | None = None,
    *,
    geometry_type: str | None = None,
) -> None:
    """Write one layer of features to ``path`` (``.gpkg``, ``.geojson`` or ``.parquet``), atomically.

    An existing file at ``path`` is replaced (a GeoPackage keeps no other layers). No
    features still make a valid, empty layer with the columns' schema. One batch of a
    :class:`VectorWriter`.

    Args:
        path: the output file; its suffix chooses the format.
        geometries: ``N`` shapely geometries, already in ``crs`` coordinates.
        columns: attribute name -> ``N`` values (list or 1-D array), in this order. Strings
            as ``str`` (object or unicode arrays); NaN in float columns and None in object
            columns are written as null. Give typed arrays for an empty layer (an empty
            list is written as a text column).
        crs: a rasterio ``CRS``, anything ``CRS.from_user_input`` reads ("EPSG:32618", WKT,
            PROJJSON), or None for no CRS.
        layer: layer name (GeoPackage, GeoJSON); default: the file's stem.
        geometry_type: the layer's geometry type ("Polygon", ...); default: from the
            geometries (mixed single and multi parts are written as multi; no geometries: unknown).

    Raises:
        InputError: unknown suffix, unusable folder, a CRS that cannot be read, or
            GeoParquet without ``pyarrow``.
        ValueError: a column whose length is not ``N``.

    """
    data = {name: _column(values) for name, values in columns.items()}
    writer = VectorWriter(
        path, {name: v.dtype for name, v in data.items()}, crs, layer, geometry_type=geometry_type
    )
    with writer:
        writer.write(geometries, data)


class VectorWriter:
    """One layer written batch by batch, atomically; a context manager.

    Example::

        with VectorWriter("out.gpkg", {"id": np.int64, "name": object}, "EPSG:32618") as writer:
            for geoms, ids, names in batches:
                writer.write(geoms, {"id": ids, "name": names})

    The file appears at ``path`` (replacing any file there) when the ``with`` block ends
    without error; on an error nothing is left (neither the output nor a temporary file).
    Memory holds one batch (see the module notes per format).

    Args:
        path: the output file; its suffix chooses the format.
        fields: attribute name -> numpy dtype (anything ``np.dtype`` reads), in order;
            ``object`` or ``str`` for text (``object`` holds any Python values: in
            GeoParquet their Arrow type is inferred from the first batch, text when it
            has only None). Values are cast to the field's dtype within their kind
            (float values for an integer field are an error).
        crs: a rasterio ``CRS``, anything ``CRS.from_user_input`` reads, or None.
        layer: layer name (GeoPackage, GeoJSON); default: the file's stem.
        geometry_type: the layer's geometry type ("Polygon", ...); default: from the first
            batch with geometries (mixed single and multi parts: multi; none: unknown).

    Raises:
        InputError: as :func:`check_vector_path`, or a CRS that cannot be read.

    Attributes:
        features: features written so far.

    """

    def __init__(
        self,
        path: str | Path,
        fields: Mapping[str, Any],
        crs: CRS | str | None,
        layer: str | None = None,
        *,
        geometry_type: str | None = None,
    ) -> None:
        self.path = check_vector_path(path)
        self.fields = {name: _dtype(dtype) for name, dtype in fields.items()}
        self.crs = _crs(crs, self.path)
        self.layer = layer or self.path.stem
        self.geometry_type = geometry_type
        self.features = 0
        self._sink: _Sink | None = None
        self._context: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> VectorWriter:
        if self._context is not None:
            raise RuntimeError("a VectorWriter can be entered only once")
        self._context = self._session()
        return self._context.__enter__()

    def __exit__(self, *exc_info) -> bool | None:
        return self._context.__exit__(*exc_info)

    @contextlib.contextmanager
    def _session(self) -> Iterator[VectorWriter]:
        driver = VECTOR_SUFFIXES[self.path.suffix.lower()]
        with atomic_path(self.path) as temp:
            temp.unlink()  # GDAL and pyarrow create the file themselves
            if driver is None:
                self._sink = _ParquetSink(temp, self.fields, self.crs, self.geometry_type)
            elif driver == "GeoJSON":
                self._sink = _GeoJsonSink(temp, driver, self.layer, self.crs, self.geometry_type)
            else:
                self._sink = _OgrSink(temp, driver, self.layer, self.crs, self.geometry_type)
            try:
                yield self
            except BaseException:
                with contextlib.suppress(Exception):
                    self._sink.abort()
                raise
            finally:
                sink, self._sink = self._sink, None
            sink.close(self._empty())

    def write(
        self,
        geometries: Sequence[shapely.Geometry] | np.ndarray,
        columns: Mapping[str, Sequence[Any] | np.ndarray],
    ) -> None:
        """Append ``N`` features: geometries in the CRS's coordinates, and every field's ``N`` values.

        Raises:
            ValueError: the columns are not the writer's fields, one has not ``N`` values,
                or its values cannot be cast to the field's dtype.
            RuntimeError: the writer is not open (outside its ``with`` block).

        """
        if self._sink is None:
            raise RuntimeError("write to a VectorWriter inside its with block")
        geoms = np.asarray(geometries, dtype=object).reshape(-1)
        if list(columns) != list(self.fields):
            raise ValueError(f"columns {list(columns)} are not the writer's fields {list(self.fields)}")
        data = {}
        for name, values in columns.items():
            array = _column(values)
            if len(array) != len(geoms):
                raise ValueError(f"column {name!r} has {len(array)} values for {len(geoms)} geometries")
            dtype = self.fields[name]
            if len(array) and dtype.kind != "O" and not np.can_cast(array.dtype, dtype, "same_kind"):
                raise ValueError(f"column {name!r} has {array.dtype} values for a {dtype} field")
            data[name] = array.astype(dtype, copy=False)
        if len(geoms):
            self._sink.write(geoms, data)
            self.features += len(geoms)

    def _empty(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(0, dtype) for name, dtype in self.fields.items()}


def _dtype(dtype: Any) -> np.dtype:
    """A field's numpy dtype; text (``str``, ``"U"``, ``"S"``) is kept as ``object``."""
    dtype = np.dtype(dtype)
    return np.dtype(object) if dtype.kind in "US" else dtype


def _column(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """A 1-D array; strings (and an empty list, whose type is unknown) become object arrays."""
    array = np.asarray(values)
    if array.dtype.kind in "US" or (not isinstance(values, np.ndarray) and array.size == 0):
        array = array.astype(object)
    return array.reshape(-1)


def _crs(crs: CRS | str | None, path: Path) -> CRS | None:
    if crs is None or isinstance(crs, CRS):
        return crs
    try:
        return CRS.from_user_input(crs)
    except CRSError as error:
        raise InputError(f"{path}: cannot read the CRS {str(crs)[:60]!r} ({error}).") from None


def _types(geoms: np.ndarray) -> set[str]:
    return {g.geom_type for g in geoms if g is not None}


def _ogr_type(geometry_type: str | None, types: list[str]) -> tuple[str, bool]:
    """The OGR layer geometry type, and whether single parts must be promoted to multi."""
    if geometry_type is not None:
        return geometry_type, geometry_type.startswith("Multi")
    if len(types) == 1:
        return types[0], False
    if len(types) == 2 and _MULTI.get(types[1]) == types[0]:  # e.g. ["MultiPolygon", "Polygon"]
        return types[0], True
    return "Unknown", False


class _Sink:
    """One format's writer of a temporary file: non-empty batches, then close (or abort)."""

    def write(self, geoms: np.ndarray, data: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def close(self, empty: dict[str, np.ndarray]) -> None:
        """Finish the file; ``empty`` (zero-length typed columns) makes the layer when nothing was written."""
        raise NotImplementedError

    def abort(self) -> None:
        """Release what is open after an error (the temporary file is removed by the caller)."""


class _OgrSink(_Sink):
    """GDAL through pyogrio: the first batch creates the layer, the next ones append to it."""

    def __init__(self, temp: Path, driver: str, layer: str, crs: CRS | None, geometry_type: str | None):
        self.temp, self.driver, self.layer = temp, driver, layer
        self.crs = crs.to_wkt() if crs is not None else None
        self.geometry_type = geometry_type
        self.kind: tuple[str, bool] | None = None  # (OGR geometry type, promote to multi), from batch 1

    def write(self, geoms, data) -> None:
        if self.kind is None:
            self.kind = _ogr_type(self.geometry_type, sorted(_types(geoms)))
        self._write(self.temp, geoms, data, append=self.temp.exists())

    def close(self, empty) -> None:
        if self.kind is None:  # nothing written: an empty layer with the fields
            self.kind = _ogr_type(self.geometry_type, [])
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


class _GeoJsonSink(_OgrSink):
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
        if self.kind is None:
            self.kind = _ogr_type(self.geometry_type, sorted(_types(geoms)))
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
        if self.out is None:
            super().close(empty)
            return
        self.out.write(self.tail)
        self.out.close()

    def abort(self) -> None:
        if self.out is not None:
            self.out.close()


def _pyarrow(path: Path):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError(
            f'{path}: writing GeoParquet needs pyarrow; pip install "ovearth[parquet]".'
        ) from None
    return pyarrow


class _ParquetSink(_Sink):
    """GeoParquet: one row group per batch; ``geo`` metadata (bbox, types) completed on close."""

    def __init__(self, temp: Path, fields: dict[str, np.dtype], crs: CRS | None, geometry_type: str | None):
        self.pa = _pyarrow(temp)
        self.temp, self.fields, self.geometry_type = temp, fields, geometry_type
        self.crs = crs.to_dict(projjson=True) if crs is not None else None  # absent would mean OGC:CRS84
        self.writer = None
        self.schema = None
        self.types: set[str] = set()
        self.bbox: list[float] | None = None

    def write(self, geoms, data) -> None:
        pa = self.pa
        if self.writer is None:
            self._open(data)
        types = self.schema.types[:-1]  # the last column is the geometry
        arrays = [_arrow_array(pa, values, kind) for values, kind in zip(data.values(), types, strict=True)]
        arrays.append(pa.array(list(shapely.to_wkb(geoms)), type=pa.binary()))
        self.writer.write_batch(pa.record_batch(arrays, schema=self.schema), row_group_size=len(geoms))
        self.types |= _types(geoms)
        present = geoms[~shapely.is_empty(geoms) & ~shapely.is_missing(geoms)]
        if len(present):
            xmin, ymin, xmax, ymax = (float(v) for v in shapely.total_bounds(present))
            if self.bbox is not None:
                xmin, ymin = min(xmin, self.bbox[0]), min(ymin, self.bbox[1])
                xmax, ymax = max(xmax, self.bbox[2]), max(ymax, self.bbox[3])
            self.bbox = [xmin, ymin, xmax, ymax]

    def close(self, empty) -> None:
        if self.writer is None:
            self._open(empty)
        if hasattr(self.writer, "add_key_value_metadata"):  # pyarrow >= 15
            self.writer.add_key_value_metadata({"geo": self._geo(final=True)})
        self.writer.close()

    def abort(self) -> None:
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
