"""SAM 3's kept objects as instances: masks, boxes, dedup, fast == reference, windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovearth import Segmentor
from ovearth.segment.instances import Instance, StreamingDedup, deduplicate, from_mask, mask_iou, restricted

from .conftest import make_image


def square(class_index: int, score: float, y: int, x: int, side: int, name: str = "n") -> Instance:
    mask = np.zeros((100, 100), bool)
    mask[y : y + side, x : x + side] = True
    return from_mask(mask, class_index, name, score)


def test_box_and_mask_are_the_masks_extent():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    mask[6, 4] = True
    one = from_mask(mask, 1, "house", 0.8, offset=(100, 200))
    assert one.box == (203, 102, 209, 107) and one.mask.shape == (5, 6) and one.pixels == 19
    assert np.array_equal(one.full_mask(120, 220)[100:110, 200:212], mask)
    assert from_mask(np.zeros((4, 4), bool), 0, "x", 0.9) is None


def test_mask_iou_on_known_overlaps():
    a, b = square(0, 0.9, 0, 0, 10), square(0, 0.8, 0, 5, 10)  # 50 shared of 150
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_iou(a, square(0, 0.8, 50, 50, 10)) == 0.0
    assert mask_iou(a, a) == 1.0


def test_deduplicate_keeps_the_higher_score_per_class():
    a = square(0, 0.7, 0, 0, 10)
    b = square(0, 0.9, 0, 1, 10)  # IoU 90/110 > 0.5 with a: one object, b wins
    c = square(0, 0.8, 0, 6, 10)  # IoU 40/160 with a, 50/150 with b: kept
    d = square(1, 0.6, 0, 0, 10)  # another class: kept although it overlaps a fully
    kept = deduplicate([a, b, c, d])
    assert [(k.class_index, k.score) for k in kept] == [(0, 0.9), (0, 0.8), (1, 0.6)]


def test_restricted_cuts_masks_to_valid_pixels():
    valid = np.ones((100, 100), bool)
    valid[:, :5] = False
    cut = restricted([square(0, 0.9, 0, 0, 10), square(0, 0.9, 0, 0, 4)], valid)
    assert len(cut) == 1 and cut[0].box == (5, 0, 10, 10) and cut[0].pixels == 50


@pytest.fixture(scope="module")
def low_threshold():
    # the tiny random model keeps few queries at 0.5; a low threshold gives many objects
    return {"confidence_threshold": 0.05}


def test_instances_leave_labels_and_scores_unchanged(tiny, low_threshold):
    image = make_image(5, 96, 120)
    seg = Segmentor(tiny, "water;forest,tree;road", **low_threshold)
    plain, with_objects = seg.predict(image), seg.predict(image, instances=True)
    assert plain.instances is None and len(with_objects.instances) > 0
    assert np.array_equal(plain.labels, with_objects.labels)
    assert torch.equal(plain.class_logits, with_objects.class_logits)


def test_instances_are_the_kept_masks_above_one_half(tiny, low_threshold):
    """Each instance's mask, max(.) over instances of a name times the score, is bounded by the name's map."""
    image = make_image(6, 80, 80)
    seg = Segmentor(tiny, "water;road", use_semantic=False, use_presence=False, **low_threshold)
    pred = seg.predict(image, instances=True)
    assert pred.instances
    for one in pred.instances:
        full = one.full_mask(80, 80)
        # instance term = max_j sigmoid(mask_j) * s_j >= 0.5 * s_j on the instance's mask
        term = pred.class_logits[one.class_index].numpy()
        assert (term[full] >= 0.5 * one.score - 1e-6).all()
        assert one.score > 0.05 and one.name in ("water", "road")


def test_fast_and_reference_find_the_same_instances(tiny, low_threshold):
    image = make_image(7, 90, 110)
    fast = Segmentor(tiny, "water;forest,tree", **low_threshold).predict(image, instances=True)
    reference = Segmentor(tiny, "water;forest,tree", mode="reference", **low_threshold)
    ref = reference.predict(image, instances=True)
    assert len(fast.instances) == len(ref.instances) > 0
    for a, b in zip(fast.instances, ref.instances, strict=True):
        assert (a.class_index, a.name) == (b.class_index, b.name)
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert mask_iou(a, b) > 0.99


def test_overlapping_windows_are_deduplicated(tiny, low_threshold):
    image = make_image(8, 120, 160)
    windows = {"slide_crop": 96, "slide_stride": 48, **low_threshold}
    pred = Segmentor(tiny, "water;forest", **windows).predict(image, instances=True)
    assert pred.instances
    for i, a in enumerate(pred.instances):
        for b in pred.instances[i + 1 :]:
            if a.class_index == b.class_index:
                assert mask_iou(a, b) <= 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_dedup_equals_deduplicate_of_everything(seed):
    """Objects seen by overlapping rows of windows (duplicates across rows), settled row by row."""
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(80):
        y, x = int(rng.integers(0, 110)), int(rng.integers(0, 100))
        h, w = int(rng.integers(2, 14)), int(rng.integers(2, 14))
        mask = rng.random((h, w)) < 0.8
        mask[0, 0] = mask[-1, -1] = True  # the box is the mask's extent
        objects.append((int(rng.integers(0, 3)), (x, y, x + w, y + h), mask))
    stream, everything, pending_sizes = StreamingDedup(), [], []
    rows = [0, 24, 48, 72, 96]  # windows 40 rows high every 24 rows: objects seen twice
    for r, top in enumerate(rows):
        found = [
            Instance(k, "n", float(rng.choice([0.3, 0.5, rng.random()])), box, mask)  # ties too
            for k, box, mask in objects
            if top <= box[1] and box[3] <= top + 40
        ]
        stream.add(found)
        everything.extend(found)
        stream.settle(rows[r + 1] if r + 1 < len(rows) else np.inf)
        pending_sizes.append(len(stream.pending))
    expected = deduplicate(everything)
    assert len(expected) < len(everything)  # there were duplicates to remove
    got = stream.finish()
    assert [id(one) for one in got] == [id(one) for one in expected]
    assert max(pending_sizes) < len(everything) / 2  # settled groups left memory as rows passed
