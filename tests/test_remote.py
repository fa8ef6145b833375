"""Remote scenes: a COG over HTTP (ranges counted) and STAC items, equal to the same file read locally."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.shutil import copy as raster_copy

from tests.conftest import run_cli

CLASSES = "building,roof;road;tree"


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with HTTP range requests (as object stores do), counting the bytes sent."""

    served: dict[str, int] = {}

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            data = file.read()
        wanted = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            first = int(wanted.group(1))
            last = min(int(wanted.group(2)) if wanted.group(2) else size - 1, size - 1)
            data = data[first : last + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.command == "HEAD":
            return None
        name = Path(path).name
        RangeHandler.served[name] = RangeHandler.served.get(name, 0) + len(data)
        return io.BytesIO(data)


@pytest.fixture(scope="module")
def server(tmp_path_factory, samples):
    """A local HTTP server over a folder with a COG (with overviews) made from a sample raster."""
    root = tmp_path_factory.mktemp("served")
    raster_copy(samples / "RGB.byte.tif", root / "scene.tif", driver="COG", blocksize=256, compress="deflate")
    shutil.copy(samples / "RGB.byte.tif", root / "plain.tif")
    handler = functools.partial(RangeHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def segment(monkeypatch, capsys, tiny_dir, source, out, *extra):
    args = ["segment", source, "--classes", CLASSES, "--model", tiny_dir, "-o", out, *extra]
    return run_cli(monkeypatch, capsys, *args)


def labels_of(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


@pytest.mark.parametrize("how", [["--whole"], ["--windowed", "--slide-crop", "256", "--slide-stride", "256"]])
def test_a_remote_cog_gives_the_local_outputs(monkeypatch, capsys, tiny_dir, server, tmp_path, how):
    url, root = server
    name = f"scene{len(how)}.tif"  # a file of its own: GDAL's cache of an earlier test's reads is not reused
    shutil.copy(root / "scene.tif", root / name)
    code, err = segment(monkeypatch, capsys, tiny_dir, root / name, tmp_path / "local", *how)
    assert code == 0, err
    RangeHandler.served.clear()
    code, err = segment(monkeypatch, capsys, tiny_dir, f"{url}/{name}", tmp_path / "remote", *how)
    assert code == 0, err
    stem = Path(name).stem
    for output in (f"{stem}_labels.tif", f"{stem}_overlay.png"):
        assert (tmp_path / "remote" / output).read_bytes() == (tmp_path / "local" / output).read_bytes()
    run = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert run["images"][0]["image"] == f"{url}/{name}"  # named by its URL
    size = (root / name).stat().st_size
    # read by ranges, whole or by windows: each block once, the overviews (a quarter of a COG) never
    # (by windows this was 3.3x the file while rasterio took GDAL_CACHEMAX=128 as 128 bytes)
    assert 0 < RangeHandler.served[name] < 0.8 * size


def test_a_stac_item_names_the_asset_to_read(monkeypatch, capsys, tiny_dir, server, tmp_path):
    url, root = server
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "scene", "assets": {}}
    item["assets"]["visual"] = {"href": "scene.tif", "type": "image/tiff; application=geotiff"}
    item["assets"]["thumbnail"] = {"href": "thumb.png"}
    (root / "item.json").write_text(json.dumps(item))  # served: the asset is relative to the item's URL
    code, err = segment(monkeypatch, capsys, tiny_dir, f"{url}/item.json", tmp_path / "stac")
    assert code == 0, err
    code, err = segment(monkeypatch, capsys, tiny_dir, root / "scene.tif", tmp_path / "local")
    assert code == 0, err
    assert (
        labels_of(tmp_path / "stac" / "scene_labels.tif").tobytes()
        == labels_of(tmp_path / "local" / "scene_labels.tif").tobytes()
    )
    run = json.loads((tmp_path / "stac" / "run.json").read_text())
    assert run["images"][0]["image"] == f"{url}/item.json#visual"
    # a local item pointing at the remote file, and the asset chosen by name
    item["assets"] = {"data": {"href": f"{url}/scene.tif"}}
    local_item = tmp_path / "item.json"
    local_item.write_text(json.dumps(item))
    code, err = segment(monkeypatch, capsys, tiny_dir, local_item, tmp_path / "o2", "--stac-asset", "data")
    assert code == 0, err
    assert (tmp_path / "o2" / "scene_labels.tif").exists()


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("{url}/missing.tif", "the server answered HTTP 404"),
        ("http://127.0.0.1:1/scene.tif", "cannot be reached"),
        ("https://", "not a URL ovearth can read"),
        ("{url}/item.json", "has no asset 'visual'; it has: data"),
        ("{url}/nothing.json", "the server answered HTTP 404"),
    ],
)
def test_bad_urls_and_assets_are_one_sentence_and_exit_code_2(
    monkeypatch, capsys, tiny_dir, server, tmp_path, source, said
):
    url, root = server
    (root / "item.json").write_text(json.dumps({"assets": {"data": {"href": "scene.tif"}}}))
    code, err = segment(monkeypatch, capsys, tiny_dir, source.format(url=url), tmp_path / "out")
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_remote_file_that_is_not_a_raster_is_a_bad_input(monkeypatch, capsys, tiny_dir, server, tmp_path):
    url, root = server
    (root / "fake.tif").write_bytes(b"not a tiff at all" * 100)
    code, err = segment(monkeypatch, capsys, tiny_dir, f"{url}/fake.tif", tmp_path / "out")
    assert code == 1 and "fake.tif: not a readable raster" in err
