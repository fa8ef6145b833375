"""One scene on two gloo processes (``torchrun``) writes the same bytes as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from ovearth.run.scene_split import row_bounds
from ovearth.segment.accumulate import window_rows
from ovearth.segment.windows import views_for
from tests.conftest import make_image

CLASSES = "water;land;cloud"


def write_scene(path: Path, georeferenced: bool) -> None:
    """1280 x 512 RGB with nodata (0 in every band) in both halves, a 256-window each."""
    rgb = make_image(7, 1280, 512)
    rgb[:300, :260] = rgb[768:1100, :260] = 0
    where = {}
    if georeferenced:
        where = dict(crs="EPSG:32633", transform=from_origin(500_000, 4_200_000, 0.5, 0.5))
    profile = dict(driver="GTiff", height=1280, width=512, count=3, dtype="uint8", nodata=0, **where)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.moveaxis(rgb, -1, 0))


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="torchrun with gloo")
@pytest.mark.parametrize("stride", [192, 256])  # overlapping windows; disjoint ones with the skip
def test_one_scene_on_two_processes_writes_the_bytes_of_one(tiny_dir, tmp_path, stride):
    scenes = tmp_path / "in"
    scenes.mkdir()
    write_scene(scenes / "geo.tif", georeferenced=True)
    write_scene(scenes / "plain.tif", georeferenced=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    options = ["--classes", CLASSES, "--model", str(tiny_dir), "--windowed", "--scores"]
    options += ["--slide-crop", "256", "--slide-stride", str(stride), "--vector", "geojson", "--objects"]
    options += ["--confidence-threshold", "0.05"]  # the random model keeps objects (across the cut)
    one = [sys.executable, "-m", "ovearth", "segment", str(scenes), *options, "-o", str(tmp_path / "one")]
    done = subprocess.run(one, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two += ["-m", "ovearth", "segment", str(scenes), *options, "-o", str(tmp_path / "two")]
    done = subprocess.run(two, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.name != "run.json")
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir() if p.name != "run.json")
    assert {"geo_labels.tif", "geo_scores.tif", "plain_labels.png", "plain_scores.tif"} <= set(names)
    assert {"geo_objects.geojson", "plain_objects.geojson"} <= set(names)  # objects merged across bands
    # objects on both sides of the cut: the lower band's come from process 1's part file
    cut = row_bounds(window_rows(views_for(1280, 512, 256, stride)), 1280, 2)[1]
    objects = json.loads((tmp_path / "two" / "geo_objects.geojson").read_text())["features"]
    tops = [feature["properties"]["y_max"] for feature in objects]
    cut_y = 4_200_000 - 0.5 * cut  # the cut's row in the CRS (origin 4,200,000, 0.5 m pixels)
    assert any(top > cut_y for top in tops) and any(top <= cut_y for top in tops), (cut, len(tops))
    assert not [p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".")], "parts left behind"
    for name in names:  # labels, scores, overlays, polygons, styles: byte for byte
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    runs = [json.loads((tmp_path / folder / "run.json").read_text()) for folder in ("one", "two")]
    fields = ("image", "key", "presence", "views", "skipped_views", "windowed")
    entries = [[{k: e[k] for k in fields} for e in run["images"]] for run in runs]
    assert entries[0] == entries[1] and len(entries[0]) == 2
    assert runs[1]["world_size"] == 2 and entries[0][0]["views"] >= 10
    assert [e["skipped_views"] for e in entries[0]] == ([0, 0] if stride == 192 else [2, 2])
    assert [e.get("processes") for e in runs[1]["images"]] == [2, 2]  # each scene shared, not dealt out
    assert [e.get("processes") for e in runs[0]["images"]] == [None, None]


def corrupt_last_block(path: Path) -> None:
    """Overwrite the bytes of the scene's last 256 x 256 block (only the lower band reads it)."""
    with rasterio.open(path) as dataset:
        x, y = (dataset.width - 1) // 256, (dataset.height - 1) // 256
        offset = int(dataset.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1))
        size = int(dataset.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1))
    with open(path, "r+b") as raw:
        raw.seek(offset)
        raw.write(b"\x07" * size)


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="torchrun with gloo")
def test_a_bad_block_in_one_band_stops_every_process_and_leaves_nothing(tiny_dir, tmp_path):
    scene = tmp_path / "scene.tif"
    rgb = make_image(3, 1280, 512)
    profile = dict(driver="GTiff", height=1280, width=512, count=3, dtype="uint8", tiled=True)
    profile.update(blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(scene, "w", **profile) as dataset:
        dataset.write(np.moveaxis(rgb, -1, 0))
    corrupt_last_block(scene)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "ovearth", "segment", str(scene), "--classes", CLASSES, "--model", str(tiny_dir)]
    command += ["--windowed", "--slide-crop", "256", "--slide-stride", "256", "-o", str(out)]
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert done.returncode != 0
    assert "scene.tif: the pixel data is corrupt" in done.stderr, done.stderr[-3000:]
    assert not out.exists() or not [p.name for p in out.iterdir() if p.name != "run.json"]
