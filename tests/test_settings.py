"""SegmentSettings: checked and parsed once, at construction."""

from __future__ import annotations

import pytest

from ovearth.errors import InputError
from ovearth.refine import RefinePipeline, parse_refine
from ovearth.refine.smooth import Smooth
from ovearth.run.segment_files import FileOptions
from ovearth.segment.settings import SegmentSettings
from ovearth.segment.zoom import Zoom


def test_settings_hold_the_parsed_zoom_and_refine_pipeline(monkeypatch):
    calls = []
    real = Zoom.parse
    monkeypatch.setattr(Zoom, "parse", staticmethod(lambda spec: calls.append(spec) or real(spec)))
    settings = SegmentSettings(refine="smooth:a=0.5", zoom="k=2,scale=2")
    assert settings.parsed_zoom is settings.parsed_zoom and settings.parsed_zoom.k == 2
    assert len(calls) == 1  # the property reads what __post_init__ parsed
    pipeline = settings.refine_pipeline
    assert pipeline is settings.refine_pipeline and isinstance(pipeline.refiners[0], Smooth)
    assert pipeline.refiners[0].a == 0.5
    # the field is the canonical spec (every parameter written out), which parses to the same pipeline
    assert settings.refine == "smooth:a=0.5,k=3,mode=residual"
    assert parse_refine(settings.refine).spec() == settings.refine
    assert SegmentSettings().refine_pipeline == RefinePipeline() and SegmentSettings().parsed_zoom is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("refine", "smooth:a=-1", "a"),
        ("refine", "nosuch", "nosuch"),
        ("zoom", "k=0", "k"),
        ("prob_thd", 1.5, r"\[0, 1\]"),
        ("bg_idx", 255, "nodata"),
    ],
)
def test_bad_values_fail_at_construction(field, value, message):
    with pytest.raises(InputError, match=message):
        SegmentSettings(**{field: value})


def test_a_recorded_python_refiner_cannot_be_rebuilt_from_text():
    settings = SegmentSettings(refine="custom.Shift")  # what a Segmentor with refiner=Shift() records
    with pytest.raises(InputError, match="Segmentor\\(refiner=...\\)"):
        _ = settings.refine_pipeline


def test_bg_idx_is_checked_against_the_class_count():
    SegmentSettings(bg_idx=2).check_run(3)
    with pytest.raises(InputError, match="0..1"):
        SegmentSettings(bg_idx=2).check_run(2)


def test_file_options_check_the_stretch_rule_once():
    assert FileOptions(stretch="0,3000").stretch == "0,3000"
    with pytest.raises(InputError, match="is not percentile"):
        FileOptions(stretch="gamma")


def test_free_form_classes_get_an_unclassified_label_presets_keep_their_background():
    from ovearth.constants import NODATA_LABEL, UNCLASSIFIED_LABEL
    from ovearth.data.protocols import load_protocol

    assert SegmentSettings().bg_idx is None and SegmentSettings().low_score_label == UNCLASSIFIED_LABEL == 254
    assert UNCLASSIFIED_LABEL != NODATA_LABEL
    assert SegmentSettings(bg_idx=3).low_score_label == 3
    assert load_protocol("loveda").settings.low_score_label == 0
    assert load_protocol("potsdam").settings.low_score_label == 5
    with pytest.raises(InputError, match="at most 254"):
        SegmentSettings().check_classes(255)


def test_a_segmentor_takes_the_settings_as_made_without_parsing_them_again(tiny, monkeypatch):
    """Settings are validated and their refine / zoom parsed once, where they were made (issue 23)."""
    from ovearth import Segmentor, SegmentSettings
    from ovearth.segment import settings as settings_module

    made = SegmentSettings(refine="smooth:a=0.2", zoom="k=1,scale=2")
    calls = []
    real = settings_module.parse_refine
    monkeypatch.setattr(settings_module, "parse_refine", lambda spec: calls.append(spec) or real(spec))
    segmentor = Segmentor(tiny, "a;b", settings=made)
    assert segmentor.settings is made and calls == []
    assert Segmentor(tiny, "a;b", settings=made, prob_thd=0.2).settings.prob_thd == 0.2 and len(calls) == 1
