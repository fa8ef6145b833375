"""segment's GIS outputs end to end: polygons, objects, COG layout, whole image == windows."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from ovearth import Segmentor
from ovearth.data.legend import read_class_table
from ovearth.run.files import FileOptions, segment_file
from ovearth.segment.instances import mask_iou

from .test_cog import assert_cog
from .test_scene import write_scene

CLASSES = "building,roof;road;tree"
WINDOWS = {"slide_crop": 256, "slide_stride": 192, "confidence_threshold": 0.05, "prob_thd": 0.3}


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """One scene segmented whole and by windows, with every GIS output asked for."""
    folder = tmp_path_factory.mktemp("gis")
    path = write_scene(folder / "scene.tif", 700, 600)
    seg = Segmentor(tiny, CLASSES, **WINDOWS)
    out = {}
    for how, windowed in (("whole", False), ("windows", True)):
        options = FileOptions(windowed=windowed, vector="gpkg", objects=True)
        out[how] = segment_file(seg, path, folder / how, options)
    return out


def test_polygons_are_the_labels_regions(runs):
    _, paths = runs["whole"]
    with rasterio.open(paths["labels"]) as src:
        labels, crs, pixel = src.read(1), src.crs, abs(src.transform.determinant)
    meta, _, geometry, fields = pyogrio.raw.read(paths["polygons"])
    assert rasterio.crs.CRS.from_user_input(meta["crs"]) == crs
    column = dict(zip(meta["fields"], fields, strict=True))
    areas = shapely.area(shapely.from_wkb(geometry))
    table = read_class_table(paths["labels"])
    for k, name in enumerate(table.names):
        mine = column["class_index"] == k
        assert (column["class_name"][mine] == name).all()
        assert column["pixels"][mine].sum() == (labels == k).sum()  # every pixel of the class, once
        assert areas[mine].sum() == pytest.approx((labels == k).sum() * pixel)
        assert column["area_m2"][mine].sum() == pytest.approx((labels == k).sum() * pixel)
    assert set(np.unique(column["class_index"])) <= {0, 1, 2}  # neither unclassified (254) nor nodata
    assert ((column["mean_score"] >= 0.3) & (column["mean_score"] <= 1)).all()  # above prob_thd
    assert not any(p.name.endswith(".part.tif") for p in paths["labels"].parent.iterdir())


def test_whole_and_windowed_outputs_agree_and_are_cogs(runs):
    (whole, whole_paths), (_, window_paths) = runs["whole"], runs["windows"]
    for name in ("labels", "polygons", "objects"):
        assert whole_paths[name].name == window_paths[name].name
    assert_cog(whole_paths["labels"])
    assert_cog(window_paths["labels"])
    with rasterio.open(whole_paths["labels"]) as a, rasterio.open(window_paths["labels"]) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    for name in ("polygons", "objects"):
        a, b = pyogrio.raw.read(whole_paths[name]), pyogrio.raw.read(window_paths[name])
        assert len(a[2]) == len(b[2]) > 0, name
        for column_a, column_b in zip(a[3], b[3], strict=True):
            np.testing.assert_allclose(column_a, column_b, rtol=1e-5) if column_a.dtype.kind == "f" else (
                np.testing.assert_array_equal(column_a, column_b)
            )
    assert whole.instances is not None and len(whole.instances) == len(a[2])


def test_objects_are_deduplicated_across_overlapping_windows(runs):
    whole, paths = runs["whole"]
    meta, _, geometry, fields = pyogrio.raw.read(paths["objects"])
    column = dict(zip(meta["fields"], fields, strict=True))
    assert (column["score"] > WINDOWS["confidence_threshold"]).all()
    for i, a in enumerate(whole.instances):
        for b in whole.instances[i + 1 :]:
            assert a.class_index != b.class_index or mask_iou(a, b) <= 0.5
    polygons = shapely.from_wkb(geometry)
    assert np.allclose(shapely.area(polygons), column["area_m2"])


def test_cli_writes_the_gis_outputs_and_refuses_bad_vector_options(
    samples, tiny_dir, tmp_path, monkeypatch, capsys
):
    from .conftest import run_cli

    out = tmp_path / "out"
    code, err = run_cli(
        monkeypatch, capsys, "segment", samples / "RGB.byte.tif", "--model", tiny_dir, "--classes",
        "water;land", "--prob-thd", "0.3", "--vector", "geojson", "--simplify", "60", "--objects",
        "--confidence-threshold", "0.05", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "RGB.byte_labels.geojson",
        "RGB.byte_labels.qml",
        "RGB.byte_labels.tif",
        "RGB.byte_labels.tif.aux.xml",
        "RGB.byte_objects.geojson",
        "RGB.byte_overlay.png",
        "run.json",
    ]
    table = read_class_table(out / "RGB.byte_labels.tif")
    assert table.unclassified and table.name_of(254) == "unclassified" and table.names == ("water", "land")
    for option, value, message in (
        ("--vector", "shp", "--vector must be one of gpkg, geojson, parquet"),
        ("--min-area", "-1", "--min-area must be a finite number >= 0"),
    ):
        bad = tmp_path / f"bad{option}"
        args = ["segment", samples / "RGB.byte.tif", "--model", tiny_dir, "--classes", "a", "-o", bad]
        code, err = run_cli(
            monkeypatch, capsys, *args, option, value, *(["--vector", "gpkg"] * (option != "--vector"))
        )
        assert code == 1 and message in err and not bad.exists()
