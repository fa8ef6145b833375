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
from .vector_sinks import (
    GeoJsonSink,
    OgrSink,
    ParquetSink,
    Sink,
    field_column,
    field_dtype,
    pyarrow_module,
)

#: Supported output suffixes and their GDAL driver (None: written with pyarrow).
VECTOR_SUFFIXES: dict[str, str | None] = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".parquet": None}


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
        pyarrow_module(path)
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
    data = {name: field_column(values) for name, values in columns.items()}
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
        self.fields = {name: field_dtype(dtype) for name, dtype in fields.items()}
        self.crs = _crs(crs, self.path)
        self.layer = layer or self.path.stem
        self.geometry_type = geometry_type
        self.features = 0
        self._sink: Sink | None = None
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
                self._sink = ParquetSink(temp, self.fields, self.crs, self.geometry_type)
            elif driver == "GeoJSON":
                self._sink = GeoJsonSink(temp, driver, self.layer, self.crs, self.geometry_type)
            else:
                self._sink = OgrSink(temp, driver, self.layer, self.crs, self.geometry_type)
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
            array = field_column(values)
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


def _crs(crs: CRS | str | None, path: Path) -> CRS | None:
    if crs is None or isinstance(crs, CRS):
        return crs
    try:
        return CRS.from_user_input(crs)
    except CRSError as error:
        raise InputError(f"{path}: cannot read the CRS {str(crs)[:60]!r} ({error}).") from None
