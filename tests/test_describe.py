"""Labels and scores rasters describe themselves: in the file, and in GDAL and QGIS sidecars."""

from __future__ import annotations

import ctypes
import glob
import logging
import math
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from ovearth.data.describe import RAT_COLUMNS, pam_xml, qgis_style, sidecar_paths
from ovearth.data.legend import ClassTable, read_class_table
from ovearth.data.output import is_own_output
from ovearth.data.raster import read_image
from ovearth.data.raster_write import write_labels, write_scores
from ovearth.viz import palette

NAMES = ["building", "road & path", "tree <tall>"]  # characters XML must escape
FREE = ClassTable.build(NAMES, palette(3), unclassified=True)  # free-form classes: 254 can occur
PRESET = ClassTable.build(NAMES, palette(3), unclassified=False)  # a benchmark preset: it cannot


@pytest.fixture
def labels_file(samples, tmp_path) -> Path:
    """RGB.byte.tif's labels: classes 0..2, 254 in a band, 255 on nodata."""
    image = read_image(samples / "RGB.byte.tif")
    labels = (np.arange(image.valid.size).reshape(image.valid.shape) // 7000 % 3).astype(np.uint8)
    labels[300:320] = 254
    labels[~image.valid] = 255
    write_labels(tmp_path / "scene_labels.tif", labels, image, FREE)
    return tmp_path / "scene_labels.tif"


def test_labels_geotiff_carries_names_colours_and_nodata(labels_file, caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING), rasterio.open(labels_file) as src:
        warnings.simplefilter("error")  # a Python warning fails the test; GDAL's go to the log
        colormap = src.colormap(1)
        assert src.nodata == 255 and src.descriptions == ("class",) and src.dtypes == ("uint8",)
        assert src.tags(1)["LAYER_TYPE"] == "thematic"  # from the .aux.xml: GDAL read the sidecar
        assert 254 in np.unique(src.read(1))
    assert not caplog.records  # GDAL had nothing to complain about
    for k in range(3):
        assert colormap[k] == (*map(int, palette(3)[k]), 255)
    assert colormap[254] == (220, 220, 220, 255) and colormap[255][3] == 0
    assert read_class_table(labels_file) == FREE
    assert sorted(p.name for p in labels_file.parent.iterdir()) == [
        "scene_labels.qml",
        "scene_labels.tif",
        "scene_labels.tif.aux.xml",
    ]


def test_aux_xml_names_every_value_in_order(labels_file):
    root = ET.parse(sidecar_paths(labels_file)["aux"]).getroot()
    band = root.find("PAMRasterBand")
    assert root.tag == "PAMDataset" and band.get("band") == "1"
    categories = [c.text or "" for c in band.find("CategoryNames")]
    assert len(categories) == 256 and categories[:3] == NAMES
    assert set(categories[3:254]) == {""} and categories[254:] == ["unclassified", "nodata"]
    rat = band.find("GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    columns = [
        (f.findtext("Name"), int(f.findtext("Type")), int(f.findtext("Usage"))) for f in rat.iter("FieldDefn")
    ]
    assert columns == list(RAT_COLUMNS)
    rows = [[f.text for f in row.iter("F")] for row in rat.iter("Row")]
    assert rows == [[str(v), name, *map(str, rgba)] for v, name, rgba in FREE.rows()]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 254, 255]


def test_without_unclassified_254_has_no_name():
    band = ET.fromstring(pam_xml(PRESET)).find("PAMRasterBand")
    categories = [c.text or "" for c in band.find("CategoryNames")]
    assert categories[254] == "" and categories[255] == "nodata"
    assert [row.findtext("F") for row in band.iter("Row")] == ["0", "1", "2", "255"]


def test_qgis_style_is_a_paletted_renderer_of_every_value(labels_file):
    style = sidecar_paths(labels_file)["style"]
    assert style.name == "scene_labels.qml"  # QGIS loads <raster name>.qml by default
    text = style.read_text()
    assert text.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(text)
    renderer = root.find("pipe/rasterrenderer")
    assert root.tag == "qgis" and renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = [e.attrib for e in renderer.iter("paletteEntry")]
    expected = [
        {
            "value": str(v),
            "color": "#{:02x}{:02x}{:02x}".format(*rgba[:3]),
            "alpha": str(rgba[3]),
            "label": name,
        }
        for v, name, rgba in FREE.rows()
    ]
    assert entries == expected
    assert entries[-1]["value"] == "255" and entries[-1]["alpha"] == "0"  # nodata transparent
    assert ET.fromstring(qgis_style(PRESET)).find("pipe/rasterrenderer/colorPalette")[-2].get("value") == "2"


def test_gdal_reads_the_category_names_and_the_attribute_table(labels_file):
    gdal = _libgdal()
    dataset = gdal.GDALOpen(str(labels_file).encode(), 0)
    try:
        band = gdal.GDALGetRasterBand(dataset, 1)
        rat = gdal.GDALGetDefaultRAT(band)  # also loads the PAM sidecar (GTiff loads it lazily)
        assert rat and gdal.GDALRATGetRowCount(rat) == 5 and gdal.GDALRATGetColumnCount(rat) == 6
        assert gdal.GDALRATGetValueAsString(rat, 1, 1) == b"road & path"
        assert gdal.GDALRATGetValueAsString(rat, 3, 0) == b"254"
        names = gdal.GDALGetRasterCategoryNames(band)
        values = []
        while names[len(values)] is not None:
            values.append(names[len(values)].decode())
        assert len(values) == 256 and values[:3] == NAMES and values[254:] == ["unclassified", "nodata"]
    finally:
        gdal.GDALClose(dataset)


def test_scores_name_their_bands_and_declare_nan_nodata(samples, tmp_path):
    image = read_image(samples / "RGB.byte.tif")
    scores = np.full((3, *image.valid.shape), 0.25, np.float32)
    scores[:, ~image.valid] = np.nan
    write_scores(tmp_path / "scene_scores.tif", scores, NAMES, image)
    with rasterio.open(tmp_path / "scene_scores.tif") as src:
        assert math.isnan(src.nodata) and src.descriptions == tuple(NAMES) and src.dtypes[0] == "float32"
        np.testing.assert_array_equal(src.dataset_mask() > 0, image.valid)  # NaN read as nodata
    with pytest.raises(ValueError, match="2 class names for 3 score bands"):
        write_scores(tmp_path / "bad_scores.tif", scores, NAMES[:2], image)
    assert not (tmp_path / "bad_scores.tif").exists()


def test_png_labels_use_the_table_palette_and_no_sidecars(tmp_path):
    from ovearth.data.raster import RasterImage

    labels = np.array([[0, 1, 2], [254, 255, 0]], np.uint8)
    image = RasterImage(tmp_path / "a.png", np.zeros((2, 3, 3), np.uint8), labels != 255)
    write_labels(tmp_path / "a_labels.png", labels, image, FREE)
    with Image.open(tmp_path / "a_labels.png") as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.asarray(picture), labels)
        flat = picture.getpalette()
        assert tuple(flat[3:6]) == tuple(palette(3)[1]) and tuple(flat[3 * 254 : 3 * 255]) == (220, 220, 220)
        alpha = np.asarray(picture.convert("RGBA"))[..., 3]
        np.testing.assert_array_equal(alpha, np.where(labels == 255, 0, 255))  # nodata transparent
    assert [p.name for p in tmp_path.iterdir()] == ["a_labels.png"]


def test_sidecars_and_scores_are_recognised_as_outputs(tmp_path):
    paths = sidecar_paths(tmp_path / "scene_labels.tif")
    assert paths["aux"].name == "scene_labels.tif.aux.xml" and paths["style"].name == "scene_labels.qml"
    for path in (*paths.values(), tmp_path / "scene_scores.tif", tmp_path / "scene_labels.tif"):
        assert is_own_output(path)
    assert not is_own_output(tmp_path / "scene.tif") and not is_own_output(tmp_path / "scene.tif.aux.xml")


def _libgdal() -> ctypes.CDLL:
    """The GDAL library rasterio is built on, through ctypes (skips where it is not a separate file)."""
    found = glob.glob(
        os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libgdal*")
    )
    if not found:
        pytest.skip("rasterio's libgdal is not a separate library here")
    gdal = ctypes.CDLL(found[0])
    handle, text = ctypes.c_void_p, ctypes.c_char_p
    for name, result, args in [
        ("GDALOpen", handle, [text, ctypes.c_int]),
        ("GDALClose", None, [handle]),
        ("GDALGetRasterBand", handle, [handle, ctypes.c_int]),
        ("GDALGetDefaultRAT", handle, [handle]),
        ("GDALRATGetRowCount", ctypes.c_int, [handle]),
        ("GDALRATGetColumnCount", ctypes.c_int, [handle]),
        ("GDALRATGetValueAsString", text, [handle, ctypes.c_int, ctypes.c_int]),
        ("GDALGetRasterCategoryNames", ctypes.POINTER(text), [handle]),
    ]:
        function = getattr(gdal, name)
        function.restype, function.argtypes = result, args
    return gdal
