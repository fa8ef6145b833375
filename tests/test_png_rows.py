"""Palette PNGs by strips equal Pillow's; a TIFF without a CRS gets one labels PNG, whole or by windows."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image

from ovearth import Segmentor
from ovearth.data.describe import palette_png, png_alpha
from ovearth.data.legend import ClassTable
from ovearth.data.png_rows import write_palette_png
from ovearth.run.files import FileOptions, segment_file
from ovearth.viz import palette

from .conftest import make_image

TABLE = ClassTable.build(["water", "land", "cloud"], palette(3), True)


def decoded(path) -> tuple[np.ndarray, list[int], bytes]:
    with Image.open(path) as picture:
        assert picture.mode == "P"
        return np.asarray(picture), picture.getpalette(), picture.info["transparency"]


@pytest.mark.parametrize("strip", [1, 7, 64])
def test_strips_give_the_picture_pillow_writes(tmp_path, strip, monkeypatch):
    import ovearth.data.png_rows as png_rows

    monkeypatch.setattr(png_rows, "CHUNK_BYTES", 100)  # many IDAT chunks
    labels = np.random.default_rng(strip).choice([0, 1, 2, 254, 255], size=(50, 37)).astype(np.uint8)
    strips = [labels[y : y + strip] for y in range(0, 50, strip)]
    write_palette_png(tmp_path / "rows.png", 50, 37, strips, TABLE)
    palette_png(labels, TABLE).save(tmp_path / "pillow.png", transparency=png_alpha(TABLE))
    ours, reference = decoded(tmp_path / "rows.png"), decoded(tmp_path / "pillow.png")
    np.testing.assert_array_equal(ours[0], labels)
    assert ours[1] == reference[1] and ours[2] == reference[2]  # same palette, nodata transparent


def test_strips_that_do_not_fill_the_picture_leave_no_file(tmp_path):
    labels = np.zeros((10, 8), np.uint8)
    with pytest.raises(ValueError, match="9 rows for a height of 10"):
        write_palette_png(tmp_path / "a.png", 10, 8, [labels[:9]], TABLE)
    with pytest.raises(ValueError, match="width of 9"):
        write_palette_png(tmp_path / "a.png", 10, 9, [labels], TABLE)
    assert list(tmp_path.iterdir()) == []


def test_a_tiff_without_georeferencing_gets_one_labels_png_whole_or_by_windows(tiny, tmp_path):
    """One rule (issue 23): no CRS -> a palette PNG, whichever way the file is read; same pixels."""
    path = tmp_path / "plain.tif"
    data = make_image(9, 300, 260).transpose(2, 0, 1)
    with rasterio.open(path, "w", driver="GTiff", width=260, height=300, count=3, dtype="uint8") as out:
        out.write(data)
    seg = Segmentor(tiny, "water;land;cloud", slide_crop=128, slide_stride=96, prob_thd=0.3)
    options = FileOptions(vector="geojson")
    _, whole = segment_file(seg, path, tmp_path / "whole", options)
    _, windows = segment_file(seg, path, tmp_path / "windows", FileOptions(vector="geojson", windowed=True))
    assert whole["labels"].name == windows["labels"].name == "plain_labels.png"
    labels, colours, alpha = decoded(windows["labels"])
    assert (labels, colours, alpha)[1:] == decoded(whole["labels"])[1:]
    np.testing.assert_array_equal(labels, decoded(whole["labels"])[0])
    assert len(np.unique(labels)) > 1  # the comparison means something
    assert whole["polygons"].read_text() == windows["polygons"].read_text()  # read from the same pixels
    names = sorted(p.name for p in (tmp_path / "windows").iterdir())
    assert names == ["plain_labels.geojson", "plain_labels.png", "plain_overlay.png"]  # no temporary left
