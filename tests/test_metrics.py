"""Segmentation metrics: hand-computed cases reproducing mmseg's IoUMetric semantics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ovearth.errors import InputError
from ovearth.metrics import RunningConfusion, areas, compute_metrics, confusion_matrix, per_class_metrics

NAN = float("nan")
KEYS = ("IoU", "Acc", "Fscore", "Precision", "Recall")


def assert_close(actual, expected):
    """Equal as floats, NaN equal to NaN."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        if math.isnan(e):
            assert math.isnan(a), (actual, expected)
        else:
            assert a == pytest.approx(e), (actual, expected)


def per_class(result, key):
    return [v[key] for v in result["per_class"].values()]


def mmseg_areas(pred, label, num_classes, ignore_index=255):
    """mmseg's intersect_and_union written out with torch.histc, as an independent reference."""
    pred, label = torch.as_tensor(pred), torch.as_tensor(label).to(torch.as_tensor(pred))
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]

    def hist(x):
        return torch.histc(x.float(), bins=num_classes, min=0, max=num_classes - 1).numpy()

    inter, p, lab = hist(pred[pred == label]), hist(pred), hist(label)
    return inter, p + lab - inter, p, lab


# A 2 x 4 image, 3 classes, two ignored pixels (the last column).
LABEL = np.array([[0, 0, 1, 255], [1, 2, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 2], [1, 2, 0, 0]], dtype=np.int64)
NAMES = ["a", "b", "c"]


def test_hand_computed_case():
    cm = confusion_matrix(PRED, LABEL, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0]])
    a = areas(cm)
    np.testing.assert_array_equal(a.intersect, [1, 2, 1])
    np.testing.assert_array_equal(a.pred, [2, 3, 1])
    np.testing.assert_array_equal(a.label, [2, 2, 2])
    np.testing.assert_array_equal(a.union, [3, 3, 2])

    r = compute_metrics(cm, NAMES)
    assert_close(per_class(r, "IoU"), [100 / 3, 200 / 3, 50])
    assert_close(per_class(r, "Acc"), [50, 100, 50])
    assert_close(per_class(r, "Precision"), [50, 200 / 3, 100])
    assert_close(per_class(r, "Recall"), [50, 100, 50])
    assert_close(per_class(r, "Fscore"), [50, 80, 200 / 3])  # 2PR / (P + R)
    assert r["aAcc"] == pytest.approx(100 * 4 / 6)
    assert r["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["mAcc"] == pytest.approx(100 * 2 / 3)
    assert r["mPrecision"] == pytest.approx(100 * 13 / 18)
    assert r["mRecall"] == pytest.approx(100 * 2 / 3)
    assert r["mFscore"] == pytest.approx(100 * 59 / 90)
    assert r["num_pixels"] == 6


def test_matches_mmseg_histc_reference_on_random_maps():
    rng = np.random.default_rng(0)
    k = 5
    label = rng.integers(0, k, size=(37, 41))
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, k, size=label.shape)
    pred[rng.random(label.shape) < 0.1] = 255  # out-of-range predictions
    pred[rng.random(label.shape) < 0.05] = -1
    a = areas(confusion_matrix(pred, label, k))
    for ours, ref in zip((a.intersect, a.union, a.pred, a.label), mmseg_areas(pred, label, k), strict=True):
        np.testing.assert_array_equal(ours, ref)


def test_json_friendly_and_torch_inputs():
    cm = confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(LABEL), 3)
    np.testing.assert_array_equal(cm, confusion_matrix(PRED.astype(np.int16), LABEL.astype(np.int32), 3))
    r = compute_metrics(cm, NAMES)
    assert list(r) == ["aAcc", "mIoU", "mAcc", "mFscore", "mPrecision", "mRecall", "num_pixels", "per_class"]
    assert all(type(r[k]) is float for k in ("aAcc", "mIoU", "mAcc", "mFscore", "mPrecision", "mRecall"))
    assert type(r["num_pixels"]) is int
    assert all(type(v) is float for d in r["per_class"].values() for v in d.values())
    assert json.loads(json.dumps(r))["mAcc"] == pytest.approx(100 * 2 / 3)


def test_ignored_pixels_count_nowhere():
    base = confusion_matrix(PRED, LABEL, 3)
    changed = PRED.copy()
    changed[:, 3] = [1, 255]  # predictions at the two ignored pixels
    np.testing.assert_array_equal(confusion_matrix(changed, LABEL, 3), base)
    assert base.sum() == 6
    # A different ignore_index: label 2 is dropped, 255 now is an out-of-range label (dropped too).
    np.testing.assert_array_equal(
        confusion_matrix(PRED, LABEL, 3, ignore_index=2), [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]]
    )


def test_out_of_range_prediction_counts_in_label_only():
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 255, 1, 1])
    cm = confusion_matrix(pred, label, 2)
    np.testing.assert_array_equal(cm, [[1, 0, 1], [0, 2, 0]])
    a = areas(cm)
    np.testing.assert_array_equal(a.label, [2, 2])
    np.testing.assert_array_equal(a.pred, [1, 2])
    np.testing.assert_array_equal(a.union, [2, 2])
    r = compute_metrics(cm, ["x", "y"])
    assert r["aAcc"] == pytest.approx(75.0)
    assert_close(per_class(r, "Recall"), [50, 100])
    assert_close(per_class(r, "Precision"), [100, 100])
    assert_close(per_class(r, "IoU"), [50, 100])


def test_absent_and_predicted_only_classes():
    # Class 2 is predicted but absent from labels; class 3 appears nowhere.
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    cm = confusion_matrix(pred, label, 4)
    r = compute_metrics(cm, ["a", "b", "c", "d"])
    assert_close(per_class(r, "IoU"), [50, 100, 0, NAN])
    assert_close(per_class(r, "Acc"), [50, 100, NAN, NAN])
    assert_close(per_class(r, "Precision"), [100, 100, 0, NAN])
    assert_close(per_class(r, "Recall"), [50, 100, NAN, NAN])
    assert_close(per_class(r, "Fscore"), [200 / 3, 100, NAN, NAN])
    assert r["mIoU"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)  # class d left out, class c counts as 0
    assert r["mAcc"] == pytest.approx(100 * (0.5 + 1) / 2)  # classes c and d left out
    assert r["mFscore"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert r["mPrecision"] == pytest.approx(100 * 2 / 3)


def test_fscore_quirk_zero_intersection_is_nan():
    # Classes 0 and 1 are swapped: P = R = 0 with P > 0 and L > 0, so mmseg's F = 0 / 0 = NaN.
    label = np.array([0, 1, 2, 2])
    pred = np.array([1, 0, 2, 2])
    per = per_class_metrics(confusion_matrix(pred, label, 3))
    assert_close(per["Precision"], [0, 0, 1])
    assert_close(per["Recall"], [0, 0, 1])
    assert_close(per["Fscore"], [NAN, NAN, 1])
    r = compute_metrics(confusion_matrix(pred, label, 3), NAMES)
    assert r["mFscore"] == pytest.approx(100.0)  # only class c is defined
    assert r["mIoU"] == pytest.approx(100 / 3)  # whereas IoU 0 counts
    # All classes NaN: the mean is NaN, without a warning.
    all_nan = compute_metrics(confusion_matrix(np.array([1, 0]), np.array([0, 1]), 2), ["x", "y"])
    assert math.isnan(all_nan["mFscore"]) and all_nan["mIoU"] == 0.0


def test_summed_over_set_not_averaged_per_image():
    label_a, pred_a = np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64)
    label_b, pred_b = np.array([1, 1]), np.array([0, 1])
    names = ["x", "y"]
    cm_a, cm_b = confusion_matrix(pred_a, label_a, 2), confusion_matrix(pred_b, label_b, 2)
    miou_a, miou_b = compute_metrics(cm_a, names)["mIoU"], compute_metrics(cm_b, names)["mIoU"]
    assert (miou_a, miou_b) == (pytest.approx(100.0), pytest.approx(25.0))

    summed = compute_metrics(cm_a + cm_b, names)
    concat = compute_metrics(
        confusion_matrix(np.concatenate([pred_a, pred_b]), np.concatenate([label_a, label_b]), 2), names
    )
    assert summed == concat
    assert summed["mIoU"] == pytest.approx(100 * (4 / 5 + 1 / 2) / 2)  # 65
    assert summed["mIoU"] != pytest.approx((miou_a + miou_b) / 2)  # 62.5

    acc = RunningConfusion(2)
    np.testing.assert_array_equal(acc.update(pred_a, label_a), cm_a)
    acc.add(cm_b)
    np.testing.assert_array_equal(acc.matrix, cm_a + cm_b)
    assert acc.metrics(names) == summed


def test_reduced_zero_label():
    raw = np.array([[0, 1, 2], [3, 1, 0]], dtype=np.uint8)  # 0 = "other", classes are 1..3
    lab = raw.copy()
    lab[lab == 0] = 255
    lab = lab - 1
    lab[lab == 254] = 255
    np.testing.assert_array_equal(lab, [[255, 0, 1], [2, 0, 255]])
    pred = np.array([[2, 0, 1], [2, 1, 0]])
    np.testing.assert_array_equal(confusion_matrix(pred, lab, 3), [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])


def test_out_of_range_label_is_dropped():
    # Label 7 with K = 3 is neither a class nor ignore_index: the pixel is dropped entirely here
    # (mmseg would still count its prediction in area_pred; readers report such labels instead).
    cm = confusion_matrix(np.array([1, 1]), np.array([7, 1]), 3)
    np.testing.assert_array_equal(cm, [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])


def test_bad_inputs():
    with pytest.raises(InputError, match=r"\(2, 3\).*\(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), dtype=int), np.zeros((3, 2), dtype=int), 3)
    for k in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="num_classes"):
            confusion_matrix(np.zeros(2, dtype=int), np.zeros(2, dtype=int), k)
    with pytest.raises(InputError, match="num_classes"):
        RunningConfusion(0)
    with pytest.raises(InputError, match="integer"):
        confusion_matrix(np.zeros(2), np.zeros(2, dtype=int), 3)
    with pytest.raises(InputError, match="shape"):
        compute_metrics(np.zeros((3, 3), dtype=np.int64), NAMES)
    with pytest.raises(InputError, match="2 class names"):
        compute_metrics(np.zeros((3, 4), dtype=np.int64), ["a", "b"])
    with pytest.raises(InputError, match="distinct"):
        compute_metrics(np.zeros((2, 3), dtype=np.int64), ["a", "a"])
    with pytest.raises(InputError, match="shape"):
        RunningConfusion(3).add(np.zeros((2, 3), dtype=np.int64))
    assert set(KEYS) == set(compute_metrics(np.ones((3, 4), dtype=np.int64), NAMES)["per_class"]["a"])
