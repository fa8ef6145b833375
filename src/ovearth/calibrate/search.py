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
``bg_idx``, whose threshold cannot change a label; the data's cut points by default, see
:mod:`.cuts`) and keep the best. Rounds over all
classes repeat until one changes nothing. Only strict improvements are taken (ties keep
the current choice; among thresholds, the lowest of the best), so the result is
deterministic. The class logits are a max, so a move costs one ``[N]`` max and one
``[K, N]`` argmax, not a model run.

"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .cuts import (  # noqa: F401 (MAX_CUTS, MIN_CUTS, mean_iou: part of this module's API)
    MAX_CUTS,
    MIN_CUTS,
    ThresholdSweep,
    best_cut,
    cut_thresholds,
    mean_iou,
    mean_ious,
    objective_values,
)

OBJECTIVES = ("miou", "class-iou")

#: Smallest objective change that counts as an improvement (mIoU in [0, 1]).
MIN_GAIN = 1e-9


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
