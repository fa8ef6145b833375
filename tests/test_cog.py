"""Outputs are Cloud-Optimized GeoTIFFs, checked from the bytes of the file; written in bounded memory."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import Affine

from ovearth.data import cog
from ovearth.data.legend import ClassTable
from ovearth.data.raster import RasterImage, read_image
from ovearth.data.raster_write import write_labels, write_scores
from ovearth.data.scene import GDAL_CACHE_MB, SceneWriter
from ovearth.viz import palette

TILE_OFFSETS = 324
#: TIFF field types: size in bytes and struct code (SHORT, LONG, LONG8)
FIELD_TYPES = {3: (2, "H"), 4: (4, "I"), 16: (8, "Q")}

TABLE = ClassTable.build(["building", "road", "tree"], palette(3), unclassified=True)
#: the values a labels raster (and so each of its overviews) may hold
LABEL_VALUES = {0, 1, 2, 254, 255}


def tiff_layout(path: Path) -> tuple[bool, list[int], list[int]]:
    """``(bigtiff, IFD offsets, tile data offsets)`` of a tiled TIFF, read from its bytes.

    Classic TIFF: magic 42, 4-byte offsets, 12-byte IFD entries; BigTIFF: magic 43,
    8-byte offsets, 20-byte entries. Every IFD of the chain is visited; tile offsets
    are tag 324, inline when they fit in the entry's value field.
    """
    data = path.read_bytes()
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    (magic,) = struct.unpack_from(order + "H", data, 2)
    assert magic in (42, 43), f"not a TIFF: magic {magic}"
    big = magic == 43
    count_code, entry_size, offset_code = ("Q", 20, "Q") if big else ("H", 12, "I")
    (ifd,) = struct.unpack_from(order + offset_code, data, 8 if big else 4)
    ifds, tiles = [], []
    while ifd:
        assert ifd not in ifds, "IFD loop"
        ifds.append(ifd)
        (entries,) = struct.unpack_from(order + count_code, data, ifd)
        start = ifd + struct.calcsize(order + count_code)
        for i in range(entries):
            entry = start + i * entry_size
            tag, kind = struct.unpack_from(order + "HH", data, entry)
            (count,) = struct.unpack_from(order + offset_code, data, entry + 4)
            if tag != TILE_OFFSETS:
                continue
            size, code = FIELD_TYPES[kind]
            field = entry + (12 if big else 8)
            if size * count > struct.calcsize(offset_code):
                (field,) = struct.unpack_from(order + offset_code, data, field)
            tiles.extend(struct.unpack_from(f"{order}{count}{code}", data, field))
        (ifd,) = struct.unpack_from(order + offset_code, data, start + entries * entry_size)
    return big, ifds, [t for t in tiles if t]  # 0: a sparse (unwritten) tile


def assert_cog(path: Path) -> None:
    """The file is a COG: every IFD before every tile, overviews down to one tile, GDAL agrees."""
    _, ifds, tiles = tiff_layout(path)
    assert tiles, "no tiles: not a tiled TIFF"
    assert max(ifds) < min(tiles), "an IFD comes after tile data"
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.block_shapes[0] == (cog.COG_BLOCK, cog.COG_BLOCK)
        factors = cog.overview_factors(src.height, src.width)
        assert src.overviews(1) == factors
        assert len(ifds) == 1 + len(factors)
        if max(src.height, src.width) > cog.COG_BLOCK:
            assert factors and max(src.height, src.width) / factors[-1] <= cog.COG_BLOCK


def blocky_labels(height: int, width: int) -> np.ndarray:
    """Labels 0 and 2 in a fine checkerboard (an average would make 1s), 254 stripes, a 255 corner."""
    yy, xx = np.mgrid[:height, :width]
    labels = np.where((yy // 3 + xx // 3) % 2 == 0, 0, 2).astype(np.uint8)
    labels[::17] = 254
    labels[: height // 5, : width // 6] = 255
    return labels


def smooth_scores(labels: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` float32 scores in [0, 1], NaN where the labels are nodata."""
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]].astype(np.float32)
    scores = np.stack([np.sin(xx / 97) ** 2, np.cos(yy / 61) ** 2, (xx + yy) / (xx + yy).max()]).astype(
        np.float32
    )
    scores[:, labels == 255] = np.nan
    return scores


def fake_reader(height: int, width: int) -> SimpleNamespace:
    """What SceneWriter needs of a SceneReader: size and georeferencing."""
    return SimpleNamespace(
        height=height,
        width=width,
        crs=CRS.from_epsg(32633),
        transform=Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0),
    )


def write_scene(
    folder: Path, labels: np.ndarray, scores: np.ndarray, rows: int = 64, cog_layout: bool = True
):
    """Write labels and scores through SceneWriter, ``rows`` rows at a time; return the two paths."""
    paths = folder / "s_labels.tif", folder / "s_scores.tif"
    reader = fake_reader(*labels.shape)
    with SceneWriter(paths[0], reader, TABLE, paths[1], cog=cog_layout) as writer:
        for y in range(0, labels.shape[0], rows):
            writer.write_rows(y, labels[y : y + rows], scores[:, y : y + rows])
    return paths


def whole_image(labels: np.ndarray) -> RasterImage:
    reader = fake_reader(*labels.shape)
    return RasterImage(
        Path("s.tif"), np.zeros((*labels.shape, 3), np.uint8), labels != 255, reader.crs, reader.transform
    )


def test_overview_factors_reach_one_tile():
    assert cog.overview_factors(1500, 1300) == [2, 4]
    assert cog.overview_factors(512, 512) == [] and cog.overview_factors(300, 20) == []
    assert cog.overview_factors(513, 10) == [2]
    assert cog.overview_factors(10_000, 10_000) == [2, 4, 8, 16, 32]  # 10000 / 32 = 313 pixels


def test_whole_image_outputs_are_cogs(samples, tmp_path):
    image = read_image(samples / "RGB.byte.tif")  # 791 x 718: one overview
    labels = np.where(image.valid, blocky_labels(*image.valid.shape), 255).astype(np.uint8)
    scores = smooth_scores(labels)
    write_labels(tmp_path / "l.tif", labels, image, TABLE)
    write_scores(tmp_path / "s.tif", scores, list(TABLE.names), image)
    for name in ("l.tif", "s.tif"):
        assert_cog(tmp_path / name)
    with rasterio.open(tmp_path / "l.tif") as out, rasterio.open(samples / "RGB.byte.tif") as src:
        assert out.crs == src.crs and out.transform == src.transform
        np.testing.assert_array_equal(out.read(1), labels)
        assert out.overviews(1) == [2] and out.compression.name == "deflate"
    with rasterio.open(tmp_path / "s.tif") as out:
        np.testing.assert_array_equal(out.read(), scores)  # NaN where the labels are nodata
        assert out.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"


def test_scene_writer_writes_cogs_equal_to_the_whole_image_writer(tmp_path):
    labels = blocky_labels(1500, 1300)
    scores = smooth_scores(labels)
    labels_path, scores_path = write_scene(tmp_path, labels, scores, rows=100)  # rows across tile edges
    for path in (labels_path, scores_path):
        assert_cog(path)
    image = whole_image(labels)
    write_labels(tmp_path / "w_labels.tif", labels, image, TABLE)
    write_scores(tmp_path / "w_scores.tif", scores, list(TABLE.names), image)
    with rasterio.open(labels_path) as scene, rasterio.open(tmp_path / "w_labels.tif") as whole:
        assert scene.overviews(1) == [2, 4]
        np.testing.assert_array_equal(scene.read(1), labels)
        for level in range(len(scene.overviews(1)) + 1):  # the same overviews too
            out_shape = (1, -(-1500 // 2**level), -(-1300 // 2**level))
            np.testing.assert_array_equal(scene.read(out_shape=out_shape), whole.read(out_shape=out_shape))
    with rasterio.open(scores_path) as scene, rasterio.open(tmp_path / "w_scores.tif") as whole:
        np.testing.assert_array_equal(scene.read(), scores)
        np.testing.assert_array_equal(scene.read(), whole.read())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "s_labels.qml",
        "s_labels.tif",
        "s_labels.tif.aux.xml",
        "s_scores.tif",
        "w_labels.qml",
        "w_labels.tif",
        "w_labels.tif.aux.xml",
        "w_scores.tif",
    ]  # no scratch or temporary file left


def test_label_overviews_hold_only_label_values(tmp_path):
    labels = blocky_labels(1500, 1300)
    labels_path, scores_path = write_scene(tmp_path, labels, smooth_scores(labels))
    with rasterio.open(labels_path) as src:
        for factor in src.overviews(1):
            shape = (1, -(-1500 // factor), -(-1300 // factor))
            overview = src.read(out_shape=shape)
            assert set(np.unique(overview)) <= LABEL_VALUES - {1}  # mode: no 1 between the 0s and 2s
            assert {0, 2} <= set(np.unique(overview))
    with rasterio.open(scores_path) as src:  # average, nodata excluded: in [0, 1], NaN only under nodata
        overview = src.read(1, out_shape=(750, 650))
        assert np.nanmin(overview) >= 0 and np.nanmax(overview) <= 1
        assert np.isnan(overview[:150, :108]).all()  # the 300 x 216 nodata corner, halved
        assert not np.isnan(overview[150:]).any() and not np.isnan(overview[:, 108:]).any()


def test_plain_layout_has_the_same_pixels(tmp_path):
    labels = blocky_labels(1500, 1300)
    scores = smooth_scores(labels)
    cog_paths = write_scene(tmp_path / "cog", labels, scores)
    plain_paths = write_scene(tmp_path / "plain", labels, scores, cog_layout=False)
    image = whole_image(labels)
    write_labels(tmp_path / "whole" / "l.tif", labels, image, TABLE, cog=False)
    write_scores(tmp_path / "whole" / "s.tif", scores, list(TABLE.names), image, cog=False)
    plain_paths += (tmp_path / "whole" / "l.tif", tmp_path / "whole" / "s.tif")
    for path in plain_paths:
        with rasterio.open(path) as src:
            assert "LAYOUT" not in src.tags(ns="IMAGE_STRUCTURE") and src.overviews(1) == []
            assert src.block_shapes[0] == (cog.GEOTIFF_BLOCK, cog.GEOTIFF_BLOCK)
            expected = labels[None] if src.count == 1 else scores
            np.testing.assert_array_equal(src.read(), expected)
    for path in cog_paths:
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(src.read(), labels[None] if src.count == 1 else scores)


def test_bigtiff_cog_layout_is_checked_too(tmp_path, monkeypatch):
    options = cog.cog_options
    monkeypatch.setattr(cog, "cog_options", lambda *args: {**options(*args), "BIGTIFF": "YES"})
    labels = blocky_labels(1500, 1300)
    labels_path, scores_path = write_scene(tmp_path, labels, smooth_scores(labels))
    for path in (labels_path, scores_path):
        assert tiff_layout(path)[0]  # BigTIFF header
        assert_cog(path)


def test_the_layout_check_refuses_a_plain_geotiff(tmp_path):
    labels = blocky_labels(1500, 1300)
    labels_path, _ = write_scene(tmp_path, labels, smooth_scores(labels), cog_layout=False)
    with rasterio.open(labels_path, "r+") as src:  # overviews appended after the data
        src.build_overviews([2, 4])
    _, ifds, tiles = tiff_layout(labels_path)
    assert len(ifds) == 3 and max(ifds) > min(tiles)
    with pytest.raises(AssertionError):
        assert_cog(labels_path)


def test_an_error_inside_the_scene_writer_leaves_nothing(tmp_path):
    labels = blocky_labels(1500, 1300)
    scores = smooth_scores(labels)
    with pytest.raises(RuntimeError, match="power cut"):
        with SceneWriter(
            tmp_path / "s_labels.tif", fake_reader(1500, 1300), TABLE, tmp_path / "s.tif"
        ) as writer:
            writer.write_rows(0, labels[:512], scores[:, :512])
            # what a killed run would leave: hidden temporary files the next run removes
            assert (
                {p.name for p in tmp_path.iterdir()} == {p.name for p in tmp_path.glob(".*.part*")} != set()
            )
            raise RuntimeError("power cut")
    assert list(tmp_path.iterdir()) == []


def test_an_error_while_finishing_leaves_nothing_and_runs_in_the_bounded_cache(tmp_path, monkeypatch):
    copy, caches = rasterio.shutil.copy, []

    def copy_then_fail(source, target, **options):
        caches.append(rasterio.env.getenv().get("GDAL_CACHEMAX"))
        if options["PREDICTOR"] == "NO":  # the labels, finished after the scores
            raise rasterio.errors.RasterioIOError("disk full")
        return copy(source, target, **options)

    monkeypatch.setattr(rasterio.shutil, "copy", copy_then_fail)
    labels = blocky_labels(1500, 1300)
    with pytest.raises(rasterio.errors.RasterioIOError, match="disk full"):
        write_scene(tmp_path, labels, smooth_scores(labels))
    assert caches == [GDAL_CACHE_MB * 2**20] * 2  # bytes: rasterio passes an integer on as bytes
    assert list(tmp_path.iterdir()) == []  # the finished scores are not renamed either
