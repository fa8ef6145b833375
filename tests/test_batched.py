"""The accelerator path (batched views, padded instance masks, bf16) checked on the CPU.

No GPU is needed: each switch is forced on the tiny model and compared with the plain
path (exact up to float rounding) or, for bfloat16, bounded by its rounding.
"""

import pytest
import torch

from ovearth import Segmentor
from ovearth.errors import InputError
from ovearth.segment.fusion import instance_max, instance_max_batched, kept_padded

from .conftest import make_image
from .test_segmentor import CLASSES, assert_same_prediction, score_quantile


def test_kept_padded_puts_kept_queries_first_and_pads_with_zero_weight():
    scores = torch.tensor([[0.9, 0.1, 0.7, 0.2], [0.3, 0.8, 0.1, 0.6], [0.1, 0.2, 0.3, 0.4]])
    keep = scores > 0.5
    index, weight = kept_padded(scores, keep)
    assert index.shape == (3, 2)  # the most any prompt keeps
    assert index[0].tolist() == [0, 2] and weight[0].tolist() == pytest.approx([0.9, 0.7])
    assert index[1].tolist() == [1, 3] and weight[1].tolist() == pytest.approx([0.8, 0.6])
    assert weight[2].tolist() == [0.0, 0.0]  # nothing kept: padding only


def test_instance_max_batched_equals_per_prompt_loop():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 12, 10, generator=generator) * 4
    scores = torch.rand(3, 5, generator=generator)
    keep = scores > 0.4
    index, weight = kept_padded(scores, keep)
    padded = logits.gather(1, index[..., None, None].expand(-1, -1, 12, 10))
    batched = instance_max_batched(padded, weight, (37, 29), chunk=2)
    for b in range(3):
        alone = instance_max(logits[b][keep[b]], scores[b][keep[b]], (37, 29))
        torch.testing.assert_close(batched[b], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("slide", [(0, 0), (128, 96)])
def test_batched_instances_equal_the_per_prompt_path(tiny, slide):
    image = make_image(11, 200, 230)
    conf = score_quantile(tiny, image, 0.8)
    settings = dict(confidence_threshold=conf, prob_thd=0.3, slide_crop=slide[0], slide_stride=slide[1])
    plain = Segmentor(tiny, CLASSES, prompt_batch=4, **settings)
    batched = Segmentor(tiny, CLASSES, prompt_batch=4, **settings)
    batched.batched_instances = True  # what accelerators use
    assert not plain.batched_instances  # the CPU default
    assert_same_prediction(batched.predict(image), plain.predict(image))
    ref = Segmentor(tiny, CLASSES, mode="reference", **settings).predict(image)
    assert_same_prediction(batched.predict(image), ref)


def test_views_batched_through_the_backbone_equal_one_at_a_time(tiny):
    image = make_image(12, 260, 300)
    settings = dict(slide_crop=128, slide_stride=100, confidence_threshold=0.25)
    one = Segmentor(tiny, CLASSES, view_batch=1, **settings).predict(image)
    many = Segmentor(tiny, CLASSES, view_batch=5, **settings).predict(image)
    assert Segmentor(tiny, CLASSES).view_batch == 1  # the CPU default
    torch.testing.assert_close(many.class_logits, one.class_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(many.presence, one.presence, rtol=0, atol=1e-5)


def test_bfloat16_autocast_stays_within_its_rounding(tiny):
    image = make_image(13, 160, 160)
    full = Segmentor(tiny, CLASSES, confidence_threshold=0.25).predict(image)
    half = Segmentor(tiny, CLASSES, confidence_threshold=0.25, precision="bfloat16").predict(image)
    assert half.class_logits.dtype == torch.float32  # fusion rules stay float32
    difference = (half.class_logits - full.class_logits).abs()
    assert 0 < difference.max() < 0.05  # bf16 keeps 8 bits of mantissa: really ran, and stayed close
    assert (half.labels == full.labels).mean() > 0.9


def test_bad_precision_is_refused():
    from ovearth.segment.settings import SegmentSettings

    with pytest.raises(InputError, match="precision must be one of float32, bfloat16"):
        SegmentSettings(precision="fp8")


def test_cli_precision_and_view_batch_reach_the_settings(monkeypatch, capsys, tiny_dir, tmp_path):
    import json

    from PIL import Image

    from .conftest import run_cli

    Image.fromarray(make_image(1, 64, 64)).save(tmp_path / "a.png")
    args = ["segment", tmp_path / "a.png", "--classes", "road;tree", "--model", tiny_dir]
    args += ["-o", tmp_path / "o"]
    code, _ = run_cli(monkeypatch, capsys, *args, "--precision", "bfloat16", "--view-batch", "3")
    assert code == 0
    settings = json.loads((tmp_path / "o" / "run.json").read_text())["settings"]
    assert (settings["precision"], settings["view_batch"], settings["compile"]) == ("bfloat16", 3, False)
    code, err = run_cli(monkeypatch, capsys, *args[:-1], tmp_path / "p", "--precision", "fp16")
    assert code == 1 and "precision must be one of float32, bfloat16, got 'fp16'" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_compiled_backbone_equals_eager(tiny):
    """torch.compile (inductor, needs a C compiler) changes nothing beyond float rounding."""
    image = make_image(14, 120, 140)
    eager = Segmentor(tiny, "road;tree").predict(image)
    seg = Segmentor(tiny, "road;tree", compile=True)
    assert seg.stages._backbone is not tiny.model.vision_encoder.backbone  # really compiled
    compiled = seg.predict(image)
    torch.testing.assert_close(compiled.class_logits, eager.class_logits, rtol=0, atol=1e-5)
    assert "compile" not in seg.settings.semantic_dict()  # cached evaluations stay valid
