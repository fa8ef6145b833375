"""The calibration search on arrays: exact labels and metrics, and known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovearth.calibrate.pool import build_pool, read_candidates
from ovearth.calibrate.search import (
    Config,
    Problem,
    best_cut,
    cut_thresholds,
    mean_iou,
    mean_ious,
    objective_values,
    search,
)
from ovearth.constants import UNCLASSIFIED_LABEL
from ovearth.data.protocols import load_protocol
from ovearth.errors import InputError
from ovearth.metrics import compute_metrics, confusion_matrix
from ovearth.segment.fusion import finish
from ovearth.segment.vocabulary import Vocabulary


def random_problem(seed: int, bg_idx: int = 0, levels: int = 6) -> tuple[Problem, list[int]]:
    """Maps quantised to a few levels (many ties), 4 classes of 1-3 names, some nodata."""
    rng = np.random.default_rng(seed)
    name_class = [0, 1, 1, 2, 2, 2, 3]
    n = 3000
    maps = (rng.integers(0, levels, (len(name_class), n)) / levels).astype(np.float32)
    target = rng.integers(0, 4, n).astype(np.int64)
    nodata = rng.random(n) < 0.05
    return Problem(maps, target, nodata, name_class, 4, bg_idx), name_class


def reference_matrix(problem: Problem, config: Config) -> np.ndarray:
    """The segmentor's own rules (fusion.finish) and the eval metric, on the same pixels."""
    names = [i for chosen in config.names for i in chosen]
    name_class = [k for k, chosen in enumerate(config.names) for _ in chosen]
    logits = torch.from_numpy(problem.maps[names])[:, None, :]  # [P', 1, N]
    _, labels = finish(
        logits, ~problem.nodata[None], name_class, problem.num_classes, config.thresholds, problem.bg_idx
    )
    return confusion_matrix(labels[0], problem.target, problem.num_classes)


@pytest.mark.parametrize("bg_idx", [0, UNCLASSIFIED_LABEL])
def test_confusion_equals_the_segmentor_rules_and_eval_metric(bg_idx):
    problem, _ = random_problem(1, bg_idx)
    rng = np.random.default_rng(2)
    pool = [[0], [1, 2], [3, 4, 5], [6]]
    for _ in range(30):
        names = tuple(tuple(sorted(rng.choice(p, rng.integers(1, len(p) + 1), replace=False))) for p in pool)
        thresholds = tuple(float(t) for t in rng.choice([0.0, 1 / 6, 0.3, 0.5, 2 / 3], 4))
        config = Config(names, thresholds)
        expected = reference_matrix(problem, config)
        assert np.array_equal(problem.confusion(config), expected)
        for k in range(4):  # the fast path for a class being changed
            assert np.array_equal(problem.confusion(config, k), expected)


@pytest.mark.parametrize("bg_idx", [0, UNCLASSIFIED_LABEL])
def test_threshold_sweep_equals_one_confusion_per_threshold(bg_idx):
    problem, _ = random_problem(4, bg_idx)
    config = Config(((0,), (1, 2), (3, 5), (6,)), (0.2, 0.4, 1 / 3, 0.5))
    grid = [0.0, 1 / 6, 0.2, 1 / 3, 0.5, 2 / 3, 1.0]
    for k in range(4):
        swept = problem.threshold_sweep(config, k, grid)
        for t, matrix in zip(grid, swept, strict=True):
            thresholds = config.thresholds[:k] + (t,) + config.thresholds[k + 1 :]
            assert np.array_equal(matrix, reference_matrix(problem, Config(config.names, thresholds))), (k, t)


def test_mean_iou_is_the_eval_mIoU():
    problem, _ = random_problem(3)
    matrix = problem.confusion(Config(((0,), (1,), (3,), (6,)), (0.2,) * 4))
    matrix[3] = 0  # a class without labels: predicted pixels give IoU 0, as mmseg
    assert mean_iou(matrix) == pytest.approx(compute_metrics(matrix, list("abcd"))["mIoU"] / 100, abs=1e-12)


def planted_problem(
    thresholds: tuple[float, ...] = (0.5, 0.7, 0.6),
) -> tuple[Problem, Config, Config, list[list[int]]]:
    """Labels made by a known configuration from random maps."""
    rng = np.random.default_rng(7)
    name_class = [0, 1, 1, 1, 2, 2, 2]
    maps = rng.random((7, 20000)).astype(np.float32)
    truth = Config(((0,), (2, 3), (5,)), thresholds)
    problem = Problem(maps, np.zeros(20000, np.int64), np.zeros(20000, bool), name_class, 3, 0)
    best, argmax = problem.best(truth.names)
    target = np.where(best < np.asarray(truth.thresholds, np.float32)[argmax], 0, argmax)
    problem = Problem(maps, target.astype(np.int64), np.zeros(20000, bool), name_class, 3, 0)
    start = Config(((0,), (1,), (4,)), (0.5, 0.5, 0.5))
    return problem, truth, start, [[0], [1, 2, 3], [4, 5, 6]]


def test_search_recovers_a_planted_configuration():
    problem, truth, start, pool = planted_problem()
    grid = [round(0.05 * i, 2) for i in range(1, 20)]
    result = search(problem, start, pool, grid)
    assert result.config == truth
    assert result.objective == 1.0 and result.start_objective < 0.8
    assert [s.kind for s in result.steps].count("threshold") >= 2


def test_data_cuts_recover_thresholds_off_any_grid():
    """The default search (cut points) finds planted thresholds a coarse grid cannot hold."""
    truth_thresholds = (0.5, 0.7137, 0.6262)
    problem, truth, start, pool = planted_problem(truth_thresholds)
    result = search(problem, start, pool)
    assert result.config.names == truth.names and result.objective == 1.0
    found = result.config.thresholds
    assert found[0] == 0.5  # bg_idx's threshold is never searched
    assert all(abs(t - u) < 1e-3 for t, u in zip(found[1:], truth_thresholds[1:], strict=True)), found
    # a cap far below a class's ~6,000 distinct scores: quantile cuts, then refined to the same cut
    capped = search(problem, start, pool, max_cuts=8)
    assert capped.config == result.config and capped.evaluations < result.evaluations / 4
    coarse = search(problem, start, pool, [round(0.05 * i, 2) for i in range(1, 20)])
    assert coarse.objective < 0.999


def brute_force_cut(problem: Problem, config: Config, k: int, objective: str) -> float:
    """The best objective over every threshold that can matter: each distinct score, and 1."""
    best, labels = problem.best(config.names)
    values = np.unique(best[(labels == k) & ~problem.nodata])
    scores = []
    for t in [*map(float, values), 1.0]:
        trial = Config(config.names, config.thresholds[:k] + (t,) + config.thresholds[k + 1 :])
        scores.append(float(objective_values(problem.confusion(trial), objective, k)))
    return max(scores)


@pytest.mark.parametrize("objective", ["miou", "class-iou"])
@pytest.mark.parametrize("levels", [6, 1000, 10**6])
def test_best_cut_is_the_exact_optimum(objective, levels):
    problem, _ = random_problem(5, levels=levels)
    config = Config(((0,), (1, 2), (3, 5), (6,)), (0.2, 0.4, 1 / 3, 0.5))
    for k in (1, 2, 3):
        sweep = problem.sweep(config, k)
        t, value, evaluations = best_cut(sweep, lambda m, k=k: objective_values(m, objective, k), 10**6)
        assert evaluations == len(sweep.values) + 1
        assert value == brute_force_cut(problem, config, k, objective)
        trial = Config(config.names, config.thresholds[:k] + (t,) + config.thresholds[k + 1 :])
        assert float(objective_values(reference_matrix(problem, trial), objective, k)) == value


def test_cut_thresholds_separate_their_scores_as_the_segmentor_compares():
    rng = np.random.default_rng(0)
    near = np.float32(0.3)
    values = np.concatenate(
        [
            rng.random(2000).astype(np.float32),
            [near, np.nextafter(near, np.float32(1)), np.float32(1e-30), np.float32(2e-30), np.float32(0)],
        ]
    )
    values = np.unique(values)
    cuts = np.arange(len(values) + 1)
    thresholds = cut_thresholds(values, cuts)
    assert thresholds[0] == 0.0 and thresholds[-1] == 1.0
    as_torch = torch.from_numpy(values)
    for i in range(1, len(values)):
        t = float(thresholds[i])
        # cut i keeps values[i:] and rejects values[:i] in float32, numpy and torch alike
        assert values[i - 1] < np.float32(t) <= values[i], (i, values[i - 1], t, values[i])
        assert int((as_torch < t).sum()) == i  # the segmentor's scalar comparison
        lo, hi = float(values[i - 1]), float(values[i])
        assert abs(t - (lo + hi) / 2) <= (hi - lo) / 4 or t == hi  # hi: when no decimal rounds inside
    adjacent = np.searchsorted(values, near) + 1  # between two neighbouring float32 values
    assert np.float32(thresholds[adjacent]) == values[adjacent] and thresholds[adjacent] == 0.30000003
    # the decimal with the fewest places within a quarter gap of the midpoint
    pairs = np.float32([0.1, 0.2, 0.13, 0.1401, 0.2236999, 0.2237001])
    assert list(cut_thresholds(pairs[[0, 1]], np.array([1]))) == [0.15]
    assert list(cut_thresholds(pairs[[2, 3]], np.array([1]))) == [0.135]
    assert list(cut_thresholds(pairs[[4, 5]], np.array([1]))) == [0.2237]


def test_batched_miou_equals_one_at_a_time():
    problem, _ = random_problem(6)
    config = Config(((0,), (1, 2), (3, 5), (6,)), (0.2, 0.4, 1 / 3, 0.5))
    grid = [0.0, 0.1, 1 / 3, 0.5, 0.9]
    matrices = problem.sweep(config, 2).matrices(grid)
    assert matrices.shape == (5, 4, 5)
    batched = mean_ious(matrices)
    for one, matrix in zip(batched, matrices, strict=True):
        assert one == mean_iou(matrix)
        assert one == pytest.approx(compute_metrics(matrix, list("abcd"))["mIoU"] / 100, abs=1e-12)


def test_search_takes_only_strict_gains():
    problem, truth, _, pool = planted_problem()
    result = search(problem, truth, pool, [0.5, 0.6, 0.7])
    assert result.config == truth and result.steps == []


def test_pool_of_a_builtin_protocol():
    pool = build_pool(load_protocol("loveda").vocabulary)
    assert pool.classes[1][:2] == ("building", "house") and "roof" in pool.classes[1]
    assert pool.protocol == load_protocol("loveda").vocabulary.classes
    # names stay with one class: OpenEarthMap has both 'pavement' and 'road'
    oem = build_pool(load_protocol("openearthmap").vocabulary)
    owners = {}
    for k, names in enumerate(oem.classes):
        for name in names:
            assert owners.setdefault(name.lower(), k) == k


def test_ambiguous_builtin_names_are_left_out_but_users_decide():
    vocabulary = Vocabulary.parse("car;small vehicle")  # the pool's 'automobile' fits both
    pool = build_pool(vocabulary)
    assert all("automobile" not in names for names in pool.classes)
    pool = build_pool(vocabulary, {"car": ["automobile"]})
    assert "automobile" in pool.classes[0] and "automobile" not in pool.classes[1]
    assert build_pool(vocabulary, builtin=False).classes == (("car",), ("small vehicle",))
    assert len(build_pool(load_protocol("loveda").vocabulary, max_names=2).classes[4]) == 3  # own names stay


def test_bad_candidates_files_are_named(tmp_path):
    vocabulary = Vocabulary.parse("building,house;road")
    with pytest.raises(InputError, match="'lake' is not a class; the classes are building, road"):
        build_pool(vocabulary, {"lake": ["pond"]}, source="c.yaml")
    with pytest.raises(InputError, match="'house' is given for 'road' but is the class 'building'"):
        build_pool(vocabulary, {"road": ["house"]})
    with pytest.raises(InputError, match="is given for two classes"):
        build_pool(vocabulary, {"road": ["lane"], "building": ["lane"]})
    bad = tmp_path / "c.yaml"
    bad.write_text("road: [street, 3]\n")
    with pytest.raises(InputError, match=r"c.yaml: the names of 'road' must be text"):
        read_candidates(bad)
    bad.write_text("road: 'a;b'\n")
    with pytest.raises(InputError, match=r"c.yaml: .*';'"):
        read_candidates(bad)
    with pytest.raises(InputError, match="no such candidates file"):
        read_candidates(tmp_path / "none.yaml")
    good = tmp_path / "g.yaml"
    good.write_text("road: street, lane\nbuilding: [roof]\n")
    assert read_candidates(good) == {"road": ["street", "lane"], "building": ["roof"]}
