"""Scenes read and written by windows equal the whole-image path, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from ovearth import Segmentor
from ovearth.data import raster
from ovearth.data import scene as scene_io
from ovearth.data.raster import read_image
from ovearth.data.scene import SceneReader
from ovearth.errors import InputError
from ovearth.run.files import FileOptions, segment_file
from ovearth.run.scene import window_rows
from ovearth.segment.windows import views_for

from .conftest import make_image, run_cli

CLASSES = "building,roof;road;tree"


def write_scene(path: Path, height: int, width: int, dtype: str = "uint16", hole: bool = True) -> Path:
    """A 3-band georeferenced scene; a nodata rectangle at the top left when ``hole``."""
    rgb = make_image(5, height, width).transpose(2, 0, 1).astype(np.float64)
    data = (rgb * 37 + 200).astype(dtype)  # 16-bit-like values that need a stretch
    nodata = 0
    if hole:
        data[:, : height // 3, : width // 4] = nodata
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=3,
        dtype=dtype,
        nodata=nodata,
        crs=CRS.from_epsg(32633),
        transform=Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0),
    )
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    return path


def read_outputs(paths: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    with rasterio.open(paths["labels"]) as labels, rasterio.open(paths["scores"]) as probs:
        where = {"crs": labels.crs, "transform": labels.transform}
        return labels.read(1), probs.read(), labels.profile | where


@pytest.mark.parametrize(
    ("crop", "stride", "skip"),
    [(256, 192, False), (100, 100, True)],  # overlapping windows; disjoint ones with the provable skip
)
def test_windowed_scene_equals_whole_image(tiny, tmp_path, crop, stride, skip):
    path = write_scene(tmp_path / "scene.tif", 700, 600)
    seg = Segmentor(tiny, CLASSES, slide_crop=crop, slide_stride=stride, prob_thd=0.3, skip_absent=skip)
    whole, whole_paths = segment_file(seg, path, tmp_path / "whole", FileOptions(scores=True, windowed=False))
    calls = []
    result, paths = segment_file(
        seg,
        path,
        tmp_path / "windows",
        FileOptions(scores=True, windowed=True),
        on_view=lambda d, t: calls.append((d, t)),
    )
    labels_w, probs_w, profile_w = read_outputs(whole_paths)
    labels_s, probs_s, profile_s = read_outputs(paths)
    np.testing.assert_array_equal(labels_s, labels_w)
    np.testing.assert_array_equal(probs_s, probs_w)  # NaN on nodata in both
    assert (labels_s == 255).sum() == (700 // 3) * (600 // 4)
    assert profile_s["crs"] == profile_w["crs"] and profile_s["transform"] == profile_w["transform"]
    assert profile_s["tiled"] and profile_s["blockxsize"] == 512 and profile_s["compress"] == "deflate"
    assert calls[-1] == (result.views, result.views) == (len(calls), len(calls))
    # disjoint windows wholly inside the 233 x 150 nodata rectangle are not run: rows 0-1, column 0
    assert result.skipped_views == (2 if crop == stride else 0)
    assert sorted(p.name for p in (tmp_path / "windows").iterdir()) == [
        "scene_labels.qml",
        "scene_labels.tif",
        "scene_labels.tif.aux.xml",
        "scene_overlay.png",
        "scene_scores.tif",
    ]
    if not result.skipped_views:  # the same views, so the same presence
        np.testing.assert_array_equal(result.presence.numpy(), whole.presence.numpy())


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_streamed_stretch_equals_whole_image_stretch(tmp_path, monkeypatch, dtype):
    """Two passes by strips sample exactly the values the whole-image reader samples."""
    path = write_scene(tmp_path / "s.tif", 333, 250, dtype=dtype)
    if dtype == "float32":  # NaNs are invalid too
        with rasterio.open(path, "r+") as ds:
            band = ds.read(2)
            band[200:210, 10:50] = np.nan
            ds.write(band, 2)
    monkeypatch.setattr(raster, "STRETCH_SAMPLE", 997)  # a step > 1 that does not divide the strips
    monkeypatch.setattr(scene_io, "STATS_ROWS", 37)
    whole = read_image(path)
    with SceneReader(path) as reader:
        rgb, valid = reader.read(0, 333, 0, 250)
        part, _ = reader.read(100, 180, 30, 230)
    np.testing.assert_array_equal(valid, whole.valid)
    np.testing.assert_array_equal(rgb, whole.rgb)
    np.testing.assert_array_equal(part, whole.rgb[100:180, 30:230])


def test_window_rows_keep_the_order():
    windows = views_for(700, 600, 256, 192)
    rows = window_rows(windows)
    assert [w for row in rows for w in row] == windows
    assert [row[0].y1 for row in rows] == [0, 192, 384, 444]
    assert all(len({w.y1 for w in row}) == 1 for row in rows)


def test_windowed_needs_sliding_windows_and_no_zoom(tiny, tmp_path):
    path = write_scene(tmp_path / "scene.tif", 300, 300)
    with pytest.raises(InputError, match="needs sliding windows"):
        segment_file(Segmentor(tiny, CLASSES), path, tmp_path / "o", FileOptions(windowed=True))
    seg = Segmentor(tiny, CLASSES, slide_crop=100, slide_stride=100, zoom="k=1,scale=2")
    with pytest.raises(InputError, match="zoom"):
        segment_file(seg, path, tmp_path / "o", FileOptions(windowed=True))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_failure_mid_scene_leaves_no_output(tiny, tmp_path):
    path = write_scene(tmp_path / "scene.tif", 600, 300)
    seg = Segmentor(tiny, CLASSES, slide_crop=150, slide_stride=150)

    def crash(done: int, total: int) -> None:
        if done == total - 1:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        segment_file(seg, path, tmp_path / "o", FileOptions(scores=True, windowed=True), on_view=crash)
    assert list((tmp_path / "o").iterdir()) == []


def test_cli_windowed_png_is_refused(monkeypatch, capsys, tiny_dir, tmp_path):
    from PIL import Image

    Image.fromarray(make_image(1, 64, 64)).save(tmp_path / "a.png")
    code, err = run_cli(
        monkeypatch, capsys, "segment", tmp_path / "a.png", "--classes", CLASSES, "--model", tiny_dir,
        "--windowed", "-o", tmp_path / "out",
    )  # fmt: skip
    assert code == 1
    assert "a.png: --windowed reads GeoTIFFs" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_windowed_scene(monkeypatch, capsys, tiny_dir, tmp_path):
    import json

    path = write_scene(tmp_path / "scene.tif", 300, 260)
    code, _ = run_cli(
        monkeypatch, capsys, "segment", path, "--classes", CLASSES, "--model", tiny_dir,
        "--slide-crop", "128", "--slide-stride", "128", "--windowed", "-o", tmp_path / "out",
    )  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["images"][0]["windowed"] is True
    assert record["images"][0]["views"] == 3 * 3
    with rasterio.open(tmp_path / "out" / "scene_labels.tif") as out:
        assert out.shape == (300, 260) and out.crs == CRS.from_epsg(32633)


@pytest.mark.parametrize(("crop", "stride", "side"), [(256, 192, 250), (100, 100, 1000)])
def test_windowed_run_reads_each_window_once_and_its_overlay_is_the_scenes(
    tiny, tmp_path, monkeypatch, crop, stride, side
):
    """The rows are finished from the windows' reads (no second read); valid pixels and the
    quick-look equal those of the whole scene read at once (a step of 3 and of 1)."""
    from ovearth.run import scene as scene_run

    path = write_scene(tmp_path / "scene.tif", 700, 600)
    monkeypatch.setattr(scene_run, "MAX_OVERLAY_SIDE", side)
    pictures = []
    draw = scene_run.overlay

    def kept(rgb, labels, names):
        pictures.append((rgb, labels))
        return draw(rgb, labels, names)

    monkeypatch.setattr(scene_run, "overlay", kept)
    reads = []
    read = SceneReader.read

    def counted(self, y1, y2, x1, x2):
        reads.append((y1, y2, x1, x2))
        return read(self, y1, y2, x1, x2)

    monkeypatch.setattr(SceneReader, "read", counted)
    seg = Segmentor(tiny, CLASSES, slide_crop=crop, slide_stride=stride, prob_thd=0.3)
    paths = {"labels": tmp_path / "l.tif", "overlay": tmp_path / "o.png"}
    result = scene_run.segment_scene(seg, path, paths)
    assert len(reads) == result.views  # one read per window, none to finish the rows
    whole = read_image(path)
    with rasterio.open(paths["labels"]) as src:
        labels = src.read(1)
    np.testing.assert_array_equal(labels == 255, ~whole.valid)
    step = -(-700 // side)
    ((rgb, small),) = pictures
    np.testing.assert_array_equal(rgb, whole.rgb[::step, ::step])
    np.testing.assert_array_equal(small, labels[::step, ::step])
