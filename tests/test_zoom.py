"""Two-pass zoom: region choice, the merge rule, scale 1 = one pass, both modes."""

import json

import pytest
import torch

from ovearth import Segmentor
from ovearth.errors import InputError
from ovearth.segment.windows import Window
from ovearth.segment.zoom import Zoom, candidate_regions, choose_regions, uncertainty
from tests.conftest import make_image, run_cli
from tests.test_segmentor import CLASSES, assert_same_prediction


def test_candidates_and_uncertainty_on_known_maps():
    assert candidate_regions(100, 60, 1) == [Window(0, 100, 0, 60)]
    regions = candidate_regions(100, 60, 2)  # 50 x 30 regions at stride 25 x 15
    assert regions[0] == Window(0, 50, 0, 30) and regions[-1] == Window(50, 100, 30, 60) and len(regions) == 9
    logits = torch.zeros(3, 100, 60)
    logits[0] = 0.9  # confident everywhere ...
    logits[1, 60:, 40:] = 0.85  # ... except bottom-right, where two classes nearly tie
    torch.testing.assert_close(uncertainty(logits)[0, 0], torch.tensor(0.1))
    chosen = choose_regions(logits, Zoom(k=1, scale=2))
    assert chosen == [Window(50, 100, 30, 60)]
    assert len(choose_regions(logits, Zoom(k=20, scale=2))) == 9


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("k=0", "k must be"),
        ("scale=0.5", "scale must be a finite number in 1..16"),
        ("depth=2", "use k=N"),
        ("k=two", "not a number"),
        ("k=nan", "k must be a whole number of regions in 1..64"),
        ("k=2.5", "k must be a whole number"),
        ("k=1e9", "k must be a whole number of regions in 1..64"),
        ("scale=inf", "scale must be a finite number"),
        ("scale=nan", "scale must be a finite number"),
        ("scale=1e9", "scale must be a finite number in 1..16"),
    ],
)
def test_bad_zoom_specs(spec, message):
    with pytest.raises(InputError, match=message):
        Zoom.parse(spec)


def test_scale_one_reproduces_one_pass_exactly(tiny):
    image = make_image(30, 90, 120)
    one = Segmentor(tiny, CLASSES).predict(image)
    zoomed = Segmentor(tiny, CLASSES, zoom="k=3,scale=1").predict(image)
    assert torch.equal(one.class_logits, zoomed.class_logits) and (one.labels == zoomed.labels).all()


def test_merge_counts_each_region_as_one_more_view(tiny):
    image = make_image(31, 96, 128)
    view = torch.from_numpy(image).permute(2, 0, 1)
    plain = Segmentor(tiny, CLASSES)
    first, _ = plain.name_logits(view)
    zoomed = Segmentor(tiny, CLASSES, zoom="k=1,scale=2")
    (region,) = choose_regions(_classes(plain, first), Zoom(k=1, scale=2))
    merged, _ = zoomed.name_logits(view)
    crop, _ = plain.name_logits(view[:, region.y1 : region.y2, region.x1 : region.x2])
    inside = merged[:, region.y1 : region.y2, region.x1 : region.x2]
    torch.testing.assert_close(inside, (first[:, region.y1 : region.y2, region.x1 : region.x2] + crop) / 2)
    outside = torch.ones_like(first[0], dtype=torch.bool)
    outside[region.y1 : region.y2, region.x1 : region.x2] = False
    assert torch.equal(merged[:, outside], first[:, outside])


def _classes(seg, name_logits):
    from ovearth.segment.fusion import names_to_classes

    return names_to_classes(name_logits, seg.vocabulary.name_class, len(seg.vocabulary))


def test_zoom_fast_equals_reference_and_is_recorded(tiny, tiny_dir, monkeypatch, capsys, tmp_path):
    image = make_image(32, 80, 80)
    fast = Segmentor(tiny, CLASSES, zoom="k=2,scale=2").predict(image)
    ref = Segmentor(tiny, CLASSES, zoom="k=2,scale=2", mode="reference").predict(image)
    assert_same_prediction(fast, ref)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "x.png")
    code, err = run_cli(
        monkeypatch,
        capsys,
        "segment",
        tmp_path / "x.png",
        "--classes",
        "road;tree",
        "--model",
        tiny_dir,
        "--zoom",
        "k=2,scale=2",
        "-o",
        tmp_path / "out",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["zoom"] == "k=2,scale=2"
