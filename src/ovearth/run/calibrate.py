"""``ovearth calibrate``: choose prompt names, per-class thresholds and the confidence from labelled tiles.

1. **Model pass** (resumable, shardable): every candidate name of every class is run once
   per image with every confidence of the grid, and its logits at the sampled pixels are
   cached (:mod:`ovearth.calibrate.cache`) under ``out/cache/<pass key>/<image key>/``.
   The pass key hashes the model, the settings that change per-name logits, the grid,
   the stride and the label rules; each entry also records its own key
   (:func:`~ovearth.run.calibrate_pass.entry_key`) and one that differs is recomputed;
   adding candidates runs only the new names. An image without a *scored* pixel (a labelled one, not
   ``ignore_index`` and a class, on the sample grid: an all-ignore tile, or a tile
   smaller than the stride's offset ``s//2``) is not run. Under ``torchrun`` each process
   takes every ``world_size``-th image; rank 0 searches.
2. **Splits**: images are ordered by the SHA-256 of their names (stable when images are
   added). The *fixed split* holds out the first ``holdout`` share; the *k folds* take
   every ``k``-th image of that order.
3. **Search** (:mod:`ovearth.calibrate.search`), for each confidence of the grid and each
   split, on the split's calibration images; per split the confidence with the best
   calibration objective wins (ties: the protocol's, then the lower one). Thresholds are
   searched on the cut points of the data (``thresholds=None``, the default) or on a
   fixed grid.
4. **Report** (:mod:`ovearth.calibrate.report`): baseline (the protocol) vs calibrated on
   the held-out images of the fixed split and of every fold; the protocol YAML chosen on
   the fixed split's calibration images (on all images with ``holdout = 0``).

Splits without scored pixels: held-out images without one give no held-out numbers
(the split is reported as having "no valid pixels" and a fold is left out of the gain's
mean and std, the count said); calibration images without one leave the protocol's
configuration (said in the report). With no scored pixel in any image, calibrate stops
with an :class:`InputError` (exit code 1, the CLI's code for bad input) after the pass,
which then ran no image through the model (it only cached the sampled labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from ..calibrate.pool import CandidatePool
from ..calibrate.report import write_report
from ..calibrate.search import MAX_CUTS, MIN_CUTS, OBJECTIVES, Config, Problem, SearchResult, search
from ..data.atomic import write_text_atomic
from ..data.datasets import Sample, SegmentationDataset
from ..data.output import remove_stale_parts
from ..errors import InputError
from ..segment.segmentor import Segmentor
from .calibrate_pass import Pixels, ProgressFn, load_maps, load_pixels, model_pass, pass_key
from .evaluate import Shard

logger = logging.getLogger(__name__)

#: confidence thresholds tried by default (the protocol's own is always added)
DEFAULT_CONFIDENCES = (0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class CalibrateOptions:
    """What ``ovearth calibrate`` searches and how it reports.

    Attributes:
        confidences: confidence thresholds tried (None: :data:`DEFAULT_CONFIDENCES`).
        thresholds: a fixed grid of per-class thresholds (the protocol's own added); None:
            the cut points of the data (:func:`ovearth.calibrate.search.best_cut`).
        max_cuts: with ``thresholds=None``, the most cut points of a class scored in one
            pass (quantiles of its distinct logits beyond that, then refined).
        holdout: share of images held out in the fixed split (0: fit on all images).
        folds: number of folds of the k-fold report (0: none).
        stride: sample stride ``s``: one pixel in ``s x s`` is cached and scored (1: all,
            and the held-out numbers equal ``eval``'s exactly).
        objective: ``"miou"`` or ``"class-iou"`` (see :mod:`ovearth.calibrate.search`).
        name_batch: names per pass of the per-name stages (memory bound).
        skip_bad: leave out bad images (listed in the report) instead of stopping.

    """

    confidences: tuple[float, ...] | None = None
    thresholds: tuple[float, ...] | None = None
    max_cuts: int = MAX_CUTS
    holdout: float = 0.3
    folds: int = 5
    stride: int = 4
    objective: str = "miou"
    name_batch: int = 8
    skip_bad: bool = False

    def check(self) -> None:
        """Raise InputError on a bad option (before the model loads)."""
        if not 0 <= self.holdout < 1:
            raise InputError(f"--holdout must be a share in [0, 1), got {self.holdout}.")
        if self.folds < 0 or self.folds == 1:
            raise InputError(f"--folds must be 0 (none) or at least 2, got {self.folds}.")
        if self.holdout == 0 and self.folds == 0:
            raise InputError("--holdout 0 and --folds 0 leave nothing to report on; keep one of them.")
        if self.name_batch < 1:
            raise InputError(f"--name-batch must be >= 1, got {self.name_batch}.")
        if self.stride < 1:
            raise InputError(f"--sample-stride must be >= 1, got {self.stride}.")
        if self.max_cuts < MIN_CUTS:
            raise InputError(f"--max-cuts must be >= {MIN_CUTS}, got {self.max_cuts}.")
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'.")
        for name, grid in (("--confidences", self.confidences), ("--thresholds", self.thresholds)):
            if grid is not None and (not grid or any(not 0 <= v <= 1 for v in grid)):
                raise InputError(f"{name} must list numbers in [0, 1], got {grid}.")


@dataclass
class Split:
    """Calibration and held-out images (indices into the samples)."""

    name: str
    calibrate: list[int]
    heldout: list[int]


def make_splits(samples: list[Sample], holdout: float, folds: int) -> list[Split]:
    """The fixed split (``"fixed"``, or ``"all"`` when ``holdout = 0``) and the folds.

    Raises:
        InputError: fewer than 2 images, or more folds than images.

    """
    n = len(samples)
    if n < 2:
        raise InputError(f"calibrate needs at least 2 labelled images to hold one out; found {n}.")
    if folds > n:
        raise InputError(f"--folds {folds} is more than the {n} images; use at most {n}.")
    order = sorted(range(n), key=lambda i: hashlib.sha256(samples[i].name.encode()).hexdigest())
    splits = []
    if holdout > 0:
        count = min(max(1, round(holdout * n)), n - 1)
        held = sorted(order[:count])
        splits.append(Split("fixed", sorted(order[count:]), held))
    else:
        splits.append(Split("all", list(range(n)), []))
    for f in range(folds):
        held = sorted(order[f::folds])
        splits.append(Split(f"fold {f + 1}", sorted(set(range(n)) - set(held)), held))
    return splits


def calibrate(
    segmentor: Segmentor,
    dataset: SegmentationDataset,
    pool: CandidatePool,
    out_dir: str | Path,
    options: CalibrateOptions | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run the model pass, the search on every split and write the report (see the module docstring).

    Args:
        segmentor: the protocol's segmentor (model, vocabulary and settings); its
            thresholds and confidence are the baseline.
        dataset: the labelled images.
        pool: the candidate names of each class.
        out_dir: output folder (report, YAML, cache).
        options: see :class:`CalibrateOptions`.
        progress: optional callback.

    Returns:
        The report's data (``calibration.json``) on rank 0; ``{}`` on other ranks.

    Raises:
        InputError: bad options or data (before the model pass where possible), or no
            scored pixel in any image (after the pass, which then runs no image).

    """
    options = options or CalibrateOptions()
    options.check()
    s = segmentor.settings
    if s.parsed_zoom is not None:
        raise InputError(
            "calibrate caches per-name maps; --zoom ranks regions of the whole vocabulary, so it is off."
        )
    protocol = dataset.protocol
    vocabulary = segmentor.vocabulary
    if s.bg_idx is None:
        raise InputError(
            f"{protocol.source}: calibrate scores labels and needs segment.bg_idx (a class index)."
        )
    confidences = tuple(sorted({*(options.confidences or DEFAULT_CONFIDENCES), s.confidence_threshold}))
    grid = None if options.thresholds is None else tuple(sorted({*options.thresholds, *segmentor.thresholds}))
    runner = Segmentor(segmentor.loaded, vocabulary, settings=s.replace(skip_absent=False, mode="fast"))
    out = Path(out_dir)
    shard = Shard.from_env(runner.stages.device)
    labels = (len(pool.classes), protocol.ignore_index)
    try:
        samples, skipped = dataset.samples(skip_bad=options.skip_bad)
        splits = make_splits(samples, options.holdout, options.folds)
        key, identity = pass_key(runner, dataset, confidences, options.stride)
        cache = out / "cache" / key
        cache.mkdir(parents=True, exist_ok=True)
        if shard.rank == 0:
            remove_stale_parts(out)
            write_text_atomic(cache / "run.json", json.dumps(identity, indent=2, sort_keys=True) + "\n")
        if shard.world_size > 1:
            dist.barrier()
        names = pool.names
        computed, model_seconds = model_pass(
            runner, samples, names, cache, options, confidences, identity, labels, shard, progress
        )
        if shard.world_size > 1:
            dist.barrier()  # every image's maps are cached before rank 0 reads them
        pixels = load_pixels(samples, cache, *labels, identity)
        if pixels.target.size == 0:  # every rank stops alike
            raise InputError(
                f"None of the {len(samples)} images has a labelled pixel to score at --sample-stride "
                f"{options.stride} (every sampled label is {protocol.ignore_index} or no class, or the "
                f"tiles are at most {options.stride // 2} pixels across); lower --sample-stride or check "
                "the labels."
            )
        if shard.rank != 0:
            return {}
        start = time.perf_counter()
        result = _search_all(
            samples, splits, cache, pool, segmentor, confidences, grid, options, pixels, identity, progress
        )
        search_seconds = time.perf_counter() - start
        result.update(
            images=[sample.name for sample in samples],
            unscored=[
                sample.name for sample, keep in zip(samples, pixels.keep, strict=True) if not keep.any()
            ],
            skipped=[{"image": name, "problem": problem} for name, problem in skipped],
            cost={
                "model_pass_seconds": round(model_seconds, 3),
                "images_run": computed,
                "names": len(names),
                "search_seconds": round(search_seconds, 3),
            },
            pass_key=key,
            objective=options.objective,
            sample_stride=options.stride,
            **runner.record(),
        )
        return write_report(out, result, segmentor, dataset, pool, options)
    finally:
        shard.close()


def _search_all(
    samples: list[Sample],
    splits: list[Split],
    cache: Path,
    pool: CandidatePool,
    segmentor: Segmentor,
    confidences: tuple[float, ...],
    grid: tuple[float, ...] | None,
    options: CalibrateOptions,
    pixels: Pixels,
    identity: dict[str, Any],
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """Search every split at every confidence; per split the best confidence's result.

    A split records its scored pixels (``pixels``: calibration and held-out counts); one
    without calibration pixels keeps the protocol's configuration (no search), one
    without held-out pixels has no held-out matrices.
    """
    s = segmentor.settings
    num_classes = len(pool.classes)
    start = Config(pool.indices(pool.protocol), tuple(segmentor.thresholds))
    candidates = pool.indices(pool.classes)
    names = pool.names
    found: dict[str, dict[str, Any]] = {
        split.name: {
            "pixels": {"calibrate": pixels.count(split.calibrate), "heldout": pixels.count(split.heldout)}
        }
        for split in splits
    }
    total, done = len(confidences) * len(splits), 0
    first = confidences.index(s.confidence_threshold)
    matters = True
    for g in [first, *(g for g in range(len(confidences)) if g != first)]:
        confidence = confidences[g]
        maps, matters = load_maps(samples, cache, names, g, pixels, identity)
        if g != first and not matters:
            break  # every confidence gives the protocol's maps: the protocol's stays (the tie rule)
        problem = Problem(maps, pixels.target, pixels.nodata, pool.name_class, num_classes, s.bg_idx)
        for split in splits:
            calibration = problem.select(np.isin(pixels.image, split.calibrate))
            if calibration.size:
                result = search(
                    calibration,
                    start,
                    candidates,
                    grid,
                    options.objective,
                    names=names,
                    max_cuts=options.max_cuts,
                )
            else:  # nothing to fit on: the protocol's configuration
                result = SearchResult(start, 0.0, 0.0, [], 0)
            entry = {
                "confidence": confidence,
                "config": result.config,
                "objective": result.objective,
                "start_objective": result.start_objective,
                "steps": result.steps,
                "evaluations": result.evaluations,
            }
            if found[split.name]["pixels"]["heldout"]:
                heldout = problem.select(np.isin(pixels.image, split.heldout))
                entry["heldout"] = heldout.confusion(result.config)
                if confidence == s.confidence_threshold:
                    found[split.name]["baseline"] = heldout.confusion(start)
            best = found[split.name].get("best")
            protocol_first = confidence == s.confidence_threshold
            if (
                best is None
                or entry["objective"] > best["objective"] + 1e-12
                or (protocol_first and entry["objective"] >= best["objective"] - 1e-12)
            ):
                found[split.name]["best"] = entry
            done += 1
            if progress is not None:
                progress("search", done, total)
    if progress is not None:
        progress("search", total, total)
    if grid is None:
        rule = {"rule": "cuts", "max_cuts": options.max_cuts}
    else:
        rule = {"rule": "grid", "values": list(grid)}
    return {
        "confidence_matters": matters,
        "splits": [
            {"name": split.name, "calibrate": split.calibrate, "heldout": split.heldout, **found[split.name]}
            for split in splits
        ],
        "confidences": list(confidences),
        "threshold_search": rule,
    }
