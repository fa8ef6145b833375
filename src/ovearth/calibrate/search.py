"""The search of ``ovearth calibrate``: names per class and per-class thresholds, on cached maps.

Given, for one confidence threshold, every candidate name's logit at ``N`` labelled pixels
(``maps [P, N]``, what :meth:`Segmentor.name_logits` gives), a *configuration* is a
non-empty subset ``S_k`` of each class's candidates and a threshold ``t_k`` per class.
Its labels follow SegEarth-OV3's rules exactly (:func:`ovearth.segment.fusion.finish`):

* ``C_k = max_{n in S_k} maps[n]`` (the class logit: max over its names);
* ``label = argmax_k C_k`` (the first on ties), then ``bg_idx`` where ``C_label < t_label``
  (a float32 comparison, as the segmentor's);
* pixels without data are predicted "no class" (255).

The objective is mmsegmentation's mIoU over the pixels (IoU per class from the summed
confusion matrix, NaN classes left out), or with ``objective="class-iou"`` the IoU of the
class being changed. The search is greedy coordinate ascent from the protocol's own
configuration: for each class in turn, (a) forward/backward selection of names - try
adding each unused candidate and removing each chosen name (never the last), apply the
best move if it raises the objective, repeat; (b) choose that class's threshold (not for
``bg_idx``, whose threshold cannot change a label) and keep the best. Rounds over all
classes repeat until one changes nothing. Only strict improvements are taken (ties keep
the current choice; among thresholds, the lowest of the best), so the result is
deterministic. The class logits are a max, so a move costs one ``[N]`` max and one
``[K, N]`` argmax, not a model run.

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
from dataclasses import dataclass, field

import numpy as np

OBJECTIVES = ("miou", "class-iou")

#: Smallest objective change that counts as an improvement (mIoU in [0, 1]).
MIN_GAIN = 1e-9

#: Default cap on the cuts of one class scored in one pass (see :func:`best_cut`).
MAX_CUTS = 1024

#: Smallest ``max_cuts`` (a bracket of quantile cuts must shrink at each pass).
MIN_CUTS = 8

#: Most decimal places tried for a cut's threshold (see :func:`cut_thresholds`).
MAX_PLACES = 12


@dataclass(frozen=True)
class Config:
    """One choice of names and thresholds.

    Attributes:
        names: per class, the chosen candidates (indices into the pool's ``P`` names).
        thresholds: per class, its ``prob_thd``.

    """

    names: tuple[tuple[int, ...], ...]
    thresholds: tuple[float, ...]


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


@dataclass
class Problem:
    """Labelled pixels and every candidate's logit there, for one confidence threshold.

    Numpy throughout: the search runs many small steps, which numpy does without
    thread-pool overhead. Exactness: labels are :func:`ovearth.segment.fusion.labels_from_logits`'s
    (first maximum on ties, float32 comparisons with the thresholds), tested equal.

    Attributes:
        maps: ``[P, N]`` float32 per-name logits.
        target: ``[N]`` int64 true class (pixels with ignored labels already removed).
        nodata: ``[N]`` bool, True where the image had no data (predicted 255).
        name_class: the class of each of the ``P`` names.
        num_classes: ``K``.
        bg_idx: the label of low-score pixels.

    """

    maps: np.ndarray
    target: np.ndarray
    nodata: np.ndarray
    name_class: list[int]
    num_classes: int
    bg_idx: int
    _rows: dict = field(default_factory=dict, repr=False)
    _others: dict = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        """``N``, the number of pixels."""
        return int(self.target.shape[0])

    def select(self, keep: np.ndarray) -> Problem:
        """The problem on the pixels where ``keep [N]`` is True."""
        return Problem(
            np.ascontiguousarray(self.maps[:, keep]),
            self.target[keep],
            self.nodata[keep],
            self.name_class,
            self.num_classes,
            self.bg_idx,
        )

    def class_logit(self, chosen: tuple[int, ...]) -> np.ndarray:
        """``[N]``: the max over the ``chosen`` names (cached)."""
        row = self._rows.get(chosen)
        if row is None:
            if len(self._rows) > 256:
                self._rows.clear()
            row = self._rows[chosen] = self.maps[list(chosen)].max(axis=0)
        return row

    def best(self, names: Sequence[Sequence[int]], k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(best [N], argmax [N])`` over the classes' logits (the first class on ties).

        With ``k``, the other classes' best is cached, so that trying names of class ``k``
        costs ``O(N)``: class ``k`` wins where it is larger, or equal and earlier.
        """
        if k is None:
            logits = np.stack([self.class_logit(tuple(chosen)) for chosen in names])
            labels = logits.argmax(axis=0)
            return np.take_along_axis(logits, labels[None], axis=0)[0], labels
        key = (k, tuple(tuple(c) for i, c in enumerate(names) if i != k))
        others = self._others.get(key)
        if others is None:
            if len(self._others) > 16:
                self._others.clear()
            rest = [i for i in range(self.num_classes) if i != k]
            if rest:
                logits = np.stack([self.class_logit(tuple(names[i])) for i in rest])
                which = logits.argmax(axis=0)
                others = (np.take_along_axis(logits, which[None], axis=0)[0], np.asarray(rest)[which])
            else:
                others = (np.full(self.target.shape, -np.inf, np.float32), np.full(self.target.shape, k + 1))
            self._others[key] = others
        best_other, label_other = others
        mine = self.class_logit(tuple(names[k]))
        wins = (mine > best_other) | ((mine == best_other) & (k < label_other))
        return np.where(wins, mine, best_other), np.where(wins, k, label_other)

    def confusion(self, config: Config, k: int | None = None) -> np.ndarray:
        """``[K, K + 1]`` confusion matrix of ``config`` (as :func:`ovearth.metrics.confusion_matrix`).

        ``k``: the class being changed (a faster path with the same result, see :meth:`best`).
        """
        best, labels = self.best(config.names, k)
        thresholds = np.asarray(config.thresholds, np.float32)
        labels = np.where(best < thresholds[labels], self.bg_idx, labels)
        n = self.num_classes
        # bg_idx may be 254 (unclassified): outside [0, K) like nodata, the last column
        labels = np.where((labels >= 0) & (labels < n) & ~self.nodata, labels, n)
        counts = np.bincount(self.target * (n + 1) + labels, minlength=n * (n + 1))
        return counts.reshape(n, n + 1).astype(np.int64)

    def sweep(self, config: Config, k: int) -> ThresholdSweep:
        """Class ``k``'s threshold sweep for ``config``'s names and other thresholds.

        The pixels ``k`` wins (not nodata) are sorted once; the rest are counted into
        :attr:`ThresholdSweep.base`.
        """
        n = self.num_classes
        best, labels = self.best(config.names, k)
        thresholds = np.asarray(config.thresholds, np.float32)
        mine = (labels == k) & ~self.nodata
        final = np.where(best < thresholds[labels], self.bg_idx, labels)
        final = np.where((final >= 0) & (final < n) & ~self.nodata & ~mine, final, n)
        rest = self.target[~mine] * (n + 1) + final[~mine]
        base = np.bincount(rest, minlength=n * (n + 1)).reshape(n, n + 1).astype(np.int64)
        low = self.bg_idx if 0 <= self.bg_idx < n else n  # where k's low pixels go
        values, target = best[mine], self.target[mine]
        order = np.argsort(values, kind="stable")
        values, target = values[order], target[order]
        won = [values[target == c] for c in range(n)]
        distinct = values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values
        return ThresholdSweep(k, low, base, won, distinct)

    def threshold_sweep(self, config: Config, k: int, grid: Sequence[float]) -> list[np.ndarray]:
        """The confusion matrix of ``config`` with class ``k``'s threshold set to each of ``grid``."""
        return list(self.sweep(config, k).matrices(grid))


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


@dataclass
class Step:
    """One accepted move of the search (for the record)."""

    kind: str  # "add", "remove" or "threshold"
    class_index: int
    value: str | float
    objective: float


@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        config: the final configuration.
        objective: its objective on the search pixels (in [0, 1]).
        start_objective: the starting configuration's.
        steps: the accepted moves, in order.
        evaluations: how many configurations were scored.

    """

    config: Config
    objective: float
    start_objective: float
    steps: list[Step]
    evaluations: int


def search(
    problem: Problem,
    start: Config,
    pool: Sequence[Sequence[int]],
    threshold_grid: Sequence[float] | None = None,
    objective: str = "miou",
    max_rounds: int = 10,
    names: Sequence[str] | None = None,
    max_cuts: int = MAX_CUTS,
) -> SearchResult:
    """Greedy coordinate ascent over names and per-class thresholds (see the module docstring).

    Args:
        problem: the pixels and maps.
        start: the starting configuration (the protocol's).
        pool: per class, the candidate name indices (``start.names[k]`` among them).
        threshold_grid: the thresholds tried for each class; None: the cuts of the
            class's logits (:func:`best_cut`).
        objective: ``"miou"`` or ``"class-iou"``.
        max_rounds: at most this many rounds over the classes.
        names: the pool's names, for the record of steps (indices when None).
        max_cuts: with ``threshold_grid=None``, the most cuts scored in one pass.

    Returns:
        The :class:`SearchResult`.

    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if max_cuts < MIN_CUTS:
        raise ValueError(f"max_cuts must be at least {MIN_CUTS}, got {max_cuts}")
    counter = [0]

    def score(config: Config, k: int) -> float:
        counter[0] += 1
        return float(objective_values(problem.confusion(config, k), objective, k))

    label = (lambda i: names[i]) if names is not None else str
    config = start
    steps: list[Step] = []
    start_value = mean_iou(problem.confusion(start))
    for _ in range(max_rounds):
        changed = False
        for k in range(problem.num_classes):
            current = score(config, k)
            while True:  # forward / backward selection of class k's names
                chosen = config.names[k]
                moves = [("add", n, (*chosen, n)) for n in pool[k] if n not in chosen]
                if len(chosen) > 1:
                    moves += [("remove", n, tuple(c for c in chosen if c != n)) for n in chosen]
                best_move, best_value = None, current
                for kind, n, subset in moves:
                    trial = _with_names(config, k, tuple(sorted(subset)))
                    value = score(trial, k)
                    if value > best_value + MIN_GAIN:
                        best_move, best_value = (kind, n, trial), value
                if best_move is None:
                    break
                kind, n, config = best_move
                current = best_value
                steps.append(Step(kind, k, label(n), mean_iou(problem.confusion(config))))
                changed = True
            if k == problem.bg_idx:
                continue
            found = _best_threshold(
                problem.sweep(config, k), config.thresholds[k], threshold_grid, objective, max_cuts
            )
            if found is not None:
                t, value, evaluations = found
                counter[0] += evaluations
                if value > current + MIN_GAIN:
                    config = _with_threshold(config, k, t)
                    steps.append(Step("threshold", k, float(t), mean_iou(problem.confusion(config))))
                    changed = True
        if not changed:
            break
    final = mean_iou(problem.confusion(config))
    return SearchResult(config, final, start_value, steps, counter[0])


def _best_threshold(
    sweep: ThresholdSweep,
    current: float,
    grid: Sequence[float] | None,
    objective: str,
    max_cuts: int,
) -> tuple[float, float, int] | None:
    """``(threshold, objective, evaluations)``: the best of the grid (the lowest on ties) or cut."""

    def score(matrices: np.ndarray) -> np.ndarray:
        return objective_values(matrices, objective, sweep.k)

    if grid is None:
        return best_cut(sweep, score, max_cuts)
    tried = [t for t in grid if t != current]
    if not tried:
        return None
    values = score(sweep.matrices(tried))
    j = int(np.argmax(values))
    return float(tried[j]), float(values[j]), len(tried)


def _with_names(config: Config, k: int, names: tuple[int, ...]) -> Config:
    return Config(config.names[:k] + (names,) + config.names[k + 1 :], config.thresholds)


def _with_threshold(config: Config, k: int, threshold: float) -> Config:
    return Config(config.names, config.thresholds[:k] + (float(threshold),) + config.thresholds[k + 1 :])
