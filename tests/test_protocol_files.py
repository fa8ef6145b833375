"""Protocol files written by ``protocol_yaml`` read back to the same run; presets without layout."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ovearth.data.datasets import SegmentationDataset
from ovearth.data.protocols import list_protocols, load_protocol, protocol_yaml
from ovearth.errors import InputError
from ovearth.segment.settings import SegmentSettings
from ovearth.segment.vocabulary import Vocabulary

from .conftest import make_image, run_cli


@pytest.mark.parametrize("name", list_protocols())
def test_builtin_protocols_round_trip(name, tmp_path):
    protocol = load_protocol(name)
    text = protocol_yaml(
        protocol.name,
        protocol.vocabulary,
        protocol.settings,
        title=protocol.title,
        reduce_zero_label=protocol.reduce_zero_label,
        ignore_index=protocol.ignore_index,
        report=protocol.report,
        layout=protocol.layout,
    )
    (tmp_path / "p.yaml").write_text(text)
    again = load_protocol(tmp_path / "p.yaml")
    for field in ("name", "title", "vocabulary", "settings", "reduce_zero_label", "ignore_index", "report"):
        assert getattr(again, field) == getattr(protocol, field), field
    assert again.layout == protocol.layout


def test_every_schema_setting_round_trips(tmp_path):
    settings = SegmentSettings(
        confidence_threshold=0.35,
        prob_thd=0.2,
        class_prob_thd={"road": 0.45},
        bg_idx=None,
        slide_crop=256,
        slide_stride=128,
        use_instances=False,
        use_presence=False,
        refine="smooth:a=0.3",
        refine_at="backbone",
        prompt_form="transformers",
    )
    vocabulary = Vocabulary.parse("building,roof;road")
    text = protocol_yaml("mine", vocabulary, settings, comment="a preset\n\nmade by a test")
    assert text.startswith("# a preset\n#\n# made by a test\n")
    assert "bg_idx: null" in text and "layout" not in text
    (tmp_path / "mine.yaml").write_text(text)
    again = load_protocol(tmp_path / "mine.yaml")
    assert again.vocabulary == vocabulary and again.settings == settings and again.layout is None


def test_unknown_top_level_field_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nclasses: [a, b]\nsegmnt: {prob_thd: 0.1}\n")
    with pytest.raises(InputError, match=r"p.yaml: unknown field 'segmnt'; allowed: calibration, classes"):
        load_protocol(path)


def test_calibration_record_is_kept_but_changes_nothing(tmp_path):
    base = protocol_yaml("p", Vocabulary.parse("a;b"), SegmentSettings(bg_idx=0))
    (tmp_path / "plain.yaml").write_text(base)
    (tmp_path / "rec.yaml").write_text(base + "calibration: {tiles: 3, objective: mIoU}\n")
    assert load_protocol(tmp_path / "rec.yaml").settings == load_protocol(tmp_path / "plain.yaml").settings
    (tmp_path / "bad.yaml").write_text(base + "calibration: 3\n")
    with pytest.raises(InputError, match="field 'calibration' must be a mapping"):
        load_protocol(tmp_path / "bad.yaml")


def test_preset_without_layout_segments_but_does_not_evaluate(monkeypatch, capsys, tmp_path, tiny_dir):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        protocol_yaml(
            "mine", Vocabulary.parse("road;tree"), SegmentSettings(prob_thd=0.3, refine="smooth:a=0.3")
        )
    )
    Image.fromarray(make_image(2, 64, 64)).save(tmp_path / "x.png")
    code, err = run_cli(
        monkeypatch,
        capsys,
        "segment",
        tmp_path / "x.png",
        "--model",
        tiny_dir,
        "--preset",
        preset,
        "-o",
        tmp_path / "out",
    )
    assert code == 0, err
    settings = json.loads((tmp_path / "out" / "run.json").read_text())["settings"]
    # the preset's refiner and thresholds reach the run (CLI refine options left unset)
    assert (
        settings["refine"].startswith("smooth:a=0.3,")
        and settings["prob_thd"] == 0.3
        and settings["bg_idx"] is None
    )
    with pytest.raises(InputError, match=r"preset.yaml: no 'layout' section; this file is a preset"):
        SegmentationDataset(load_protocol(preset), tmp_path)
