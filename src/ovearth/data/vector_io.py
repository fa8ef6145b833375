"""Write vector features (shapely geometries plus attribute columns) as GeoPackage, GeoJSON or GeoParquet.

The format follows the suffix of the path (:data:`VECTOR_SUFFIXES`). GeoPackage and GeoJSON
are written by GDAL through ``pyogrio``; GeoParquet 1.1 with ``pyarrow`` (an optional
dependency, ``pip install "ovearth[parquet]"``): a WKB column ``geometry`` and the ``geo``
file metadata with the CRS as PROJJSON. Every write is atomic (temporary file beside the
target, then rename), so an error never leaves a partial file.

GeoJSON is written in the features' CRS with GDAL's ``crs`` member (not RFC 7946's
WGS 84 only); a GeoJSON without a CRS reads back as WGS 84, and an empty one keeps no
field schema (GeoPackage and GeoParquet keep both).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError

from ..errors import InputError
from .atomic import atomic_path

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
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{path}: {existing} is a file, so the output cannot be written under it.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{path}: {existing} cannot be written (read-only or no permission).")
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
    features still make a valid, empty layer with the columns' schema.

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
    path = check_vector_path(path)
    geoms = np.asarray(geometries, dtype=object).reshape(-1)
    data = {name: _column(values) for name, values in columns.items()}
    for name, values in data.items():
        if len(values) != len(geoms):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(geoms)} geometries")
    crs = _crs(crs, path)
    types = sorted({g.geom_type for g in geoms if g is not None})
    driver = VECTOR_SUFFIXES[path.suffix.lower()]
    with atomic_path(path) as temp:
        temp.unlink()  # GDAL and pyarrow create the file themselves
        if driver is None:
            _write_parquet(temp, geoms, data, crs, geometry_type, types)
        else:
            _write_ogr(temp, driver, geoms, data, crs, layer or path.stem, geometry_type, types)


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


def _ogr_type(geometry_type: str | None, types: list[str]) -> tuple[str, bool]:
    """The OGR layer geometry type, and whether single parts must be promoted to multi."""
    if geometry_type is not None:
        return geometry_type, geometry_type.startswith("Multi")
    if len(types) == 1:
        return types[0], False
    if len(types) == 2 and _MULTI.get(types[1]) == types[0]:  # e.g. ["MultiPolygon", "Polygon"]
        return types[0], True
    return "Unknown", False


def _write_ogr(temp, driver, geoms, data, crs, layer, geometry_type, types) -> None:
    from pyogrio.raw import write

    kind, promote = _ogr_type(geometry_type, types)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        write(
            temp,
            shapely.to_wkb(geoms),
            list(data.values()),
            list(data.keys()),
            layer=layer,
            driver=driver,
            geometry_type=kind,
            crs=crs.to_wkt() if crs is not None else None,
            promote_to_multi=promote,
        )


def _pyarrow(path: Path):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError(
            f'{path}: writing GeoParquet needs pyarrow; pip install "ovearth[parquet]".'
        ) from None
    return pyarrow


def _write_parquet(temp, geoms, data, crs, geometry_type, types) -> None:
    pa = _pyarrow(temp)
    import pyarrow.parquet as pq

    arrays = {name: _arrow_array(pa, values) for name, values in data.items()}
    arrays["geometry"] = pa.array(list(shapely.to_wkb(geoms)), type=pa.binary())
    table = pa.table(arrays)
    column = {
        "encoding": "WKB",
        "geometry_types": [geometry_type] if geometry_type is not None else types,
        "crs": crs.to_dict(projjson=True) if crs is not None else None,  # absent would mean OGC:CRS84
    }
    if len(geoms) and not shapely.is_empty(geoms).all():
        column["bbox"] = [float(v) for v in shapely.total_bounds(geoms)]
    geo = {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"geo": json.dumps(geo).encode()})
    pq.write_table(table, temp)


def _arrow_array(pa, values: np.ndarray):
    """An Arrow array: NaN -> null in floats; object columns inferred (strings when all null)."""
    if values.dtype.kind == "f":
        return pa.array(values, from_pandas=True)
    if values.dtype.kind == "O":
        array = pa.array(list(values))
        return array.cast(pa.string()) if pa.types.is_null(array.type) else array
    return pa.array(values)
