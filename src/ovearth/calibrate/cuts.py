"""Class thresholds of calibrate's search: the data's cut points, scored in one pass.

**Thresholds.** Only the pixels that class ``k`` wins (``label = k`` before thresholds)
depend on ``t_k``, and only through which of their sorted distinct logits
``u_0 < u_1 < ... < u_{m-1}`` (float32) fall below it: ``t_k`` has ``m + 1`` outcomes,
the *cuts* ``i = 0..m`` (cut ``i`` rejects ``u_0..u_{i-1}`` and keeps ``u_i..``). By
default (``threshold_grid=None``) every cut is scored, which is the exact optimum over
the sampled pixels. Cut ``i`` is written as a threshold ``t`` with
``u_{i-1} < float32(t) <= u_i`` (:func:`cut_thresholds`): the decimal with the fewest
places within a quarter of the gap of its midpoint (so held-out pixels in the gap are
split evenly, and the threshold reads well), ``0.0`` for cut 0 (keep all) and ``1.0``
for cut ``m`` (reject all). Any segmentor run with that threshold gives the searched
labels exactly. A class with more than ``max_cuts`` distinct logits is scored on
``max_cuts`` cuts evenly spaced in rank (quantiles of its distinct logits), then on the
cuts between the best one's two neighbours, and so on until a bracket holds at most
``max_cuts`` cuts, scored all (:func:`best_cut`): the exact optimum when the objective
has one peak in the threshold, at most a few times ``max_cuts`` scores in any case. A
fixed ``threshold_grid`` is scored as given instead. Either way a class's candidates are
scored in one pass (:class:`ThresholdSweep`): its pixels' logits are sorted once per
true class and ``searchsorted`` counts those below each threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Default cap on the cuts of one class scored in one pass (see :func:`best_cut`).
MAX_CUTS = 1024

#: Smallest ``max_cuts`` (a bracket of quantile cuts must shrink at each pass).
MIN_CUTS = 8

#: Most decimal places tried for a cut's threshold (see :func:`cut_thresholds`).
MAX_PLACES = 12


@dataclass
class ThresholdSweep:
    """Class ``k``'s threshold against the confusion matrix, the names being fixed.

    Attributes:
        k: the class whose threshold varies.
        low: the column its rejected pixels go to (``bg_idx``, or ``K`` when that is no class).
        base: ``[K, K + 1]`` int64 counts of the pixels ``k`` does not win (they do not
            depend on ``t_k``).
        won: per true class ``c``, the sorted float32 logits of the pixels ``k`` wins.
        values: the sorted distinct float32 logits of every pixel ``k`` wins (``u`` of the
            module docstring).

    """

    k: int
    low: int
    base: np.ndarray
    won: list[np.ndarray]
    values: np.ndarray

    def matrices(self, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
        """``[T, K, K + 1]``: the confusion matrix with ``t_k`` set to each of ``thresholds``.

        Per true class ``c``, ``below = #{won[c] < float32(t)}`` pixels go to ``low`` and
        the rest to ``k`` (float32 comparisons, as :meth:`Problem.confusion`; tested equal).
        """
        t = np.asarray(thresholds, np.float64).astype(np.float32)
        out = np.repeat(self.base[None], len(t), axis=0)
        for c, won in enumerate(self.won):
            if len(won):
                below = np.searchsorted(won, t, side="left")
                out[:, c, self.low] += below
                out[:, c, self.k] += len(won) - below
        return out


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """``[..., K]`` IoU in [0, 1] of ``[..., K, K + 1]`` matrices, as mmseg's.

    ``intersect / (label + pred - intersect)`` as :func:`ovearth.metrics.areas`; NaN where
    a class is neither labelled nor predicted.
    """
    n = matrix.shape[-2]
    square = matrix[..., :n]
    intersect = np.diagonal(square, axis1=-2, axis2=-1)
    union = square.sum(axis=-2) + matrix.sum(axis=-1) - intersect
    with np.errstate(invalid="ignore", divide="ignore"):
        return intersect / union.astype(np.float64)


def mean_ious(matrices: np.ndarray) -> np.ndarray:
    """``[...]``: mmseg's mIoU in [0, 1] of each matrix, NaN classes left out (0 if all are)."""
    iou = iou_per_class(matrices)
    finite = np.isfinite(iou)
    count = finite.sum(axis=-1)
    total = np.where(finite, iou, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def mean_iou(matrix: np.ndarray) -> float:
    """The mIoU in [0, 1] as mmseg's: the mean of the classes' IoU, NaN classes left out (0 if all are)."""
    return float(mean_ious(np.asarray(matrix)))


def objective_values(matrices: np.ndarray, objective: str, k: int) -> np.ndarray:
    """``[...]``: the objective of each matrix: mIoU, or class ``k``'s IoU (0 when NaN)."""
    if objective == "class-iou":
        value = iou_per_class(matrices)[..., k]
        return np.where(np.isfinite(value), value, 0.0)
    return mean_ious(matrices)


def cut_thresholds(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """float64 thresholds of the ``cuts`` (indices ``0..m``) between sorted distinct float32 ``values``.

    Cut ``i`` keeps ``values[i:]`` and rejects ``values[:i]``: its threshold ``t`` has
    ``values[i - 1] < float32(t) <= values[i]``. Cut 0 is ``0.0`` (keep all) and cut ``m``
    is ``1.0`` (reject all), the thresholds' range being [0, 1]. An inner cut is the
    decimal with the fewest places (at most :data:`MAX_PLACES`) whose distance to the
    gap's midpoint is at most a quarter of the gap; else the midpoint, else ``values[i]``
    itself, whichever first meets the rule (every inner cut does: ``values[i]`` meets it).
    """
    m = len(values)
    cuts = np.asarray(cuts, np.int64)
    out = np.empty(len(cuts), np.float64)
    out[cuts == 0] = 0.0
    out[cuts >= m] = 1.0
    inner = (cuts > 0) & (cuts < m)
    lo32, hi32 = values[cuts[inner] - 1], values[cuts[inner]]
    lo, hi = lo32.astype(np.float64), hi32.astype(np.float64)
    mid, slack = (lo + hi) / 2, (hi - lo) / 4

    def fits(t: np.ndarray) -> np.ndarray:
        t32 = t.astype(np.float32)
        return (t32 > lo32) & (t32 <= hi32)

    chosen = np.full(len(mid), np.nan)
    for places in range(MAX_PLACES + 1):
        decimal = np.round(mid, places)
        ok = np.isnan(chosen) & (np.abs(decimal - mid) <= slack) & fits(decimal)
        chosen[ok] = decimal[ok]
    rest = np.isnan(chosen)
    chosen[rest] = np.where(fits(mid), mid, hi)[rest]
    out[inner] = chosen
    return out


def best_cut(
    sweep: ThresholdSweep, score: Callable[[np.ndarray], np.ndarray], max_cuts: int = MAX_CUTS
) -> tuple[float, float, int] | None:
    """``(threshold, objective, evaluations)`` of the best cut of ``sweep.values``; None if there are none.

    With ``m + 1 <= max_cuts`` cuts, all are scored: the exact optimum. Otherwise
    ``max_cuts`` cuts evenly spaced in ``0..m`` are scored, the bracket between the best
    one's neighbours is scored the same way, and so on until a bracket holds at most
    ``max_cuts`` cuts, all scored. Ties: the lowest threshold of the last pass.

    Args:
        sweep: class ``k``'s sweep (:meth:`Problem.sweep`).
        score: ``[T, K, K + 1]`` matrices -> ``[T]`` objective values.
        max_cuts: the most cuts scored in one pass (at least :data:`MIN_CUTS`).

    """
    if max_cuts < MIN_CUTS:
        raise ValueError(f"max_cuts must be at least {MIN_CUTS}, got {max_cuts}")
    m = len(sweep.values)
    if m == 0:
        return None
    lo, hi, evaluations = 0, m, 0
    while True:
        every = hi - lo + 1 <= max_cuts
        cuts = (
            np.arange(lo, hi + 1)
            if every
            else np.unique(np.linspace(lo, hi, max_cuts).round().astype(np.int64))
        )
        thresholds = cut_thresholds(sweep.values, cuts)
        values = score(sweep.matrices(thresholds))
        evaluations += len(cuts)
        j = int(np.argmax(values))  # the first best: the lowest threshold
        if every:
            return float(thresholds[j]), float(values[j]), evaluations
        lo, hi = int(cuts[max(j - 1, 0)]), int(cuts[min(j + 1, len(cuts) - 1)])
