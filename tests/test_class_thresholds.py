"""Per-class thresholds: argmax over classes first, then the winner's threshold decides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovearth import Segmentor
from ovearth.cli.app import parse_prob_thd
from ovearth.constants import UNCLASSIFIED_LABEL
from ovearth.data.protocols import load_protocol
from ovearth.errors import InputError
from ovearth.segment.fusion import labels_from_logits
from ovearth.segment.settings import SegmentSettings

from .conftest import make_image


def test_the_winning_class_threshold_decides():
    # pixels: class 0 wins at 0.35, class 1 wins at 0.35, class 1 wins at 0.25, class 0 wins at 0.6
    logits = torch.tensor([[[0.35, 0.1, 0.2, 0.6]], [[0.3, 0.35, 0.25, 0.1]]])
    labels = labels_from_logits(logits.clone(), [0.4, 0.3], bg_idx=9)
    assert labels.tolist() == [[9, 1, 9, 0]]  # 0.35 < 0.4 (class 0); 0.35 >= 0.3 (class 1); 0.25 < 0.3
    # not "any class above its threshold": pixel 0 has class 1 at 0.3 >= 0.3 but class 0 wins the argmax
    same = labels_from_logits(logits.clone(), [0.3, 0.3], bg_idx=9)
    assert same.tolist() == labels_from_logits(logits.clone(), 0.3, bg_idx=9).tolist() == [[0, 1, 9, 0]]


def test_settings_resolve_class_thresholds():
    s = SegmentSettings(prob_thd=0.2, class_prob_thd={"road": 0.4, "tree": 0.1})
    assert s.class_prob_thd == (("road", 0.4), ("tree", 0.1))
    assert s.class_thresholds(["building", "road", "tree"]) == [0.2, 0.4, 0.1]
    assert s.lowest_prob_thd == 0.1
    assert s.to_dict()["class_prob_thd"] == {"road": 0.4, "tree": 0.1}
    assert SegmentSettings(**s.to_dict()) == s  # a results file's settings rebuild the same
    assert "class_prob_thd" not in SegmentSettings().semantic_dict()  # old cache keys stay valid
    with pytest.raises(InputError, match="'water', which is not a class"):
        s.replace(class_prob_thd={"water": 0.3}).class_thresholds(["building", "road"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"road": 1.5}, r"\[0, 1\]"),
        ({"": 0.2}, "must be text"),
        ("road", "must map"),
        ({"road": True}, r"\[0, 1\]"),
    ],
)
def test_bad_class_thresholds(value, message):
    with pytest.raises(InputError, match=message):
        SegmentSettings(class_prob_thd=value)


def test_cli_form_of_prob_thd():
    assert parse_prob_thd(None) == (None, None)
    assert parse_prob_thd("0.3") == (0.3, None)
    assert parse_prob_thd("0.2, building=0.4,road=0.3") == (0.2, {"building": 0.4, "road": 0.3})
    assert parse_prob_thd("low vegetation=0.25") == (None, {"low vegetation": 0.25})
    with pytest.raises(InputError, match="'building' is not a number or class=number"):
        parse_prob_thd("0.2,building")


def test_fast_reference_and_skip_agree_with_class_thresholds(tiny):
    image = make_image(31, 96, 96)
    common = {
        "prob_thd": 0.05,
        "class_prob_thd": {"forest": 0.5, "road": 0.15},
        "slide_crop": 48,
        "slide_stride": 48,
    }
    fast = Segmentor(tiny, "water;forest,tree;road", **common).predict(image)
    reference = Segmentor(tiny, "water;forest,tree;road", mode="reference", **common).predict(image)
    skipped = Segmentor(tiny, "water;forest,tree;road", skip_absent=True, **common).predict(image)
    assert np.array_equal(fast.labels, reference.labels) and np.array_equal(fast.labels, skipped.labels)
    best, winner = fast.class_logits.max(dim=0)
    thresholds = torch.tensor([0.05, 0.5, 0.15])[winner]
    low = (best < thresholds).numpy()
    assert low.any() and (fast.labels[low] == UNCLASSIFIED_LABEL).all()
    assert (fast.labels[~low] == winner.numpy()[~low]).all()


def test_protocol_yaml_carries_class_thresholds(tmp_path):
    text = (load_protocol("loveda").source.read_text()).replace(
        "prob_thd: 0.5", "prob_thd: 0.5\n  class_prob_thd: {building: 0.4, road: 0.3}"
    )
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    settings = load_protocol(path).settings
    classes = load_protocol(path).vocabulary.labels
    assert settings.class_thresholds(classes)[classes.index("building")] == 0.4
    path.write_text(text.replace("road: 0.3", "roads: 0.3"))
    with pytest.raises(InputError, match="'roads', which is not a class"):
        load_protocol(path)
