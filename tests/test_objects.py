"""Objects layer: instances written as polygons, read back with pyogrio."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from ovearth.data.objects import OBJECT_FIELDS, instance_polygon, write_objects
from ovearth.segment.instances import from_mask


def ring_instance():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 3:13] = True
    mask[5:8, 6:9] = False  # a hole of 9 pixels
    mask[15:18, 15:17] = True  # a second part
    return from_mask(mask, 1, "house", 0.75, offset=(100, 40))


def test_instance_polygon_traces_the_mask_in_image_pixels():
    one = ring_instance()
    geometry = instance_polygon(one)
    assert geometry.geom_type == "MultiPolygon" and geometry.area == one.pixels == 100 - 9 + 6
    assert shapely.bounds(geometry).tolist() == [43.0, 102.0, 57.0, 118.0] == [*one.box[:2], *one.box[2:]]


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet"])
def test_write_objects_reads_back_with_fields_area_and_crs(tmp_path, suffix):
    transform = rasterio.Affine(30.0, 0, 500000.0, 0, -30.0, 4000000.0)
    crs = rasterio.crs.CRS.from_epsg(32618)
    square = np.ones((4, 5), bool)
    instances = [ring_instance(), from_mask(square, 0, "water", 0.9, offset=(0, 0))]
    path = tmp_path / f"objects{suffix}"
    assert write_objects(path, instances, ["water", "building"], crs, transform) == 2
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        assert table.column_names[: len(OBJECT_FIELDS)] == list(OBJECT_FIELDS)
        assert b"geo" in table.schema.metadata
        return
    meta, _, geometry, fields = pyogrio.raw.read(path)
    assert list(meta["fields"]) == list(OBJECT_FIELDS)
    assert rasterio.crs.CRS.from_user_input(meta["crs"]) == crs
    row = dict(zip(meta["fields"], (f[0] for f in fields), strict=True))
    assert (row["class_name"], row["name"], row["score"], row["pixels"]) == ("building", "house", 0.75, 97)
    assert row["area_m2"] == pytest.approx(97 * 900)
    polygon = shapely.from_wkb(geometry[0])
    assert polygon.area == pytest.approx(97 * 900)
    assert (row["x_min"], row["y_max"]) == (500000.0 + 43 * 30, 4000000.0 - 102 * 30)
    water = shapely.from_wkb(geometry[1])
    assert water.area == pytest.approx(20 * 900)


def test_no_projection_gives_pixel_coordinates_and_null_area(tmp_path):
    path = tmp_path / "objects.gpkg"
    write_objects(path, [ring_instance()], ["water", "building"], None, None)
    meta, _, geometry, fields = pyogrio.raw.read(path)
    area = fields[list(meta["fields"]).index("area_m2")][0]
    assert np.isnan(area) and shapely.from_wkb(geometry[0]).area == 97


def test_an_empty_objects_layer_keeps_its_schema(tmp_path):
    path = tmp_path / "objects.gpkg"
    assert write_objects(path, [], ["water"], rasterio.crs.CRS.from_epsg(3857), None) == 0
    assert list(pyogrio.read_info(path)["fields"]) == list(OBJECT_FIELDS)
