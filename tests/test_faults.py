"""Fault injection through the CLI: every bad input gets one sentence, the right exit code, no output.

One test (or parametrized group) per category of the reliability review: stale results,
corrupt caches, unusable output folders, oversized rasters, option values out of range,
unusable weights, output folder = input folder, protocol YAML types, and the smaller ones
(hidden files, stale temporary files, third-party warnings, legend width).

A model path that does not exist is passed where a check must come before the model
loads: loading it would fail with exit code 2, so exit code 1 and our sentence show the
check ran first.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from ovearth.data.protocols import load_protocol
from ovearth.model.fingerprint import fingerprint_files
from ovearth.run.evaluate import read_entry
from ovearth.viz import overlay
from tests.conftest import make_image, run_cli
from tests.data.make_synthetic import make_dataset

NO_MODEL = "/nonexistent/sam3-weights"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset("loveda", tmp_path_factory.mktemp("faults-data"), num_images=3, size=(40, 48))


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "in" / "scene.png"
    path.parent.mkdir()
    Image.fromarray(make_image(1, 48, 40)).save(path)
    return path


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def evaluate_cli(monkeypatch, capsys, model, data_root, out, *extra):
    args = ("eval", "--dataset", "loveda", "--data-root", data_root, "--model", model, "-o", out)
    return run_cli(monkeypatch, capsys, *args, "--prob-thd", "0.1", "--confidence-threshold", "0.25", *extra)


# ---------------------------------------------------------------- 1. stale results


def test_checkpoints_differing_only_in_the_middle_get_different_fingerprints(tiny_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    assert len(data) > 3 << 20  # the first and last MiB stay as they were
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    weights.write_bytes(bytes(data))
    assert fingerprint_files([tiny_dir / "model.safetensors"]) != fingerprint_files([weights])


def test_eval_never_reports_another_models_numbers(monkeypatch, capsys, tiny_dir, data_root, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little") + 8  # safetensors: 8-byte length, JSON header, tensors
    middle = header + (len(data) - header) // 2
    data[middle : middle + 4096] = np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes()
    weights.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert evaluate_cli(monkeypatch, capsys, tiny_dir, data_root, out)[0] == 0
    first = json.loads((out / "metrics.json").read_text())
    code, err = evaluate_cli(monkeypatch, capsys, other, data_root, out)
    assert code == 0, err
    second = json.loads((out / "metrics.json").read_text())
    assert second["computed_images"] == 3 and second["run_key"] != first["run_key"]
    assert second["model"]["fingerprint"] != first["model"]["fingerprint"]


# ---------------------------------------------------------------- 2. corrupt cache entries


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "wrong shape", "pickle"])
def test_a_corrupt_cache_entry_is_discarded_and_recomputed(
    monkeypatch, capsys, tiny_dir, data_root, tmp_path, damage
):
    out = tmp_path / "out"
    assert evaluate_cli(monkeypatch, capsys, tiny_dir, data_root, out)[0] == 0
    first = json.loads((out / "metrics.json").read_text())
    entry = sorted(out.glob("cache/*/*.npz"))[0]
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:50])
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage == "garbage":
        entry.write_bytes(b"not an npz at all" * 10)
    elif damage == "wrong shape":
        np.savez(entry.open("wb"), matrix=np.zeros((2, 2), np.int64), sha256=np.array("0" * 64))
    else:
        entry.write_bytes(pickle.dumps({"matrix": 1}))
    code, err = evaluate_cli(monkeypatch, capsys, tiny_dir, data_root, out)
    assert code == 0, err
    assert "corrupt cache entry" in err and entry.name in err.replace("\n", "")
    again = json.loads((out / "metrics.json").read_text())
    assert again["computed_images"] == 1 and again["mIoU"] == first["mIoU"]
    assert read_entry(entry, (7, 8)) is not None  # rewritten, and it checks


def test_a_tampered_entry_fails_its_checksum(tmp_path, caplog):
    from ovearth.run.evaluate import write_entry

    entry = tmp_path / "x.npz"
    write_entry(entry, np.arange(12, dtype=np.int64).reshape(3, 4))
    assert read_entry(entry, (3, 4)).sum() == 66
    with np.load(entry) as data:
        check = data["sha256"]
    np.savez(entry.open("wb"), matrix=np.ones((3, 4), np.int64), sha256=check)
    assert read_entry(entry, (3, 4)) is None and "checksum does not match" in caplog.text
    assert not entry.exists()


# ---------------------------------------------------------------- 3. unusable -o


@pytest.mark.parametrize("kind", ["a file", "under a file", "read-only"])
def test_unusable_output_folder_is_refused_before_the_model_loads(monkeypatch, capsys, png, tmp_path, kind):
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    out = {"a file": blocker, "under a file": blocker / "out", "read-only": tmp_path / "ro" / "out"}[kind]
    if kind == "read-only":
        (tmp_path / "ro").mkdir()
        real = __import__("os").access
        monkeypatch.setattr(
            "os.access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode)
        )
    code, err = run_cli(
        monkeypatch, capsys, "segment", png, "--classes", "a;b", "--model", NO_MODEL, "-o", out
    )
    line = one_line(err)
    assert code == 1 and f"-o {out}" in line
    assert {
        "a file": "is a file, not a folder",
        "under a file": "is a file, so",
        "read-only": "cannot be written",
    }[kind] in line
    assert blocker.read_text() == "x" and not (tmp_path / "ro" / "out").exists()


# ---------------------------------------------------------------- 4. size guard


def test_a_huge_raster_is_refused_in_one_sentence(monkeypatch, capsys, tiny_dir, tmp_path):
    huge = tmp_path / "huge.tif"
    profile = dict(driver="GTiff", width=100_000, height=100_000, count=3, dtype="uint8", tiled=True)
    profile |= dict(compress="deflate", sparse_ok=True, crs="EPSG:32618", transform=from_origin(0, 0, 1, 1))
    with rasterio.open(huge, "w", **profile):
        pass  # header only: no block is written
    assert huge.stat().st_size < 10 << 20
    out = tmp_path / "out"
    code, err = run_cli(
        monkeypatch, capsys, "segment", huge, "--classes", "a;b", "--model", tiny_dir, "-o", out
    )
    line = one_line(err)
    assert code == 1 and "100000 x 100000 pixels need about" in line and "--slide-crop" in line
    assert files_under(out) == []


# ---------------------------------------------------------------- 5. option values


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--zoom", "k=nan", "k must be a whole number"),
        ("--zoom", "scale=1e9", "scale must be a finite number in 1..16"),
        ("--refine", "smooth:a=inf", "a must be a finite number"),
        ("--refine", "lowpass:r=1e30", "r must lie in [0, 1000]"),
        ("--refine", "laplacian:iters=2.5", "iters must be an integer"),
        ("--prob-thd", "nan", "prob_thd must be a number in [0, 1]"),
        ("--prob-thd", "1.5", "prob_thd must be a number in [0, 1]"),
        ("--confidence-threshold", "inf", "confidence_threshold must be a number in [0, 1]"),
        ("--bg-idx", "255", "bg_idx must be a class index in 0..253"),
        ("--bg-idx", "300", "bg_idx must be a class index in 0..253"),
        ("--bg-idx", "2", "bg_idx 2 is not a class index: with 2 classes use 0..1"),
        ("--stretch", "nan,3", "needs finite LOW < HIGH"),
        ("--stretch", "gamma", "is not percentile, minmax, none or LOW,HIGH"),
    ],
)
def test_option_values_out_of_range(monkeypatch, capsys, png, tmp_path, option, value, message):
    raster = tmp_path / "in" / "scene16.tif"
    profile = dict(driver="GTiff", width=40, height=30, count=3, dtype="uint16", crs="EPSG:32618")
    with rasterio.open(raster, "w", **profile, transform=from_origin(0, 0, 1, 1)) as dst:
        dst.write(np.full((3, 30, 40), 1000, np.uint16))
    target = raster if option == "--stretch" else png
    out = tmp_path / "out"
    args = ("segment", target, "--classes", "a;b", "--model", NO_MODEL, "-o", out, option, value)
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1 and message in one_line(err)
    assert files_under(out) == []


# ---------------------------------------------------------------- 6. unusable weights


def _break(kind: str, folder: Path) -> Path:
    if kind == "truncated safetensors":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "pickle renamed":
        (folder / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "config is a list":
        (folder / "config.json").write_text("[1, 2]")
    elif kind == "config is {}":
        (folder / "config.json").write_text("{}")
    elif kind == "missing tensor":
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        tensors.pop(sorted(tensors)[0])
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    elif kind == ".pt beside a broken config.json":
        (folder / "config.json").write_text("{not json")
        (folder / "sam3.pt").write_bytes(b"\x80\x04not a checkpoint")
        return folder / "sam3.pt"
    elif kind == "truncated .pt":
        (folder / "config.json").unlink()
        (folder / "sam3.pt").write_bytes(b"PK\x03\x04 truncated zip")
        return folder / "sam3.pt"
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated safetensors", "could not be loaded as a SAM 3 model"),
        ("pickle renamed", "could not be loaded as a SAM 3 model"),
        ("config is a list", "holds a JSON list, not a SAM 3 configuration"),
        ("config is {}", "is not a SAM 3 configuration (model_type None"),
        ("missing tensor", "does not hold every SAM 3 weight"),
        (".pt beside a broken config.json", "is not a readable JSON file"),
        ("truncated .pt", "cannot be read as a PyTorch checkpoint"),
    ],
)
def test_unusable_weights_exit_2_in_one_sentence(monkeypatch, capsys, tiny_dir, png, tmp_path, kind, message):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    model = _break(kind, folder)
    out = tmp_path / "out"
    code, err = run_cli(monkeypatch, capsys, "segment", png, "--classes", "a;b", "--model", model, "-o", out)
    assert code == 2 and message in one_line(err)
    assert files_under(out) == []


# ---------------------------------------------------------------- 7. -o = the input folder


def test_output_folder_equal_to_the_input_folder(monkeypatch, capsys, tiny_dir, png):
    folder = png.parent
    args = ("segment", folder, "--classes", "a;b", "--model", tiny_dir, "-o", folder)
    for _ in range(2):
        code, err = run_cli(monkeypatch, capsys, *args)
        assert code == 0, err
        images = json.loads((folder / "run.json").read_text())["images"]
        assert [Path(i["image"]).name for i in images] == ["scene.png"]  # never its own outputs
    assert sorted(p.name for p in folder.iterdir()) == [
        "run.json",
        "scene.png",
        "scene_labels.png",
        "scene_overlay.png",
    ]


# ---------------------------------------------------------------- 8. protocol YAML types


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "reduce_zero_label: true",
            'reduce_zero_label: "false"',
            "'labels.reduce_zero_label' must be true or false, got the text 'false'",
        ),
        ("prob_thd: 0.5", 'prob_thd: "0.3x"', "'segment.prob_thd' must be a number, got the text '0.3x'"),
        ("bg_idx: 0", "bg_idx: 1.5", "'segment.bg_idx' must be an integer, got 1.5 (float)"),
        ("ignore_index: 255", "ignore_index: [255]", "'labels.ignore_index' must be an integer"),
        ("images: img_dir/val", "images: 3", "'layout.images' must be text, got 3 (int)"),
        ("bg_idx: 0", "bg_idx: 9", "bg_idx 9 is not a class index: with 7 classes"),
        ("  - background", "  - 12", "each item of 'classes' must be text"),
    ],
)
def test_protocol_fields_are_type_checked_before_the_model_loads(
    monkeypatch, capsys, data_root, tmp_path, old, new, message
):
    text = Path(load_protocol("loveda").source).read_text()
    assert old in text
    bad = tmp_path / "mine.yaml"
    bad.write_text(text.replace(old, new, 1))
    out = tmp_path / "out"
    args = ("eval", "--dataset-config", bad, "--data-root", data_root, "--model", NO_MODEL, "-o", out)
    code, err = run_cli(monkeypatch, capsys, *args)
    line = one_line(err)
    assert code == 1 and "mine.yaml" in line and message in line
    assert not out.exists()  # no empty cache folder


# ---------------------------------------------------------------- 9. smaller ones


def test_hidden_files_are_skipped_and_stale_temporary_files_removed(
    monkeypatch, capsys, tiny_dir, png, tmp_path
):
    folder = png.parent
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "._scene.png").write_bytes(b"AppleDouble")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".scene_labels.abc123.part.png"
    stale.write_bytes(b"half a file")
    code, err = run_cli(
        monkeypatch, capsys, "segment", folder, "--classes", "a;b", "--model", tiny_dir, "-o", out
    )
    assert code == 0, err
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "scene_labels.png", "scene_overlay.png"]


def test_third_party_warnings_do_not_reach_the_user(monkeypatch, capsys, tiny_dir, tmp_path):
    image = tmp_path / "float.tif"  # no georeferencing (NotGeoreferencedWarning) and inf values (overflow)
    data = np.random.default_rng(0).random((3, 30, 40)).astype(np.float32)
    data[:, :3, :3] = np.inf
    data[:, 5, 5] = 3e38
    with rasterio.open(image, "w", driver="GTiff", width=40, height=30, count=3, dtype="float32") as dst:
        dst.write(data)
    out = tmp_path / "out"
    code, err = run_cli(
        monkeypatch, capsys, "segment", image, "--classes", "a;b", "--model", tiny_dir, "-o", out
    )
    assert code == 0, err
    # no warning of rasterio, GDAL or numpy (ours would start "warning:", Python's "...Warning:")
    assert "wrote 1 result(s)" in err and "arning:" not in err and "overflow" not in err
    assert (out / "float_labels.png").exists()


def test_legend_width_is_bounded_for_long_class_names():
    rgb, labels = make_image(2, 64, 64), np.zeros((64, 64), np.uint8)
    short = overlay(rgb, labels, ["water", "land"])
    long = overlay(rgb, labels, ["water " * 200, "land"])
    assert long.width - short.width < 300 and long.width < 64 + 400


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (RuntimeError("boom\ndeep inside"), "unexpected RuntimeError: boom (run again with -v"),
        (MemoryError(), "out of host memory"),
    ],
)
def test_an_unforeseen_error_is_one_line_with_exit_code_3(
    monkeypatch, capsys, tiny_dir, png, tmp_path, error, message
):
    from ovearth.segment.segmentor import Segmentor

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Segmentor, "predict", fail)
    args = ("segment", png, "--classes", "a;b", "--model", tiny_dir, "-o", tmp_path / "out")
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 3 and message in one_line(err)
    with pytest.raises(type(error)):  # -v: the traceback, for a bug report
        run_cli(monkeypatch, capsys, *args, "-v")
