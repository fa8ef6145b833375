"""Dataset readers on synthetic data in every built-in protocol's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from ovearth.data.datasets import SegmentationDataset, read_label, reduce_zero_label
from ovearth.data.protocols import list_protocols, load_protocol
from ovearth.errors import InputError
from tests.data.make_synthetic import corrupt, image_stems, main, make_dataset, write_label

NUM_IMAGES = 3


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """``get(name)``: the root of a synthetic dataset, generated once per protocol."""
    root = tmp_path_factory.mktemp("synthetic")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_dataset(name, root, num_images=NUM_IMAGES)
        return made[name]

    return get


def _raw(path: Path) -> np.ndarray:
    """The stored label values, read independently of the reader under test."""
    if path.suffix.lower() == ".tif":
        with rasterio.open(path) as src:
            return src.read(1)
    with Image.open(path) as picture:
        return np.array(picture)


def _mmseg_reduce(raw: np.ndarray) -> np.ndarray:
    """mmseg's rule written out by value: 0 -> 255, 255 -> 255, v -> v - 1."""
    values = raw.astype(np.int64)
    out = np.where(values == 0, 255, values - 1)
    out[values == 255] = 255
    return out


@pytest.mark.parametrize("name", list_protocols())
def test_protocol_layout(name, synthetic):
    protocol = load_protocol(name)
    layout, k = protocol.layout, len(protocol.vocabulary.classes)
    root = synthetic(name)
    ds = SegmentationDataset(protocol, root)

    assert len(ds) == NUM_IMAGES
    expected = image_stems(name, NUM_IMAGES)
    if layout.split:  # a split file's order is kept (the generator lists the images reversed)
        expected = expected[::-1]
    assert [s.name for s in ds] == expected
    for sample in ds:
        image_rel = sample.image_path.relative_to(root / layout.images).as_posix()
        label_rel = sample.label_path.relative_to(root / layout.labels).as_posix()
        assert image_rel.endswith(layout.image_suffix) and label_rel.endswith(layout.label_suffix)
        assert image_rel[: -len(layout.image_suffix)] == label_rel[: -len(layout.label_suffix)] == sample.name

        image = sample.load_image()
        label = sample.load_label()
        assert image.rgb.shape[:2] == label.shape and label.dtype == np.uint8
        assert image.valid.all()
        if layout.image_suffix == ".tif":
            assert image.crs is not None and image.transform is not None
        assert set(np.unique(label).tolist()) <= set(range(k)) | {255}

        raw = _raw(sample.label_path)
        assert raw.ndim == 2
        if protocol.reduce_zero_label:
            assert (raw == 0).any() and (raw == 255).any() and raw[raw != 255].max() == k
            np.testing.assert_array_equal(label, _mmseg_reduce(raw))
        else:
            np.testing.assert_array_equal(label, raw)
        np.testing.assert_array_equal(sample.load_raw_label(), raw)
    assert ds.problems() == []
    usable, skipped = ds.samples(skip_bad=False)
    assert [s.name for s in usable] == [s.name for s in ds] and skipped == []


def test_nested_images_are_found(synthetic):
    ds = SegmentationDataset(load_protocol("loveda"), synthetic("loveda"))
    nested = [s for s in ds if "/" in s.name]
    assert len(nested) == 1
    assert nested[0].label_path.parent.name == nested[0].image_path.parent.name == "part_b"


def test_palette_label_gives_indices(tmp_path):
    values = np.array([[0, 1, 2], [5, 255, 3]], np.uint8)
    path = tmp_path / "label.png"
    write_label(path, values, palette=True)
    with Image.open(path) as picture:
        assert picture.mode == "P"
    np.testing.assert_array_equal(read_label(path), values)


def test_reduce_zero_label_matches_mmseg():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = reduce_zero_label(values)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, _mmseg_reduce(values))
    assert out[0, 0] == 255 and out[0, 1] == 0 and out[15, 15] == 255 and out.ravel()[254] == 253


def test_missing_root_names_root_and_folder(tmp_path):
    protocol = load_protocol("loveda")
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError) as info:
        SegmentationDataset(protocol, missing)
    assert str(missing) in str(info.value) and protocol.layout.images in str(info.value)


def test_missing_images_folder_names_expected_folder(tmp_path):
    protocol = load_protocol("udd5")
    (tmp_path / "val" / "other").mkdir(parents=True)
    with pytest.raises(InputError) as info:
        SegmentationDataset(protocol, tmp_path)
    message = str(info.value)
    assert str(tmp_path / protocol.layout.images) in message and protocol.layout.labels in message


def test_empty_images_folder_names_suffix(tmp_path):
    protocol = load_protocol("vdd")
    (tmp_path / protocol.layout.images).mkdir(parents=True)
    (tmp_path / protocol.layout.labels).mkdir(parents=True)
    (tmp_path / protocol.layout.images / "notes.txt").write_text("x")
    with pytest.raises(InputError) as info:
        SegmentationDataset(protocol, tmp_path)
    assert "'.JPG'" in str(info.value) and "notes.txt" in str(info.value)


def test_suffix_is_case_sensitive(tmp_path):
    root = make_dataset("udd5", tmp_path, num_images=3)
    images = root / load_protocol("udd5").layout.images
    (images / "udd5_001.JPG").rename(images / "udd5_001.jpg")
    (images / ".hidden.JPG").write_bytes((images / "udd5_000.JPG").read_bytes())
    ds = SegmentationDataset(load_protocol("udd5"), root)
    assert [s.name for s in ds] == ["udd5_000", "udd5_002"]
    for path in images.glob("*.JPG"):
        path.rename(path.with_suffix(".jpg"))
    with pytest.raises(InputError, match=r"'\.JPG' .*3 file name\(s\) end with it in another letter case"):
        SegmentationDataset(load_protocol("udd5"), root)


def test_limit_keeps_first_samples(synthetic):
    protocol = load_protocol("isaid")
    full = SegmentationDataset(protocol, synthetic("isaid"))
    two = SegmentationDataset(protocol, synthetic("isaid"), limit=2)
    assert [s.name for s in two] == [s.name for s in full][:2]
    assert len(SegmentationDataset(protocol, synthetic("isaid"), limit=99)) == NUM_IMAGES
    with pytest.raises(InputError, match="limit"):
        SegmentationDataset(protocol, synthetic("isaid"), limit=0)


@pytest.mark.parametrize("name", ["loveda", "openearthmap", "vdd"])
def test_bad_pairs_are_reported_and_skipped(name, tmp_path):
    protocol = load_protocol(name)
    k = len(protocol.vocabulary.classes)
    root = make_dataset(name, tmp_path, num_images=5)
    stems = image_stems(name, 5)
    kinds = ["missing_label", "size_mismatch", "out_of_range", "multi_channel"]
    broken = {stem: corrupt(root, name, stem, kind) for stem, kind in zip(stems, kinds, strict=False)}
    ds = SegmentationDataset(protocol, root)
    assert len(ds) == 5

    messages = [ds.check(i) for i in range(5)]
    for stem, message in zip(stems[:4], messages[:4], strict=True):
        assert message is not None and broken[stem].name in message
    assert "missing" in messages[0]
    assert "63 x 79" in messages[1] and "64 x 80" in messages[1]
    assert f"values {k}" in messages[2] and "ignore index 255" in messages[2]
    assert "channels" in messages[3] or "bands" in messages[3]
    assert messages[4] is None

    assert [n for n, _ in ds.problems()] == stems[:4]
    usable, skipped = ds.samples(skip_bad=True)
    assert [s.name for s in usable] == [stems[4]]
    assert skipped == list(zip(stems[:4], messages[:4], strict=True))
    with pytest.raises(InputError) as info:
        ds.samples(skip_bad=False)
    assert str(info.value) == messages[0]


def test_generator_is_deterministic(tmp_path):
    a = make_dataset("potsdam", tmp_path / "a", num_images=2, seed=3)
    b = make_dataset("potsdam", tmp_path / "b", num_images=2, seed=3)
    c = make_dataset("potsdam", tmp_path / "c", num_images=2, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 4
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_generator_command_line(tmp_path, capsys):
    main(["--out", str(tmp_path), "--datasets", "vdd,whu_sat2", "--num-images", "2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vdd", "whu_sat2"]
    assert len(SegmentationDataset(load_protocol("whu_sat2"), tmp_path / "whu_sat2")) == 2
    assert "vdd" in capsys.readouterr().out


def test_missing_split_file_is_named(synthetic, tmp_path):
    import shutil

    root = tmp_path / "wbs"
    shutil.copytree(synthetic("wbs_si"), root)
    split = root / load_protocol("wbs_si").layout.split
    split.unlink()
    with pytest.raises(InputError, match="split file not found") as info:
        SegmentationDataset("wbs_si", root)
    assert str(split) in str(info.value)
    split.write_text("wbs_si_000\nnot_there\n")
    with pytest.raises(InputError, match="not_there.jpg"):
        SegmentationDataset("wbs_si", root)
