"""Semantic segmentation metrics with the exact semantics of mmsegmentation's ``IoUMetric``.

Reference: mmseg 1.x ``mmseg/evaluation/metrics/iou_metric.py`` (``intersect_and_union`` and
``total_area_to_metrics``). Per image, pixels whose label is ``ignore_index`` are dropped and four
per-class histograms are taken over ``[0, K)``; values outside that range fall in no bin. The
histograms are summed over the whole set (not averaged per image) and the metrics come from the sums.

Here each image is stored as a ``[K, K + 1]`` int64 confusion matrix (rows: true class, columns:
predicted class, last column: predictions outside ``[0, K)``). Matrices add across images and
processes, can be saved per image, and give back mmseg's four histograms exactly (see :func:`areas`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovearth.errors import InputError

METRIC_NAMES = ("IoU", "Acc", "Fscore", "Precision", "Recall")


def _check_num_classes(num_classes: Any) -> int:
    """Return ``num_classes`` as an int, or raise InputError unless it is a positive integer."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}.")
    return int(num_classes)


def _as_int_array(x: Any, name: str) -> np.ndarray:
    """Return ``x`` (numpy array or torch tensor) as a numpy array of an integer dtype."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise InputError(f"{name} must hold integer class indices, got dtype {arr.dtype}.")
    return arr


def confusion_matrix(pred: Any, label: Any, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Count (true class, predicted class) pairs of one image.

    ``cm[t, p]`` is the number of pixels with label ``t`` and prediction ``p`` for ``t, p`` in
    ``[0, K)``; ``cm[t, K]`` counts pixels with label ``t`` whose prediction is outside ``[0, K)``
    (e.g. 255). Pixels whose label equals ``ignore_index`` are dropped, as in mmseg. Pixels whose label
    is outside ``[0, K)`` but is not ``ignore_index`` are dropped too (the dataset reader reports them).

    Note:
        This last rule is the one place where we differ from mmseg: there such a pixel still counts
        in ``area_pred_label`` of its predicted class (so it lowers that class's IoU and precision).
        With labels restricted to ``[0, K)`` plus ``ignore_index`` the results are identical.

    Args:
        pred: Predicted class indices, any shape, numpy array or torch tensor of an integer dtype.
        label: Ground-truth class indices, same shape as ``pred``.
        num_classes: Number of classes ``K`` (at least 1).
        ignore_index: Label value to drop from evaluation.

    Returns:
        int64 array of shape ``[K, K + 1]``.

    Raises:
        InputError: If ``num_classes < 1``, the shapes differ, or a dtype is not an integer type.

    """
    k = _check_num_classes(num_classes)
    p = _as_int_array(pred, "pred")
    t = _as_int_array(label, "label")
    if p.shape != t.shape:
        raise InputError(
            f"Prediction shape {p.shape} does not match label shape {t.shape}; they must be equal."
        )
    p = p.reshape(-1).astype(np.int64, copy=False)
    t = t.reshape(-1).astype(np.int64, copy=False)
    keep = (t != ignore_index) & (t >= 0) & (t < k)
    p, t = p[keep], t[keep]
    p = np.where((p >= 0) & (p < k), p, k)
    counts = np.bincount(t * (k + 1) + p, minlength=k * (k + 1))
    return counts.reshape(k, k + 1).astype(np.int64, copy=False)


@dataclass(frozen=True)
class Areas:
    """mmseg's four per-class pixel histograms, each an int64 vector of shape ``[K]``.

    Attributes:
        intersect: Pixels with ``pred == label == c``.
        union: ``pred + label - intersect``.
        pred: Pixels predicted as ``c`` (among non-ignored pixels).
        label: Pixels labelled ``c`` (whatever their prediction, even outside ``[0, K)``).

    """

    intersect: np.ndarray
    union: np.ndarray
    pred: np.ndarray
    label: np.ndarray


def _check_matrix(cm: Any) -> np.ndarray:
    """Return ``cm`` as an int64 ``[K, K + 1]`` array or raise InputError."""
    arr = np.asarray(cm)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != arr.shape[0] + 1:
        raise InputError(f"A confusion matrix must have shape [K, K + 1] with K >= 1, got {arr.shape}.")
    if arr.dtype.kind not in "iu" or (arr < 0).any():
        raise InputError("A confusion matrix must hold non-negative integer counts.")
    return arr.astype(np.int64, copy=False)


def areas(cm: Any) -> Areas:
    """Recover mmseg's ``intersect_and_union`` histograms from a confusion matrix.

    With ``cm`` of shape ``[K, K + 1]``: ``intersect = diag(cm[:, :K])``, ``label = cm.sum(1)``,
    ``pred = cm[:, :K].sum(0)`` and ``union = pred + label - intersect``. mmseg holds these as float32
    (from ``torch.histc``); we keep exact int64 counts.

    Args:
        cm: Confusion matrix of shape ``[K, K + 1]`` (one image or a sum over many).

    Returns:
        The four ``[K]`` vectors.

    """
    m = _check_matrix(cm)
    k = m.shape[0]
    intersect = np.diagonal(m[:, :k]).copy()
    label = m.sum(axis=1)
    pred = m[:, :k].sum(axis=0)
    return Areas(intersect=intersect, union=pred + label - intersect, pred=pred, label=label)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` in float64 with ``0 / 0 = NaN`` and no warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)


def _nanmean_percent(values: np.ndarray) -> float:
    """Mean of the non-NaN entries times 100, NaN if all are NaN (no warning)."""
    finite = values[~np.isnan(values)]
    return float(100.0 * finite.mean()) if finite.size else float("nan")


def per_class_metrics(cm: Any, beta: float = 1.0) -> dict[str, np.ndarray]:
    """Per-class metrics as fractions in [0, 1] (NaN where undefined), each of shape ``[K]``.

    ``IoU = I / U``, ``Acc = Recall = I / L``, ``Precision = I / P`` and
    ``Fscore = (1 + beta^2) * Precision * Recall / (beta^2 * Precision + Recall)``, with ``I, U, P, L``
    the :func:`areas` vectors and ``0 / 0 = NaN``.

    Note:
        mmseg quirk, reproduced on purpose: a class with ``I = 0`` has ``Fscore = NaN`` even when
        ``P > 0`` and ``L > 0``, because then ``Precision = Recall = 0`` and the formula is ``0 / 0``.
        Such a class is left out of ``mFscore`` whereas its IoU of 0 counts in ``mIoU``.

    Args:
        cm: Confusion matrix of shape ``[K, K + 1]``.
        beta: Weight of recall in the F-score (mmseg's default is 1).

    Returns:
        Dict with keys ``"IoU", "Acc", "Fscore", "Precision", "Recall"``.

    """
    a = areas(cm)
    precision = _ratio(a.intersect, a.pred)
    recall = _ratio(a.intersect, a.label)
    b2 = float(beta) ** 2
    fscore = _ratio((1.0 + b2) * precision * recall, b2 * precision + recall)
    return {
        "IoU": _ratio(a.intersect, a.union),
        "Acc": recall.copy(),
        "Fscore": fscore,
        "Precision": precision,
        "Recall": recall,
    }


def compute_metrics(cm: Any, class_names: Sequence[str], beta: float = 1.0) -> dict[str, Any]:
    """Summary and per-class metrics in percent, like mmseg's ``IoUMetric.compute_metrics``.

    ``aAcc = 100 * sum(I) / sum(L)``; ``mIoU, mAcc, mFscore, mPrecision, mRecall`` are ``100 *``
    the NaN-ignoring mean over classes of the :func:`per_class_metrics` values. So a class absent from
    both prediction and labels (IoU NaN) is left out of ``mIoU``, while a class predicted but absent
    from the labels counts in ``mIoU`` with IoU 0 and is left out of ``mAcc`` (Acc NaN).

    mmseg rounds these numbers to 2 decimals (and computes them in float32); that rounding is for
    display only, so we return full float64 precision. mmseg's default ``iou_metrics=['mIoU']``
    reports only ``aAcc, mIoU, mAcc``; the F-score family matches ``iou_metrics=['mIoU', 'mFscore']``.

    Args:
        cm: Confusion matrix of shape ``[K, K + 1]``, summed over the evaluated images.
        class_names: ``K`` distinct class names, in class-index order.
        beta: Weight of recall in the F-score.

    Returns:
        JSON-friendly dict with Python floats ``"aAcc", "mIoU", "mAcc", "mFscore", "mPrecision",
        "mRecall"`` (NaN only when undefined for every class), the int ``"num_pixels"`` (``sum(L)``)
        and ``"per_class": {name: {"IoU", "Acc", "Fscore", "Precision", "Recall"}}`` (NaN if undefined).

    Raises:
        InputError: If the matrix is malformed or ``class_names`` does not hold ``K`` distinct names.

    """
    m = _check_matrix(cm)
    names = [str(n) for n in class_names]
    if len(names) != m.shape[0]:
        raise InputError(f"Got {len(names)} class names for a confusion matrix of {m.shape[0]} classes.")
    if len(set(names)) != len(names):
        raise InputError(f"Class names must be distinct, got {names}.")
    a = areas(m)
    per = per_class_metrics(m, beta=beta)
    num_pixels = int(a.label.sum())
    out: dict[str, Any] = {"aAcc": float(100.0 * _ratio(a.intersect.sum(), num_pixels))}
    for key in METRIC_NAMES:
        out["m" + key] = _nanmean_percent(per[key])
    out["num_pixels"] = num_pixels
    out["per_class"] = {
        name: {key: float(100.0 * per[key][i]) for key in METRIC_NAMES} for i, name in enumerate(names)
    }
    return out


class RunningConfusion:
    """Accumulate confusion matrices over a data set (one process or several).

    Example:
        >>> acc = RunningConfusion(num_classes=3)
        >>> acc.update(pred, label)  # doctest: +SKIP
        >>> acc.metrics(["road", "tree", "water"])  # doctest: +SKIP

    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = ignore_index
        self._cm = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the summed ``[K, K + 1]`` int64 matrix."""
        return self._cm.copy()

    def update(self, pred: Any, label: Any) -> np.ndarray:
        """Add one image and return its own confusion matrix (e.g. to save it for resuming)."""
        cm = confusion_matrix(pred, label, self.num_classes, self.ignore_index)
        self._cm += cm
        return cm

    def add(self, cm: Any) -> None:
        """Add a matrix computed elsewhere (a saved image, another process)."""
        m = _check_matrix(cm)
        if m.shape != self._cm.shape:
            raise InputError(f"Cannot add a confusion matrix of shape {m.shape} to one of {self._cm.shape}.")
        self._cm += m

    def metrics(self, class_names: Sequence[str], beta: float = 1.0) -> dict[str, Any]:
        """Metrics of everything added so far (see :func:`compute_metrics`)."""
        return compute_metrics(self._cm, class_names, beta=beta)
