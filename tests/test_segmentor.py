"""The fast path equals the reference path; slide averaging, switches and nodata behave."""

import logging

import numpy as np
import pytest
import torch

from ovearth import Segmentor
from ovearth.constants import NODATA_LABEL, UNCLASSIFIED_LABEL
from ovearth.errors import InputError
from ovearth.model.preprocess import preprocess
from ovearth.model.stages import Sam3Stages
from ovearth.refine import Refiner

from .conftest import make_image

CLASSES = "building,roof,house;road;tree,forest;water;car"


def score_quantile(loaded, image, q):
    """A confidence threshold at the q-quantile of the tiny model's instance scores."""
    seg = Segmentor(loaded, CLASSES)
    stages = Sam3Stages(loaded.model)
    pixels = preprocess(torch.from_numpy(image).permute(2, 0, 1), stages.image_size)[None]
    with torch.inference_mode():
        scores, _ = stages.decode(stages.fuse(stages.encode_images(pixels), seg.text_features)).scores()
    return float(torch.quantile(scores.flatten(), q))


def assert_same_prediction(fast, ref):
    torch.testing.assert_close(fast.class_logits, ref.class_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.presence, ref.presence, rtol=0, atol=1e-5)
    top2 = ref.class_logits.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()  # labels may flip only at near-ties
    assert (fast.labels[clear] == ref.labels[clear]).all()


@pytest.mark.parametrize(
    ("seed", "size", "slide"),
    [
        (0, (150, 200), (0, 0)),
        (1, (260, 230), (160, 100)),  # overlapping windows
        (2, (300, 300), (150, 150)),  # exact tiling
        (3, (90, 400), (128, 96)),  # thinner than the crop: slides along one side only
    ],
)
def test_fast_equals_reference(tiny, seed, size, slide):
    image = make_image(seed, *size)
    conf = score_quantile(tiny, image, 0.8)  # about a fifth of the queries are kept
    settings = dict(confidence_threshold=conf, prob_thd=0.3, slide_crop=slide[0], slide_stride=slide[1])
    fast = Segmentor(tiny, CLASSES, mode="fast", prompt_batch=3, **settings).predict(image)
    ref = Segmentor(tiny, CLASSES, mode="reference", **settings).predict(image)
    assert_same_prediction(fast, ref)


# The tiny model's semantic term dominates its instance term, so the instance switch is
# checked with the semantic term off (otherwise switching it could not change anything).
@pytest.mark.parametrize(
    ("switch", "base"),
    [
        ("use_instances", {"use_semantic": False}),
        ("use_semantic", {}),
        ("use_presence", {}),
    ],
)
def test_switches_match_reference_and_matter(tiny, switch, base):
    image = make_image(5, 120, 140)
    base = dict(base, confidence_threshold=score_quantile(tiny, image, 0.5))
    on = Segmentor(tiny, CLASSES, **base).predict(image)
    fast = Segmentor(tiny, CLASSES, **base, **{switch: False}).predict(image)
    ref = Segmentor(tiny, CLASSES, mode="reference", **base, **{switch: False}).predict(image)
    assert_same_prediction(fast, ref)
    assert (on.class_logits - fast.class_logits).abs().max() > 1e-3


def test_instance_masks_only_for_kept_queries(tiny, monkeypatch):
    image = make_image(6, 100, 100)
    conf = score_quantile(tiny, image, 0.9)
    seg = Segmentor(tiny, CLASSES, confidence_threshold=conf)
    rows = []
    original = Sam3Stages.instance_logits

    def counting(self, pixel_embed, queries):
        rows.append(queries.shape[0])
        return original(self, pixel_embed, queries)

    monkeypatch.setattr(Sam3Stages, "instance_logits", counting)
    seg.predict(image)
    stages = Sam3Stages(tiny.model)
    pixels = preprocess(torch.from_numpy(image).permute(2, 0, 1), stages.image_size)[None]
    with torch.inference_mode():
        scores, _ = stages.decode(stages.fuse(stages.encode_images(pixels), seg.text_features)).scores()
    kept = (scores > conf).sum(dim=1)
    assert sum(rows) == int(kept.sum()) and 0 < sum(rows) < scores.numel()
    assert len(rows) == int((kept > 0).sum())


def test_prompt_batch_does_not_change_results(tiny):
    image = make_image(7, 128, 96)
    one = Segmentor(tiny, CLASSES, prompt_batch=1, confidence_threshold=0.25).predict(image)
    all_ = Segmentor(tiny, CLASSES, prompt_batch=64, confidence_threshold=0.25).predict(image)
    torch.testing.assert_close(one.class_logits, all_.class_logits, rtol=0, atol=1e-6)


def test_slide_average_matches_windows_computed_alone(tiny):
    image = make_image(8, 100, 160)
    seg = Segmentor(tiny, "road;tree", slide_crop=100, slide_stride=60)  # windows x: 0-100, 60-160
    whole, _ = seg.name_logits(torch.from_numpy(image).permute(2, 0, 1))
    alone = Segmentor(tiny, "road;tree")
    left, _ = alone.name_logits(torch.from_numpy(image[:, :100]).permute(2, 0, 1))
    right, _ = alone.name_logits(torch.from_numpy(image[:, 60:]).permute(2, 0, 1))
    torch.testing.assert_close(whole[:, :, :60], left[:, :, :60], rtol=0, atol=1e-6)
    torch.testing.assert_close(whole[:, :, 100:], right[:, :, 40:], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        whole[:, :, 60:100], (left[:, :, 60:] + right[:, :, :40]) / 2, rtol=0, atol=1e-6
    )


def test_image_smaller_than_crop_is_one_view(tiny):
    image = make_image(9, 80, 100)
    slid = Segmentor(tiny, CLASSES, slide_crop=512, slide_stride=512).predict(image)
    whole = Segmentor(tiny, CLASSES).predict(image)
    torch.testing.assert_close(slid.class_logits, whole.class_logits, rtol=0, atol=0)


class Shift(Refiner):
    """A custom refiner: mix each token with its upper neighbour (exercises the custom-object path)."""

    def __call__(self, tokens, grid, context):
        h, w = grid
        t = tokens.view(tokens.shape[0], h, w, -1)
        return (0.5 * t + 0.5 * t.roll(1, dims=1)).reshape(tokens.shape)


# Decoder-only refinement changes scores and presence, which the tiny model's dominant
# semantic term hides, and its random decoder attends almost uniformly (a mean-preserving
# smoothing changes little): that case runs without the semantic term and with a residual
# smoothing that rescales the tokens, so the test can fail.
@pytest.mark.parametrize(
    ("refine", "at", "for_", "semantic"),
    [
        ("smooth:a=0.5,mode=convex", "fusion", "both", True),
        ("smooth:a=1", "fusion", "decoder", False),
        ("smooth:a=0.5,mode=convex", "fusion", "mask", True),
        ("smooth:a=0.5,k=5+smooth:a=0.2", "backbone", "both", True),
    ],
)
def test_refinement_is_the_same_in_both_modes(tiny, refine, at, for_, semantic):
    image = make_image(10, 120, 120)
    base = dict(confidence_threshold=score_quantile(tiny, image, 0.5), use_semantic=semantic)
    settings = dict(base, refine=refine, refine_at=at, refine_for=for_)
    plain = Segmentor(tiny, CLASSES, **base).predict(image)
    fast = Segmentor(tiny, CLASSES, **settings).predict(image)
    ref = Segmentor(tiny, CLASSES, mode="reference", **settings).predict(image)
    assert_same_prediction(fast, ref)
    assert (fast.class_logits - plain.class_logits).abs().max() > 1e-4


def test_each_consumer_sees_the_refined_tokens_only_when_asked(tiny):
    image = make_image(12, 100, 100)
    run = {
        f: Segmentor(tiny, CLASSES, refine="smooth:a=1,mode=convex", refine_for=f).predict(image)
        for f in ("both", "decoder", "mask")
    }
    plain = Segmentor(tiny, CLASSES).predict(image)
    # presence comes from the decoder: refined for decoder/both, untouched for mask only
    assert torch.equal(run["mask"].presence, plain.presence)
    assert not torch.equal(run["decoder"].presence, plain.presence)
    assert torch.equal(run["decoder"].presence, run["both"].presence)
    assert not torch.equal(run["mask"].class_logits, plain.class_logits)


def test_zero_strength_and_custom_refiners(tiny):
    image = make_image(13, 90, 110)
    plain = Segmentor(tiny, CLASSES).predict(image)
    zero = Segmentor(tiny, CLASSES, refine="smooth:a=0").predict(image)
    assert torch.equal(plain.class_logits, zero.class_logits) and np.array_equal(plain.labels, zero.labels)
    seg = Segmentor(tiny, CLASSES, refiner=Shift())
    assert seg.settings.refine == "custom.Shift"
    fast, ref = seg.predict(image), Segmentor(tiny, CLASSES, refiner=Shift(), mode="reference").predict(image)
    assert_same_prediction(fast, ref)
    assert Segmentor(tiny, CLASSES, refine="smooth").settings.refine == "smooth:a=0.2,k=3,mode=residual"
    with pytest.raises(InputError, match="refine_for"):
        Segmentor(tiny, CLASSES, refine="smooth", refine_at="backbone", refine_for="mask")


def test_nodata_pixels_get_255_and_empty_images_skip_the_model(tiny, caplog, monkeypatch):
    image = make_image(11, 64, 64)
    valid = np.ones((64, 64), bool)
    valid[:10] = False
    pred = Segmentor(tiny, CLASSES).predict(image, valid=valid)
    assert (pred.labels[:10] == 255).all() and (pred.labels[10:] < 5).all()
    monkeypatch.setattr(Sam3Stages, "encode_images", lambda *a: pytest.fail("model ran on an empty image"))
    with caplog.at_level(logging.INFO):  # the file-level callers warn, naming the file
        empty = Segmentor(tiny, CLASSES).predict(image, valid=np.zeros((64, 64), bool))
    assert (empty.labels == 255).all() and "no valid pixel" in caplog.text


def test_bad_arguments(tiny):
    with pytest.raises(InputError, match="uint8"):
        Segmentor(tiny, CLASSES).predict(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputError, match="RGB"):
        Segmentor(tiny, CLASSES).predict(np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="mode"):
        Segmentor(tiny, CLASSES, mode="quick")
    with pytest.raises(InputError, match="Unknown setting"):
        Segmentor(tiny, CLASSES, prob_threshold=0.3)


@pytest.mark.parametrize("slide", [(0, 0), (60, 60)])  # one view; non-overlapping 60 x 60 tiles
def test_skipping_absent_names_keeps_every_label(tiny, monkeypatch, slide):
    image = make_image(40, 120, 180)
    seg = Segmentor(tiny, CLASSES, slide_crop=slide[0], slide_stride=slide[1])
    _, presence = seg.name_logits(torch.from_numpy(image).permute(2, 0, 1))
    prob_thd = float(presence.median())  # about half of the names are "absent"
    rows = []
    original = Sam3Stages.pixel_embed

    def counting(self, vision, fused, tokens=None):
        rows.append(fused.tokens.shape[0])
        return original(self, vision, fused, tokens)

    monkeypatch.setattr(Sam3Stages, "pixel_embed", counting)
    settings = dict(prob_thd=prob_thd, slide_crop=slide[0], slide_stride=slide[1])
    full = Segmentor(tiny, CLASSES, **settings).predict(image)
    calls_full = sum(rows)
    rows.clear()
    skipped = Segmentor(tiny, CLASSES, skip_absent=True, **settings).predict(image)
    assert np.array_equal(full.labels, skipped.labels)
    assert 0 < sum(rows) < calls_full  # fewer mask-decoder rows ran
    changed = (full.class_logits != skipped.class_logits).flatten(1).any(dim=1)
    assert changed.any() and (skipped.class_logits[changed] < prob_thd).all()


def test_no_skip_when_views_overlap(tiny):
    image = make_image(41, 100, 140)
    settings = dict(prob_thd=0.5, slide_crop=80, slide_stride=40)
    full = Segmentor(tiny, CLASSES, **settings).predict(image)
    skipped = Segmentor(tiny, CLASSES, skip_absent=True, **settings).predict(image)
    assert torch.equal(full.class_logits, skipped.class_logits)


def test_transformers_prompt_form_fast_equals_reference_and_differs_from_meta(tiny):
    """``prompt_form="transformers"`` keeps transformers' text-only forward in both modes."""
    image = make_image(6, 200, 170)
    settings = dict(confidence_threshold=score_quantile(tiny, image, 0.8), slide_crop=128, slide_stride=96)
    fast = Segmentor(tiny, CLASSES, prompt_form="transformers", prompt_batch=2, **settings).predict(image)
    ref = Segmentor(tiny, CLASSES, prompt_form="transformers", mode="reference", **settings).predict(image)
    assert_same_prediction(fast, ref)
    meta = Segmentor(tiny, CLASSES, **settings).predict(image)
    assert (meta.class_logits - fast.class_logits).abs().max() > 1e-3


def test_backbone_refinement_reaches_the_geometry_token(tiny):
    """A refined backbone level is what the geometry encoder reads too (fast and reference agree)."""
    image = make_image(7, 150, 150)
    seg = Segmentor(tiny, CLASSES, refine="smooth:a=1.0", refine_at="backbone")
    pixels = preprocess(torch.from_numpy(image).permute(2, 0, 1), seg.stages.image_size)[None]
    with torch.inference_mode():
        vision = seg.stages.encode_images(pixels)
        level = vision.levels[-1]
        refined = seg.stages.with_coarsest(vision, level * 0.5)
    assert not torch.allclose(refined.prompt_token, vision.prompt_token)
    torch.testing.assert_close(refined.prompt_token, seg.stages.prompt_token(level * 0.5, vision.pos[-1]))
    ref = Segmentor(tiny, CLASSES, mode="reference", refine="smooth:a=1.0", refine_at="backbone")
    assert_same_prediction(seg.predict(image), ref.predict(image))


@pytest.mark.parametrize("slide", [(0, 0), (96, 64)])
def test_held_image_features_give_a_fresh_predicts_result_without_the_backbone(tiny, monkeypatch, slide):
    """set_image + with_classes: a new class list on the same image runs only the per-name stages."""
    image = make_image(14, 150, 170)
    settings = dict(slide_crop=slide[0], slide_stride=slide[1], prob_thd=0.2)
    fresh = Segmentor(tiny, CLASSES, **settings).predict(image)
    other_fresh = Segmentor(tiny, "water;road,street", **settings).predict(image)
    calls = []
    encode = Sam3Stages.encode_images
    monkeypatch.setattr(
        Sam3Stages, "encode_images", lambda self, px: calls.append(len(px)) or encode(self, px)
    )
    seg = Segmentor(tiny, CLASSES, **settings)
    seg.set_image(image)
    first = seg.predict(image)
    views = sum(calls)
    assert views == (1 if slide[0] == 0 else 6)
    again, other = seg.predict(image), seg.with_classes("water;road,street").predict(image)
    assert sum(calls) == views  # no backbone run after the first predict
    for a, b in ((first, fresh), (again, fresh), (other, other_fresh)):
        assert torch.equal(a.class_logits, b.class_logits) and np.array_equal(a.labels, b.labels)
    shifted = image.copy()
    shifted[0, 0, 0] ^= 1  # another image (one bit): computed, not served from the held features
    seg.predict(shifted)
    assert sum(calls) > views


def test_record_names_what_results_depend_on(tiny):
    from ovearth import __version__

    seg = Segmentor(tiny, "water;forest,tree", refine="smooth", prob_thd=0.2)
    record = seg.record()
    assert record["ovearth"] == __version__ and record["device"] == "cpu"
    assert record["model"] == {"source": tiny.source, "fingerprint": tiny.fingerprint}
    assert record["classes"] == "water;forest,tree"
    assert record["settings"]["refine"] == "smooth:a=0.2,k=3,mode=residual"
    assert record["settings"]["prob_thd"] == 0.2


def test_low_score_pixels_are_unclassified_for_free_form_classes(tiny):
    image = make_image(21, 80, 96)
    valid = np.ones((80, 96), bool)
    valid[:8] = False
    plain = Segmentor(tiny, "water;land;cloud").predict(image, valid=valid)
    best = plain.class_logits.max(dim=0).values.numpy()
    thd = float(np.quantile(best[valid], 0.5))  # about half the valid pixels fall below
    pred = Segmentor(tiny, "water;land;cloud", prob_thd=thd).predict(image, valid=valid)
    low = valid & (best < thd)
    assert 0 < low.sum() < valid.sum()
    assert (pred.labels[low] == UNCLASSIFIED_LABEL).all() and (pred.labels[~valid] == NODATA_LABEL).all()
    assert (pred.labels[valid & ~low] == plain.labels[valid & ~low]).all()
    assert (pred.labels[valid & ~low] < 3).all()
    # a class index when asked: the reference's bg_idx rule
    asked = Segmentor(tiny, "water;land;cloud", prob_thd=thd, bg_idx=1).predict(image, valid=valid)
    assert (asked.labels[low] == 1).all()
