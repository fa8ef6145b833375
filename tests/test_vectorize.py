"""Polygons from a labels raster: regions, strips, fields, formats, simplification, errors, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from rasterio.transform import Affine
from scipy import ndimage

import ovearth.data.strip_regions as strip_regions
from ovearth.data.legend import ClassTable
from ovearth.data.vector_io import VectorWriter, write_vector
from ovearth.data.vectorize import FIELDS, vectorize
from ovearth.errors import InputError

from .conftest import run_cli

PIXEL = 30.0
UTM = "EPSG:32618"


def from_origin(west: float, north: float, xsize: float, ysize: float) -> Affine:
    """North-up grid (rasterio's own from_origin warns about Affine * in this version)."""
    return Affine(xsize, 0.0, west, 0.0, -ysize, north)


def table_of(k: int, unclassified: bool = True) -> ClassTable:
    return ClassTable.build([f"class{i}" for i in range(k)], np.zeros((k, 3)), unclassified)


def write_labels(path, labels, k=4, crs=UTM, transform=None, tags=True, **creation):
    """A labels GeoTIFF as ovearth writes it (uint8, class table tag); 30 m pixels by default."""
    height, width = labels.shape
    transform = transform or from_origin(500000.0, 4000000.0, PIXEL, PIXEL)
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
        transform=transform, **creation,
    ) as dst:  # fmt: skip
        dst.write(labels.astype(np.uint8), 1)
        if tags:
            dst.update_tags(**table_of(k).to_tags())
    return path


def write_scores(path, scores, crs=UTM, transform=None):
    """A scores GeoTIFF: ``[K, H, W]`` float32."""
    k, height, width = scores.shape
    transform = transform or from_origin(500000.0, 4000000.0, PIXEL, PIXEL)
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=k, dtype="float32", crs=crs,
        transform=transform,
    ) as dst:  # fmt: skip
        dst.write(scores.astype(np.float32))
    return path


def read_features(path):
    """(geometries, {field: array}, crs) of a .gpkg / .geojson."""
    meta, _, wkb, values = pyogrio.raw.read(path)
    return shapely.from_wkb(wkb), dict(zip(meta["fields"], values, strict=True)), meta["crs"]


def canonical(path):
    """(normalised geometries, fields) of a layer sorted by class then geometry: its features as a set.

    Regions are disjoint, so no two features have the same class and geometry.
    """
    geoms, fields, _ = read_features(path)
    geoms = shapely.normalize(geoms)
    keys = [(int(c), shapely.to_wkb(g)) for c, g in zip(fields["class_index"], geoms, strict=True)]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return geoms[order], {name: values[order] for name, values in fields.items()}


def assert_same_features(path, reference):
    """The same features (exact geometries, every field), in any order."""
    geoms, fields = canonical(path)
    ref_geoms, ref_fields = canonical(reference)
    assert len(geoms) == len(ref_geoms)
    assert shapely.equals_exact(geoms, ref_geoms, tolerance=0).all()
    for name in FIELDS:
        if name == "class_name":
            assert fields[name].tolist() == ref_fields[name].tolist()
        else:
            np.testing.assert_array_equal(fields[name], ref_fields[name])  # NaN == NaN here


def blobs(seed: int, height: int, width: int, k: int = 4) -> np.ndarray:
    """Random blocky classes with some unclassified and nodata pixels."""
    rng = np.random.default_rng(seed)
    labels = ndimage.median_filter(rng.integers(0, k, (height, width)), 3).astype(np.uint8)
    labels[rng.random((height, width)) < 0.03] = 254
    labels[:2, :4] = 255
    return labels


def gdal_regions(labels: np.ndarray, k: int) -> dict[int, list]:
    """Reference: GDAL Polygonize (4-connectivity) of the whole raster per class, in pixel coordinates."""
    return {
        v: [shapely.geometry.shape(g) for g, _ in shapes(labels, mask=labels == v, connectivity=4)]
        for v in range(k)
    }


def test_corner_contact_makes_two_regions(tmp_path):
    labels = np.full((6, 6), 255, np.uint8)
    labels[0:2, 0:2] = 0
    labels[2:4, 2:4] = 0
    labels[4:6, 0:2] = 1
    summary = vectorize(write_labels(tmp_path / "l.tif", labels), tmp_path / "o.gpkg")
    geoms, fields, _ = read_features(tmp_path / "o.gpkg")
    assert summary.features == 3 and summary.per_class == {"class0": 2, "class1": 1, "class2": 0, "class3": 0}
    assert list(fields) == list(FIELDS)
    assert fields["class_index"].tolist() == [0, 0, 1]
    assert fields["class_name"].tolist() == ["class0", "class0", "class1"]
    assert fields["pixels"].tolist() == [4, 4, 4]
    assert np.allclose(fields["area_m2"], 4 * PIXEL * PIXEL)
    assert np.isnan(fields["mean_score"]).all()  # no scores raster: null
    # squares in the CRS: x0 + 30 * col, y0 - 30 * row
    assert shapely.equals(geoms[0], shapely.box(500000, 4000000 - 60, 500060, 4000000))
    assert shapely.equals(geoms[1], shapely.box(500060, 4000000 - 120, 500120, 4000000 - 60))


@pytest.mark.parametrize("inner", [0, 254])
def test_ring_has_a_hole(tmp_path, inner):
    labels = np.full((7, 7), 2, np.uint8)
    labels[1:6, 1:6] = 1
    labels[2:5, 2:5] = inner
    vectorize(write_labels(tmp_path / "l.tif", labels), tmp_path / "o.gpkg", strip_rows=2)
    geoms, fields, _ = read_features(tmp_path / "o.gpkg")
    by_class = {int(c): g for c, g in zip(fields["class_index"], geoms, strict=True)}
    assert sorted(by_class) == ([0, 1, 2] if inner == 0 else [1, 2])
    ring, frame = by_class[1], by_class[2]
    assert len(ring.interiors) == 1 and len(frame.interiors) == 1
    assert ring.area == pytest.approx(16 * PIXEL**2) and frame.area == pytest.approx(24 * PIXEL**2)
    assert fields["pixels"][fields["class_index"] == 1].tolist() == [16]
    if inner == 0:
        assert by_class[0].area == pytest.approx(9 * PIXEL**2)
        assert shapely.equals(shapely.Polygon(ring.interiors[0]), by_class[0])


@pytest.mark.parametrize(("strip_rows", "batch_size"), [(1, 20_000), (3, 7), (7, 1)])
def test_strips_give_the_whole_raster_result(tmp_path, strip_rows, batch_size):
    labels = blobs(0, 41, 37)
    # one snake of class 3 through every strip, and a diagonal staircase that must stay apart
    labels[:, 30] = 3
    labels[40, 20:31] = 3
    labels[[10, 11, 12], [33, 34, 35]] = 2
    path = write_labels(tmp_path / "l.tif", labels, transform=from_origin(0, 41, 1, 1), crs=None)
    whole = vectorize(path, tmp_path / "whole.gpkg", strip_rows=10**6)
    cut = vectorize(path, tmp_path / "cut.gpkg", strip_rows=strip_rows, batch_size=batch_size)
    assert cut.features == whole.features and cut.per_class == whole.per_class
    # the same features; their order follows the strips (regions are written when finished)
    assert_same_features(tmp_path / "cut.gpkg", tmp_path / "whole.gpkg")
    g_cut, f_cut, _ = read_features(tmp_path / "cut.gpkg")
    assert shapely.is_valid(g_cut).all()
    # the same strips and batches: the same order
    vectorize(path, tmp_path / "again.gpkg", strip_rows=strip_rows, batch_size=batch_size)
    g_again, f_again, _ = read_features(tmp_path / "again.gpkg")
    assert shapely.equals_exact(g_again, g_cut, tolerance=0).all()
    assert f_again["pixels"].tolist() == f_cut["pixels"].tolist()
    # and both equal GDAL on the whole array (pixel coords -> this transform: y = 41 - row)
    reference = gdal_regions(labels, 4)
    for value, polygons in reference.items():
        mine = g_cut[f_cut["class_index"] == value]
        assert len(mine) == len(polygons)
        flipped = [shapely.affinity.affine_transform(p, [1, 0, 0, -1, 0, 41]) for p in polygons]
        assert {shapely.normalize(p).wkt for p in flipped} == {shapely.normalize(p).wkt for p in mine}


def test_streaming_holds_one_batch_and_the_regions_open_at_the_strip_boundary(tmp_path, monkeypatch):
    labels = ndimage.median_filter(np.random.default_rng(11).integers(0, 4, (600, 600)), 3).astype(np.uint8)
    path = write_labels(tmp_path / "l.tif", labels, transform=from_origin(0, 600, 1, 1), crs=None)
    whole = vectorize(path, tmp_path / "whole.gpkg", strip_rows=10**6, batch_size=10**7)

    live = {"now": 0, "peak": 0}  # regions (and pieces of regions) in memory

    class Counted(strip_regions.Region):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            live["now"] += 1
            live["peak"] = max(live["peak"], live["now"])

        def __del__(self):
            live["now"] -= 1

    batches = []
    write = VectorWriter.write

    def spy(self, geometries, columns):
        batches.append(len(geometries))
        write(self, geometries, columns)

    monkeypatch.setattr(strip_regions, "Region", Counted)
    monkeypatch.setattr(VectorWriter, "write", spy)
    cut = vectorize(path, tmp_path / "cut.gpkg", strip_rows=16, batch_size=500)
    assert cut.features == whole.features > 20_000 and cut.per_class == whole.per_class
    assert max(batches) == 500 and set(batches[:-1]) == {500} and sum(batches) == cut.features
    # one batch, plus the pieces touching a strip boundary (a row has 600 pixels): not the scene
    assert live["peak"] <= 500 + 2 * 600 < cut.features / 10
    assert live["now"] == 0
    assert_same_features(tmp_path / "cut.gpkg", tmp_path / "whole.gpkg")


def test_default_strips_hold_about_strip_pixels_in_whole_blocks(tmp_path, monkeypatch):
    labels = blobs(0, 48, 40)
    path = write_labels(
        tmp_path / "l.tif", labels, transform=from_origin(0, 48, 1, 1), crs=None, tiled=True,
        blockxsize=16, blockysize=16,
    )  # fmt: skip
    reads = []
    read = rasterio.io.DatasetReader.read

    def spy(self, *args, window=None, **kwargs):
        reads.append(window.height)
        return read(self, *args, window=window, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    monkeypatch.setattr(strip_regions, "STRIP_PIXELS", 40 * 40)
    vectorize(path, tmp_path / "o.gpkg")  # 40 rows: 2 blocks of 16
    assert reads == [32, 16]
    monkeypatch.setattr(strip_regions, "STRIP_PIXELS", 6 * 40 + 39)
    vectorize(path, tmp_path / "six.gpkg")  # fewer rows than a block: 6
    assert reads == [32, 16] + [6] * 8
    assert_same_features(tmp_path / "six.gpkg", tmp_path / "o.gpkg")


def vector_batch_data(n=23):
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 1000, (2, n)) * 30.0 + [[500000.0], [4000000.0]]
    geoms = shapely.box(x, y, x + 30 * rng.integers(1, 5, n), y + 30 * rng.integers(1, 5, n))
    score = rng.random(n)
    score[[3, 17]] = np.nan
    columns = {"id": np.arange(n), "name": np.array([f"f{i}é" for i in range(n)], object), "score": score}
    return geoms, columns


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet"])
def test_vector_writer_batches_make_the_layer_of_one_write(tmp_path, suffix):
    geoms, columns = vector_batch_data()
    fields = {"id": np.int64, "name": str, "score": np.float64}  # str: text, as object
    out = tmp_path / f"b{suffix}"
    with VectorWriter(out, fields, UTM, layer="layer", geometry_type="Polygon") as writer:
        for lo, hi in [(0, 10), (10, 10), (10, 11), (11, 23)]:  # with an empty batch
            writer.write(geoms[lo:hi], {name: values[lo:hi] for name, values in columns.items()})
    assert writer.features == 23
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    if suffix == ".parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        assert pq.ParquetFile(out).num_row_groups == 3  # one per non-empty batch
        table = pq.read_table(out)
        assert table.column_names == [*fields, "geometry"]
        column = json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]
        assert column["geometry_types"] == ["Polygon"] and column["encoding"] == "WKB"
        assert column["bbox"] == list(shapely.total_bounds(geoms))  # of every batch
        assert CRS.from_user_input(json.dumps(column["crs"])) == CRS.from_string(UTM)
        assert shapely.equals_exact(shapely.from_wkb(table.column("geometry").to_pylist()), geoms).all()
        assert table.column("id").to_pylist() == columns["id"].tolist()
        assert table.column("name").to_pylist() == columns["name"].tolist()
        assert table.column("score").null_count == 2
        return
    read, fields_read, crs = read_features(out)
    assert crs == UTM and shapely.equals_exact(read, geoms).all()
    assert fields_read["name"].tolist() == columns["name"].tolist()
    np.testing.assert_array_equal(fields_read["score"], columns["score"])
    if suffix == ".geojson":  # byte for byte what GDAL writes in one go
        pyogrio.raw.write(
            tmp_path / "gdal.geojson", shapely.to_wkb(geoms), list(columns.values()), list(columns),
            layer="layer", driver="GeoJSON", geometry_type="Polygon", crs=CRS.from_string(UTM).to_wkt(),
        )  # fmt: skip
        assert out.read_bytes() == (tmp_path / "gdal.geojson").read_bytes()


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet"])
def test_vector_writer_error_midway_leaves_the_old_file_and_nothing_else(tmp_path, suffix):
    out = tmp_path / f"x{suffix}"
    out.write_bytes(b"old")
    geoms, columns = vector_batch_data()
    fields = {"id": np.int64, "name": object, "score": np.float64}
    with pytest.raises(RuntimeError, match="boom"), VectorWriter(out, fields, None) as writer:
        writer.write(geoms, columns)
        writer.write(geoms, columns)
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    with pytest.raises(RuntimeError, match="inside its with block"):
        writer.write(geoms, columns)
    with (
        VectorWriter(out, fields, None) as writer,
        pytest.raises(ValueError, match="not the writer's fields"),
    ):
        writer.write(geoms, {"id": columns["id"]})
    with (
        VectorWriter(out, fields, None) as writer,
        pytest.raises(ValueError, match="float64 values for a int64"),
    ):
        writer.write(geoms, {**columns, "id": columns["score"]})
    with pytest.raises(RuntimeError, match="entered only once"), writer:
        pass


def test_areas_and_mean_scores_on_a_real_grid(tmp_path, samples):
    with rasterio.open(samples / "RGB.byte.tif") as src:
        band, crs, transform = src.read(1), src.crs, src.transform
    labels = np.digitize(band, [1, 60, 120]).astype(np.uint8)  # 0 where nodata, then 1..3
    labels[band == 0] = 255
    labels[::50, ::50] = 254
    rng = np.random.default_rng(1)
    scores = rng.random((4, *labels.shape)).astype(np.float32)
    lpath = write_labels(tmp_path / "scene_labels.tif", labels, crs=crs, transform=transform)
    spath = write_scores(tmp_path / "scene_scores.tif", scores, crs=crs, transform=transform)
    summary = vectorize(lpath, tmp_path / "scene.gpkg", scores=spath, strip_rows=100)
    geoms, fields, out_crs = read_features(tmp_path / "scene.gpkg")
    assert out_crs == "EPSG:32618" and summary.crs == "EPSG:32618" and summary.area_unit == "m2"
    pixel_area = abs(transform.a * transform.e)
    for value in range(4):
        mine = fields["class_index"] == value
        assert fields["pixels"][mine].sum() == (labels == value).sum()
        assert fields["area_m2"][mine].sum() == pytest.approx((labels == value).sum() * pixel_area)
        assert shapely.area(geoms[mine]).sum() == pytest.approx((labels == value).sum() * pixel_area)
    # burn the features back: each class pixel in exactly one feature of its class
    burnt = rasterize(
        zip(geoms, range(1, len(geoms) + 1), strict=True),
        out_shape=labels.shape,
        transform=transform,
        dtype="int32",
    )
    assert ((burnt > 0) == (labels < 4)).all()
    assert (fields["class_index"][burnt[burnt > 0] - 1] == labels[burnt > 0]).all()
    # per-region mean of the region's class band, with numpy
    own = np.take_along_axis(scores, np.minimum(labels, 3)[None].astype(np.int64), axis=0)[0].astype(
        np.float64
    )
    sums = np.bincount(burnt.ravel(), weights=own.ravel(), minlength=len(geoms) + 1)[1:]
    counts = np.bincount(burnt.ravel(), minlength=len(geoms) + 1)[1:]
    assert (counts == fields["pixels"]).all()
    assert fields["mean_score"] == pytest.approx(sums / counts, rel=1e-9)


def test_feet_crs_converts_areas_to_square_metres(tmp_path):
    labels = np.zeros((4, 5), np.uint8)
    transform = from_origin(2000000.0, 700000.0, 10.0, 10.0)  # 10 US survey feet
    vectorize(
        write_labels(tmp_path / "l.tif", labels, crs="EPSG:2264", transform=transform), tmp_path / "o.gpkg"
    )
    _, fields, _ = read_features(tmp_path / "o.gpkg")
    foot = CRS.from_epsg(2264).linear_units_factor[1]
    assert foot == pytest.approx(1200 / 3937)
    assert fields["area_m2"].tolist() == pytest.approx([20 * (10 * foot) ** 2])


@pytest.mark.parametrize("crs", ["EPSG:4326", None])
def test_no_projected_crs_means_null_areas_and_pixel_units(tmp_path, crs):
    labels = np.zeros((6, 6), np.uint8)
    labels[0, 0] = 1  # 1 pixel
    labels[4:6, 4:6] = 2  # 4 pixels
    transform = from_origin(10.0, 50.0, 0.001, 0.001)
    path = write_labels(tmp_path / "l.tif", labels, crs=crs, transform=transform)
    summary = vectorize(path, tmp_path / "o.gpkg", min_area=4)  # pixels
    _, fields, out_crs = read_features(tmp_path / "o.gpkg")
    assert summary.area_unit == "pixels" and summary.crs == (crs and "EPSG:4326")
    assert out_crs == crs
    assert np.isnan(fields["area_m2"]).all()
    assert sorted(fields["pixels"].tolist()) == [4, 31]


def test_min_area_drops_exactly_the_small_regions(tmp_path):
    labels = np.full((20, 20), 254, np.uint8)
    sizes = {(0, 0): 1, (0, 5): 2, (5, 0): 3, (10, 10): 4, (15, 0): 9}
    for (r, c), n in sizes.items():
        labels.flat[[(r + i // 3) * 20 + c + i % 3 for i in range(n)]] = 1
    path = write_labels(tmp_path / "l.tif", labels)
    vectorize(path, tmp_path / "all.gpkg")
    vectorize(path, tmp_path / "big.gpkg", min_area=3 * PIXEL * PIXEL)
    assert sorted(read_features(tmp_path / "all.gpkg")[1]["pixels"].tolist()) == [1, 2, 3, 4, 9]
    assert sorted(read_features(tmp_path / "big.gpkg")[1]["pixels"].tolist()) == [3, 4, 9]


def test_coverage_simplify_keeps_neighbours_without_gaps_or_overlaps(tmp_path):
    labels = ndimage.median_filter(np.random.default_rng(3).integers(0, 3, (60, 60)), 5).astype(np.uint8)
    path = write_labels(tmp_path / "l.tif", labels)
    vectorize(path, tmp_path / "exact.gpkg", strip_rows=16)
    vectorize(path, tmp_path / "simple.gpkg", simplify=2 * PIXEL, strip_rows=16)
    exact, _, _ = read_features(tmp_path / "exact.gpkg")
    simple, fields, _ = read_features(tmp_path / "simple.gpkg")
    assert len(simple) == len(exact) and shapely.is_valid(simple).all()
    assert shapely.get_num_coordinates(simple).sum() < 0.8 * shapely.get_num_coordinates(exact).sum()
    total = 60 * 60 * PIXEL**2
    assert shapely.area(exact).sum() == pytest.approx(total)
    assert shapely.area(simple).sum() == pytest.approx(total, rel=1e-3)  # no gaps, no overlaps
    tree = shapely.STRtree(simple)
    pairs = tree.query(simple, predicate="intersects")
    pairs = pairs[:, pairs[0] < pairs[1]]
    assert pairs.shape[1] > 0
    overlap = shapely.area(shapely.intersection(simple[pairs[0]], simple[pairs[1]]))
    assert overlap.max() < 1e-6 * PIXEL**2


def test_unclassified_and_nodata_make_no_features_but_a_valid_empty_layer(tmp_path):
    labels = np.full((5, 5), 254, np.uint8)
    labels[:, :2] = 255
    for suffix in (".gpkg", ".parquet"):
        summary = vectorize(write_labels(tmp_path / "l.tif", labels), tmp_path / f"o{suffix}")
        assert summary.features == 0
    info = pyogrio.read_info(tmp_path / "o.gpkg")
    assert info["features"] == 0 and list(info["fields"]) == list(FIELDS)
    assert info["geometry_type"] == "Polygon" and info["crs"] == "EPSG:32618"
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(tmp_path / "o.parquet").column_names == [*FIELDS, "geometry"]


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".parquet"])
def test_formats_round_trip_with_crs(tmp_path, suffix):
    labels = blobs(5, 12, 10)
    scores = np.random.default_rng(2).random((4, 12, 10))
    scores[:, labels == 255] = np.nan
    lpath = write_labels(tmp_path / "l.tif", labels)
    spath = write_scores(tmp_path / "s.tif", scores)
    summary = vectorize(lpath, tmp_path / f"o{suffix}", scores=spath)
    vectorize(lpath, tmp_path / "ref.gpkg", scores=spath)
    ref_geoms, ref_fields, _ = read_features(tmp_path / "ref.gpkg")
    if suffix == ".parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(tmp_path / "o.parquet")
        geo = json.loads(table.schema.metadata[b"geo"])
        column = geo["columns"]["geometry"]
        assert geo["primary_column"] == "geometry" and column["encoding"] == "WKB"
        assert CRS.from_user_input(json.dumps(column["crs"])) == CRS.from_string(UTM)
        assert column["geometry_types"] == ["Polygon"]
        geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
        fields = {name: table.column(name).to_numpy(zero_copy_only=False) for name in FIELDS}
        assert column["bbox"] == pytest.approx(list(shapely.total_bounds(geoms)))
    else:
        geoms, fields, crs = read_features(tmp_path / f"o{suffix}")
        assert crs == UTM
    assert len(geoms) == summary.features == len(ref_geoms)
    assert shapely.equals(geoms, ref_geoms).all()
    for name in FIELDS:
        assert list(fields[name]) == pytest.approx(list(ref_fields[name])) if name != "class_name" else True
    assert not np.isnan(fields["mean_score"].astype(float)).any()


def test_write_vector_is_general_and_atomic(tmp_path, monkeypatch):
    geoms = [
        shapely.box(0, 0, 1, 1),
        shapely.MultiPolygon([shapely.box(2, 2, 3, 3), shapely.box(4, 4, 5, 5)]),
    ]
    columns = {"id": [7, 8], "name": ["a", "é"], "score": np.array([0.5, np.nan])}
    write_vector(tmp_path / "x.gpkg", geoms, columns, CRS.from_epsg(3857), layer="objects")
    info = pyogrio.read_info(tmp_path / "x.gpkg", layer="objects")
    assert info["geometry_type"] == "MultiPolygon" and info["crs"] == "EPSG:3857" and info["features"] == 2
    _, fields, _ = read_features(tmp_path / "x.gpkg")
    assert fields["name"].tolist() == ["a", "é"] and np.isnan(fields["score"][1])

    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    before = (tmp_path / "x.gpkg").read_bytes()
    monkeypatch.setattr(pyogrio.raw, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_vector(tmp_path / "x.gpkg", geoms, columns, None)
    with pytest.raises(OSError, match="disk full"):
        write_vector(tmp_path / "new.gpkg", geoms, columns, None)
    assert (tmp_path / "x.gpkg").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gpkg"]


def test_write_vector_errors(tmp_path, monkeypatch):
    with pytest.raises(
        InputError, match=r"o\.shp: unknown vector format '\.shp'; use one of \.gpkg, \.geojson"
    ):
        write_vector(tmp_path / "o.shp", [], {}, None)
    with pytest.raises(ValueError, match="column 'a' has 1 values for 2 geometries"):
        write_vector(tmp_path / "o.gpkg", [shapely.box(0, 0, 1, 1)] * 2, {"a": [1]}, None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(InputError, match=r'needs pyarrow; pip install "ovearth\[parquet\]"'):
        write_vector(tmp_path / "o.parquet", [], {}, None)
    assert list(tmp_path.iterdir()) == []


def bad_case(tmp_path, case):
    """(labels path, kwargs, expected message) of a bad input."""
    good = write_labels(tmp_path / "good.tif", np.zeros((8, 8), np.uint8))
    if case == "missing":
        return tmp_path / "nope.tif", {}, r"nope\.tif: no such labels file\."
    if case == "corrupt":
        (tmp_path / "bad.tif").write_bytes(b"II*\x00 not really a tiff")
        return tmp_path / "bad.tif", {}, r"bad\.tif: not a readable labels raster"
    if case == "rgb":
        with rasterio.open(
            tmp_path / "rgb.tif", "w", driver="GTiff", width=4, height=4, count=3, dtype="uint8"
        ) as d:
            d.write(np.zeros((3, 4, 4), np.uint8))
        return (
            tmp_path / "rgb.tif",
            {},
            r"rgb\.tif: a labels raster must be single-band uint8, got 3 band\(s\) of uint8",
        )
    if case == "uint16":
        with rasterio.open(
            tmp_path / "u.tif", "w", driver="GTiff", width=4, height=4, count=1, dtype="uint16"
        ) as d:
            d.write(np.zeros((1, 4, 4), np.uint16))
        return tmp_path / "u.tif", {}, r"got 1 band\(s\) of uint16"
    if case == "no-table":
        return (
            write_labels(tmp_path / "plain.tif", np.zeros((4, 4)), tags=False),
            {},
            "carries no ovearth class table",
        )
    if case == "bad-value":  # found in the 4th strip, after features were written
        labels = np.zeros((30, 4), np.uint8)
        labels[::2] = 1
        labels[25, 1] = 9
        path = write_labels(tmp_path / "v.tif", labels)
        return (
            path,
            {"strip_rows": 8, "batch_size": 1},
            r"v\.tif: holds the value 9, which is no class of its table \(4 classes",
        )
    if case == "scores-size":
        return (
            good,
            {"scores": write_scores(tmp_path / "s.tif", np.zeros((4, 8, 9)))},
            "scores are 9 x 8 pixels",
        )
    if case == "scores-bands":
        s = write_scores(tmp_path / "s.tif", np.zeros((3, 8, 8)))
        return good, {"scores": s}, r"s\.tif: 3 score band\(s\) but the class table has 4 classes"
    if case == "scores-missing":
        return good, {"scores": tmp_path / "none.tif"}, r"none\.tif: no such scores file"
    if case == "batch-size":
        return good, {"batch_size": 0}, r"batch_size must be at least 1, got 0\."
    if case == "min-area":
        return good, {"min_area": -1.0}, r"min_area \(--min-area\) must be a finite number >= 0, got -1\.0"
    return good, {"simplify": float("nan")}, r"simplify \(--simplify\) must be a finite number >= 0, got nan"


BAD_CASES = [
    "missing", "corrupt", "rgb", "uint16", "no-table", "bad-value", "scores-size", "scores-bands",
    "scores-missing", "batch-size", "min-area", "simplify",
]  # fmt: skip


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs_raise_one_sentence_and_write_nothing(tmp_path, case):
    labels, kwargs, message = bad_case(tmp_path, case)
    before = set(tmp_path.iterdir())
    with pytest.raises(InputError, match=message) as error:
        vectorize(labels, tmp_path / "out.gpkg", **kwargs)
    assert "\n" not in str(error.value)
    assert set(tmp_path.iterdir()) == before  # no output, no temporary file


def test_cli_writes_beside_the_labels_with_the_scores_found_there(tmp_path, monkeypatch, capsys):
    labels = blobs(7, 16, 16)
    write_labels(tmp_path / "scene_labels.tif", labels)
    write_scores(tmp_path / "scene_scores.tif", np.full((4, 16, 16), 0.25))
    code, err = run_cli(monkeypatch, capsys, "vectorize", tmp_path / "scene_labels.tif", "--min-area", 1000)
    assert code == 0, err
    geoms, fields, crs = read_features(tmp_path / "scene.gpkg")
    assert err.strip() == f"wrote {len(geoms)} features to {tmp_path / 'scene.gpkg'}"
    assert len(geoms) > 0 and crs == UTM and (fields["pixels"] >= 2).all()
    assert fields["mean_score"] == pytest.approx(np.full(len(geoms), 0.25))

    code, err = run_cli(
        monkeypatch,
        capsys,
        "vectorize",
        tmp_path / "scene_labels.tif",
        "-o",
        tmp_path / "v.parquet",
        "--simplify",
        30,
    )
    assert code == 0 and (tmp_path / "v.parquet").is_file()


def test_cli_bad_file_exits_with_one_line_and_no_output(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_labels.tif").write_bytes(b"not a tiff")
    code, err = run_cli(monkeypatch, capsys, "vectorize", tmp_path / "broken_labels.tif")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "broken_labels.tif: not a readable labels raster" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_labels.tif"]
    code, err = run_cli(
        monkeypatch, capsys, "vectorize", tmp_path / "broken_labels.tif", "-o", tmp_path / "o.shp"
    )
    assert code == 1 and "unknown vector format '.shp'" in err


def test_vectorize_classes_names_a_raster_without_a_table(monkeypatch, capsys, tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[:, 4:] = 1
    path = write_labels(tmp_path / "plain_labels.tif", labels, tags=False)
    code, err = run_cli(monkeypatch, capsys, "vectorize", path)
    assert code == 1 and "vectorize --classes" in err, err
    assert not (tmp_path / "plain.gpkg").exists()
    code, err = run_cli(monkeypatch, capsys, "vectorize", path, "--classes", "water,lake;field")
    assert code == 0, err
    _, fields, _ = read_features(tmp_path / "plain.gpkg")
    assert sorted(fields["class_name"].tolist()) == ["field", "water"]
    # names given on the command line win over the raster's own table
    tagged = write_labels(tmp_path / "tagged_labels.tif", labels, k=2)
    code, err = run_cli(monkeypatch, capsys, "vectorize", tagged, "--classes", "a;b")
    assert code == 0, err
    _, fields, _ = read_features(tmp_path / "tagged.gpkg")
    assert sorted(fields["class_name"].tolist()) == ["a", "b"]
    # a control character is refused before anything is written
    code, err = run_cli(
        monkeypatch, capsys, "vectorize", path, "-o", tmp_path / "x.gpkg", "--classes", "a\x01;b"
    )
    assert code == 1 and "U+0001" in err and not (tmp_path / "x.gpkg").exists(), err
