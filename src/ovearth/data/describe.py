"""Labels and scores rasters that describe themselves, in the file and beside it.

:func:`open_labels` and :func:`open_scores` open the GeoTIFFs that
:func:`~ovearth.data.raster_write.write_labels`, :func:`~ovearth.data.raster_write.write_scores` and
:class:`~ovearth.data.scene.SceneWriter` write (layout: :mod:`ovearth.data.cog`), and
describe them in the file (:func:`describe_labels`, :func:`describe_scores`):

* labels: uint8, nodata 255, the colour table of the
  :class:`~ovearth.data.legend.ClassTable` (254 unclassified grey when used, 255
  transparent), band description ``class``, the table as the dataset tag
  ``OVEARTH_CLASSES`` (read back by :func:`~ovearth.data.legend.read_class_table`);
* scores: float32, nodata NaN, band ``k`` named after class ``k``.

Beside a labels GeoTIFF ``<stem>.tif`` (:func:`write_sidecars`; names from
:func:`sidecar_paths` and :data:`SIDECAR_SUFFIXES`, the one place that knows them):

* ``<stem>.tif.aux.xml``: GDAL's PAM sidecar with, for band 1, the category names
  (indexed by value: the class names, ``unclassified`` at 254 when used, ``nodata`` at
  255, empty strings between) and a thematic raster attribute table (Value, Class,
  Red, Green, Blue, Alpha; one row per value that can occur), so GDAL, QGIS (3.30+) and
  ArcGIS show class names; band metadata ``LAYER_TYPE=thematic``.
* ``<stem>.qml``: a QGIS paletted style (colour and name of each value, nodata
  transparent, nearest-neighbour resampling) that QGIS applies when it opens the raster.

Labels of non-georeferenced input are palette PNGs (:func:`palette_png`,
:func:`png_alpha`): the same colours, 255 transparent, no sidecars.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.io import DatasetWriter

from ..constants import NODATA_LABEL
from .atomic import atomic_path
from .cog import geotiff_profile, open_geotiff
from .legend import ClassTable

#: Suffix GDAL appends to a raster's full file name for its PAM sidecar.
AUX_SUFFIX = ".aux.xml"

#: Suffix that replaces a raster's own for the QGIS style QGIS loads by default.
STYLE_SUFFIX = ".qml"

#: Endings of every sidecar name (see :func:`sidecar_paths`).
SIDECAR_SUFFIXES = (AUX_SUFFIX, STYLE_SUFFIX)

#: Band description of the labels band.
LABELS_BAND = "class"

#: GDAL raster attribute table columns: (name, type: 0 integer / 2 string, usage).
#: Usages (``GDALRATFieldUsage``): 5 MinMax (the value), 2 Name, 6-9 Red, Green, Blue, Alpha.
RAT_COLUMNS = (
    ("Value", 0, 5),
    ("Class", 2, 2),
    ("Red", 0, 6),
    ("Green", 0, 7),
    ("Blue", 0, 8),
    ("Alpha", 0, 9),
)

#: Declaration QGIS writes at the top of a ``.qml`` file.
QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"


def sidecar_paths(labels: str | Path) -> dict[str, Path]:
    """``{"aux": <labels>.tif.aux.xml, "style": <labels stem>.qml}`` of a labels GeoTIFF."""
    labels = Path(labels)
    return {"aux": labels.with_name(labels.name + AUX_SUFFIX), "style": labels.with_suffix(STYLE_SUFFIX)}


def describe_labels(dataset: DatasetWriter, table: ClassTable) -> None:
    """Colour table, band description ``class`` and class-table tags of a labels raster being written."""
    dataset.write_colormap(1, table.colormap())
    dataset.set_band_description(1, LABELS_BAND)
    dataset.update_tags(**table.to_tags())


def describe_scores(dataset: DatasetWriter, names: list[str] | tuple[str, ...]) -> None:
    """Band ``k`` of a scores raster being written is named after class ``k``.

    Raises:
        ValueError: not one name per band.

    """
    if len(names) != dataset.count:
        raise ValueError(f"{len(names)} class names for {dataset.count} score bands")
    for band, name in enumerate(names, start=1):
        dataset.set_band_description(band, name)


@contextlib.contextmanager
def open_labels(
    temp: Path,
    shape: tuple[int, ...],
    table: ClassTable,
    crs: rasterio.crs.CRS | None = None,
    transform: rasterio.Affine | None = None,
    cog: bool = True,
) -> Iterator[DatasetWriter]:
    """A described uint8 labels GeoTIFF (nodata 255) open for writing; finished at ``temp`` on a clean exit.

    See :func:`~ovearth.data.cog.open_geotiff` (``temp`` comes from an atomic path;
    overviews by ``mode``). The sidecars are the caller's (:func:`write_sidecars`).
    """
    profile = geotiff_profile(shape, 1, "uint8", crs, transform, nodata=NODATA_LABEL)
    with open_geotiff(temp, profile, Resampling.mode, cog) as out:
        describe_labels(out, table)
        yield out


@contextlib.contextmanager
def open_scores(
    temp: Path,
    shape: tuple[int, ...],
    names: list[str] | tuple[str, ...],
    crs: rasterio.crs.CRS | None = None,
    transform: rasterio.Affine | None = None,
    cog: bool = True,
) -> Iterator[DatasetWriter]:
    """A float32 scores GeoTIFF (a band per name, nodata NaN) open for writing; finished at ``temp``.

    See :func:`open_labels`; overviews by ``average`` (NaN excluded).
    """
    profile = geotiff_profile(shape, len(names), "float32", crs, transform, nodata=float("nan"))
    with open_geotiff(temp, profile, Resampling.average, cog) as out:
        describe_scores(out, names)
        yield out


def palette_png(labels: np.ndarray, table: ClassTable) -> Image.Image:
    """``[H, W]`` uint8 labels as a palette picture with the colours of ``table``."""
    picture = Image.fromarray(labels, mode="P")
    flat = np.zeros((256, 3), np.uint8)
    for value, (red, green, blue, _) in table.colormap().items():
        flat[value] = (red, green, blue)
    picture.putpalette(flat.ravel().tolist())
    return picture


def png_alpha(table: ClassTable) -> bytes:
    """The PNG transparency of each palette entry: opaque, but transparent where ``table`` says (nodata)."""
    alpha = bytearray([255] * 256)
    for value, rgba in table.colormap().items():
        alpha[value] = rgba[3]
    return bytes(alpha)


def write_sidecars(labels: str | Path, table: ClassTable) -> dict[str, Path]:
    """Write the PAM and QGIS sidecars of the labels GeoTIFF ``labels``, atomically.

    Both are renamed into place only once both are written.

    Returns:
        :func:`sidecar_paths` of ``labels``.

    """
    paths = sidecar_paths(labels)
    with atomic_path(paths["aux"]) as aux, atomic_path(paths["style"]) as style:
        aux.write_text(pam_xml(table), encoding="utf-8")
        style.write_text(qgis_style(table), encoding="utf-8")
    return paths


def category_names(table: ClassTable) -> list[str]:
    """Name of every value ``0 .. 255`` (``""`` for values that cannot occur)."""
    names = [""] * (NODATA_LABEL + 1)
    for value, name, _ in table.rows():
        names[value] = name
    return names


def pam_xml(table: ClassTable) -> str:
    """The GDAL PAM document (``.aux.xml``) naming the values of band 1."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    ET.SubElement(band, "Description").text = LABELS_BAND
    categories = ET.SubElement(band, "CategoryNames")
    for name in category_names(table):
        ET.SubElement(categories, "Category").text = name
    metadata = ET.SubElement(band, "Metadata")
    ET.SubElement(metadata, "MDI", key="LAYER_TYPE").text = "thematic"
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for index, (name, kind, usage) in enumerate(RAT_COLUMNS):
        field = ET.SubElement(rat, "FieldDefn", index=str(index))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for index, (value, name, rgba) in enumerate(table.rows()):
        row = ET.SubElement(rat, "Row", index=str(index))
        for cell in (value, name, *rgba):
            ET.SubElement(row, "F").text = str(cell)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def qgis_style(table: ClassTable) -> str:
    """The QGIS layer style (``.qml``): a paletted renderer of band 1 with every value's colour and name."""
    root = ET.Element("qgis", version="3.28.0", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        enabled="false",
        zoomedInResamplingMethod="nearestNeighbour",
        zoomedOutResamplingMethod="nearestNeighbour",
        maxOversampling="2",
    )
    renderer = ET.SubElement(
        pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1", nodataColor=""
    )
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, name, (red, green, blue, alpha) in table.rows():
        ET.SubElement(
            palette,
            "paletteEntry",
            value=str(value),
            color=f"#{red:02x}{green:02x}{blue:02x}",
            alpha=str(alpha),
            label=name,
        )
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(
        pipe,
        "huesaturation",
        saturation="0",
        grayscaleMode="0",
        colorizeOn="0",
        colorizeRed="255",
        colorizeGreen="128",
        colorizeBlue="128",
        colorizeStrength="100",
    )
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    return f"{QML_DOCTYPE}\n{ET.tostring(root, encoding='unicode')}\n"
