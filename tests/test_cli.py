"""The `ovearth` command end to end, including every kind of bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from PIL import Image

from .conftest import make_image, run_cli


def test_segment_geotiff_keeps_georeferencing(monkeypatch, capsys, tmp_path, tiny_dir, samples):
    out = tmp_path / "out"
    code, err = run_cli(
        monkeypatch,
        capsys,
        "segment",
        samples / "RGB.byte.tif",
        "--model",
        tiny_dir,
        "--classes",
        "water,sea;land;cloud",
        "--prob-thd",
        "0.2",
        "--probs",
        "-o",
        out,
    )
    assert code == 0, err
    with rasterio.open(out / "RGB.byte_labels.tif") as labels, rasterio.open(samples / "RGB.byte.tif") as src:
        assert labels.crs == src.crs and labels.transform == src.transform
        assert (labels.width, labels.height) == (src.width, src.height)
        values = labels.read(1)
        nodata = src.dataset_mask() == 0
        assert (values[nodata] == 255).all() and np.isin(values[~nodata], [0, 1, 2, 254]).all()
    with rasterio.open(out / "RGB.byte_scores.tif") as scores:
        assert scores.descriptions == ("water", "land", "cloud") and scores.crs == src.crs
        best = np.nan_to_num(scores.read(), nan=-1).max(axis=0)
        # below --prob-thd: 254 (unclassified), never a class index; at or above: a class
        assert ((values == 254) == (~nodata & (best < 0.2))).all() and (values == 254).any()
    assert Image.open(out / "RGB.byte_overlay.png").width > src.width  # legend panel added
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["prob_thd"] == 0.2 and record["classes"] == "water,sea;land;cloud"
    assert record["model"]["fingerprint"] != "unknown"


def test_folder_of_png_and_jpeg_gives_png_labels(monkeypatch, capsys, tmp_path, tiny_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(make_image(0, 90, 120)).save(folder / "a.png")
    Image.fromarray(make_image(1, 100, 80)).save(folder / "b.jpg", quality=95)
    code, err = run_cli(
        monkeypatch,
        capsys,
        "segment",
        folder,
        "--model",
        tiny_dir,
        "--classes",
        "road;tree",
        "-o",
        tmp_path / "out",
    )
    assert code == 0, err
    labels = np.asarray(Image.open(tmp_path / "out" / "a_labels.png"))
    assert labels.shape == (90, 120) and labels.max() < 2
    assert (tmp_path / "out" / "b_labels.png").exists()


def test_preset_gives_protocol_settings_and_options_override(monkeypatch, capsys, tmp_path, tiny_dir):
    Image.fromarray(make_image(2, 64, 64)).save(tmp_path / "x.png")
    code, err = run_cli(
        monkeypatch,
        capsys,
        "segment",
        tmp_path / "x.png",
        "--model",
        tiny_dir,
        "--preset",
        "potsdam",
        "--prob-thd",
        "0.25",
        "-o",
        tmp_path / "out",
    )
    assert code == 0, err
    settings = json.loads((tmp_path / "out" / "run.json").read_text())["settings"]
    assert (
        settings["confidence_threshold"] == 0.2 and settings["bg_idx"] == 5 and settings["prob_thd"] == 0.25
    )
    assert settings["prompt_form"] == "meta"  # Meta's form unless asked otherwise
    args = ("segment", tmp_path / "x.png", "--model", tiny_dir, "--preset", "potsdam", "--prompt-form")
    code, err = run_cli(monkeypatch, capsys, *args, "transformers", "-o", tmp_path / "plain")
    assert code == 0, err
    assert (
        json.loads((tmp_path / "plain" / "run.json").read_text())["settings"]["prompt_form"] == "transformers"
    )
    code, err = run_cli(monkeypatch, capsys, *args, "sam2", "-o", tmp_path / "bad")
    assert code == 1 and "prompt_form must be one of meta, transformers, got 'sam2'" in err


def test_all_nodata_raster_warns_and_writes_nodata_labels(monkeypatch, capsys, tmp_path, tiny_dir, samples):
    code, err = run_cli(
        monkeypatch,
        capsys,
        "segment",
        samples / "all-nodata.tif",
        "--model",
        tiny_dir,
        "--classes",
        "road;tree",
        "-o",
        tmp_path,
    )
    assert code == 0 and "nodata" in err
    with rasterio.open(tmp_path / "all-nodata_labels.tif") as labels:
        assert (labels.read(1) == 255).all()


@pytest.mark.parametrize(
    ("inputs", "extra", "message"),
    [
        (["absent.tif"], ["--classes", "road"], "absent.tif: no such file"),
        (["corrupt.tif"], ["--classes", "road"], "corrupt.tif: the pixel data is corrupt"),
        (["rgb1_fake_nir_epsg3857.tif"], ["--classes", "road"], "rgb1_fake_nir_epsg3857.tif has 1 band"),
        (["RGB.byte.tif"], ["--classes", ""], "class list is empty"),
        (["RGB.byte.tif"], ["--classes", "road;tree,Road"], "appears twice"),
        (
            ["RGB.byte.tif"],
            ["--classes", "road", "--slide-crop", "256", "--slide-stride", "512"],
            "larger than the crop",
        ),
        (["RGB.byte.tif"], [], "exactly one of --classes"),
        (["RGB.byte.tif"], ["--preset", "lovedaa"], "Did you mean loveda"),
        (["RGB.byte.tif", "corrupt.tif"], ["--classes", "road", "--bands", "1,2,9"], "has 3 band"),
    ],
)
def test_bad_input_one_sentence_nonzero_exit_no_output(
    monkeypatch, capsys, tmp_path, tiny_dir, samples, inputs, extra, message
):
    out = tmp_path / "out"
    code, err = run_cli(
        monkeypatch, capsys, "segment", *[samples / i for i in inputs], "--model", tiny_dir, *extra, "-o", out
    )
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_weights_exit_code_2_and_how_to_get_them(tmp_path, samples):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), COLUMNS="200")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ovearth",
            "segment",
            str(samples / "RGB.byte.tif"),
            "--classes",
            "road",
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "facebook/sam3" in done.stderr and "hf download" in done.stderr
    assert not (tmp_path / "out").exists()


def test_make_tiny_model_command(monkeypatch, capsys, tmp_path):
    code, err = run_cli(
        monkeypatch, capsys, "make-tiny-model", tmp_path / "m", "--seed", "3", "--image-size", "336"
    )
    assert code == 0 and "meaningless" in err
    from ovearth import load_model

    assert load_model(tmp_path / "m").model.config.vision_config.backbone_config.image_size == 336


def test_settings_options_table_matches_the_commands_and_the_settings_fields():
    import dataclasses
    import inspect

    from ovearth.cli.benchmarks import eval_
    from ovearth.cli.calibrate import calibrate
    from ovearth.cli.images import segment
    from ovearth.cli.reproduce import reproduce
    from ovearth.cli.settings_options import SETTINGS_OPTIONS, given_settings
    from ovearth.segment.settings import SegmentSettings

    fields = {f.name for f in dataclasses.fields(SegmentSettings)}
    derived = {"class_prob_thd"}  # parsed from --prob-thd inside the command (parse_prob_thd)
    commands = {"segment": segment, "eval": eval_, "calibrate": calibrate, "reproduce": reproduce}
    assert set(SETTINGS_OPTIONS) == set(commands)
    for name, command in commands.items():
        parameters = set(inspect.signature(command).parameters)
        table = SETTINGS_OPTIONS[name]
        assert set(table) <= parameters | derived, name  # every option exists (a rename fails here)
        assert set(table.values()) <= fields, name  # every target is a settings field
        # an option named like a settings field is in the table: none forgotten
        assert {p for p in parameters if p in fields} <= set(table), name
    # segment sets every field of the fusion rule; eval and calibrate keep the protocol's
    assert set(SETTINGS_OPTIONS["segment"].values()) == fields
    options = dict.fromkeys(SETTINGS_OPTIONS["segment"])
    picked = given_settings(
        "segment", {**options, "compile_backbone": True, "presence": False, "zoom": "k=1"}
    )
    assert picked == {"compile": True, "use_presence": False, "zoom": "k=1"}
    del options["presence"]
    with pytest.raises(KeyError, match="no parameter presence"):  # a renamed option is an error
        given_settings("segment", options)
