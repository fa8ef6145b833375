"""Reading rasters as RGB, scaling rules, and writing labels with georeferencing kept."""

import numpy as np
import pytest
import rasterio

from ovearth.data.atomic import atomic_path
from ovearth.data.legend import ClassTable
from ovearth.data.raster import check_image, parse_bands, read_image, to_uint8
from ovearth.data.raster_write import write_labels, write_scores
from ovearth.errors import InputError
from ovearth.viz import palette


def test_rgb_geotiff_with_nodata(samples):
    image = read_image(samples / "RGB.byte.tif")
    with rasterio.open(samples / "RGB.byte.tif") as ds:
        assert image.rgb.shape == (ds.height, ds.width, 3)
        assert np.array_equal(image.rgb[..., 0], ds.read(1))
        assert np.array_equal(image.valid, ds.dataset_mask() > 0)
        assert image.crs == ds.crs and image.transform == ds.transform
    assert 0 < image.valid.mean() < 1 and image.bands == (1, 2, 3)


def test_bands_follow_colour_interpretation_then_request(samples):
    header = check_image(samples / "RGBA.uint16.tif")
    assert header.bands == (3, 2, 1) and header.is_raster  # stored blue, green, red, alpha
    assert (header.height, header.width) == (411, 634)
    assert check_image(samples / "RGBA.uint16.tif", (1, 2, 3)).bands == (1, 2, 3)
    image = read_image(samples / "RGBA.uint16.tif")
    assert image.rgb.dtype == np.uint8 and 0 < image.valid.mean() < 1  # alpha band masks


def test_stretch_rules_on_known_values():
    data = np.array([np.arange(101, dtype=np.uint16) * 100] * 3).reshape(3, 1, 101)
    valid = np.ones((1, 101), bool)
    # percentile: 2nd..98th percentile (200..9800) -> 0..255
    out = to_uint8(data, valid, "percentile")
    assert out[0, 0, 2] == 0 and out[0, 0, 98] == 255 and out[0, 0, 50] == 128
    assert to_uint8(data, valid, "0,5000")[0, 0, 20] == 102  # 2000 of 0..5000
    assert to_uint8(data, valid, "minmax")[0, 0, 100] == 255
    assert to_uint8(data, valid, "none")[0, 0, 2] == 200
    constant = np.full((3, 2, 2), 10000, np.uint16)
    assert to_uint8(constant, np.ones((2, 2), bool), "percentile")[0, 0, 0] == round(10000 / 65535 * 255)
    with pytest.raises(InputError, match="--stretch"):
        to_uint8(data, valid, "gamma")


@pytest.mark.parametrize(
    ("name", "bands", "message"),
    [
        ("rgb1_fake_nir_epsg3857.tif", None, "has 1 band.*--bands"),
        ("RGB.byte.tif", (1, 2, 4), "has 3 band.*band 4"),
        ("absent.tif", None, "no such file"),
    ],
)
def test_bad_images_are_refused_by_name(samples, name, bands, message):
    with pytest.raises(InputError, match=message) as info:
        check_image(samples / name, bands)
    assert name in str(info.value)


def test_corrupt_pixels_and_unsupported_files(samples, tmp_path):
    with pytest.raises(InputError, match="corrupt.tif.*corrupt or truncated"):
        read_image(samples / "corrupt.tif")
    (tmp_path / "scene.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match="unsupported image type"):
        check_image(tmp_path / "scene.bmp")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="broken.png"):
        check_image(tmp_path / "broken.png")
    with pytest.raises(InputError, match="three band numbers"):
        parse_bands("3,2")


def test_labels_keep_crs_transform_and_nodata(samples, tmp_path):
    image = read_image(samples / "RGB.byte.tif")
    labels = np.where(image.valid, 1, 255).astype(np.uint8)
    write_labels(tmp_path / "l.tif", labels, image, ClassTable.build(["a", "b", "c"], palette(3), False))
    write_scores(tmp_path / "p.tif", np.zeros((3, *labels.shape), np.float32), ["a", "b", "c"], image)
    with rasterio.open(tmp_path / "l.tif") as out, rasterio.open(samples / "RGB.byte.tif") as src:
        assert out.crs == src.crs and out.transform == src.transform and out.nodata == 255
        assert np.array_equal(out.read(1), labels) and out.colormap(1)[1][:3] == tuple(palette(3)[1])
    with rasterio.open(tmp_path / "p.tif") as probs:
        assert probs.descriptions == ("a", "b", "c") and probs.dtypes[0] == "float32"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.tif") as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
