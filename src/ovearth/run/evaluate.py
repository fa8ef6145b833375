"""Benchmark evaluation: resumable, shardable over processes, exact metrics.

``evaluate(segmentor, dataset, out_dir)`` segments every image of a dataset, turns each
prediction into a confusion matrix (:mod:`ovearth.metrics`) and stores it under
``out_dir/cache/<run key>/<image key>.npz`` (the matrix and its SHA-256):

* the *run key* hashes everything that changes predictions: the model fingerprint, the
  settings that change outputs (the refinement spec among them), the vocabulary, the label protocol
  (``reduce_zero_label``, ignore index) and the image reading rule;
* the *image key* hashes the image's relative name with the size and modification time
  of the image and label files.

A run killed at any point resumes where it stopped (entries are written atomically;
stale temporary files are removed), and a changed setting never reuses old entries. An
entry that does not check (unreadable, wrong shape or dtype, negative counts, checksum
mismatch) is discarded with one warning naming the file, and recomputed.

Under ``torchrun`` (``WORLD_SIZE > 1``) each process takes every ``world_size``-th image
and the confusion matrices are summed with ``all_reduce`` (NCCL on GPU, gloo on CPU),
so the metrics equal those of one process.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..data.atomic import atomic_path, write_text_atomic
from ..data.datasets import Sample, SegmentationDataset
from ..data.legend import ClassTable
from ..data.output import remove_stale_parts
from ..data.raster_write import write_labels
from ..environment import torchrun
from ..metrics import compute_metrics, confusion_matrix
from ..segment.segmentor import Segmentor
from ..viz import palette
from .reports import write_metrics

logger = logging.getLogger(__name__)

#: ``progress(done, total, running_miou)`` called after each image (rank 0 only).
ProgressFn = Callable[[int, int, float], None]


#: how long a process waits for the others at a collective (a scene or a file of another
#: process may take hours; torchrun stops every process when one fails)
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=24)


@dataclass
class Shard:
    """The current process's place in a ``torchrun`` job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @classmethod
    def from_env(cls, device: torch.device | None = None) -> Shard:
        """Join the process group described by torchrun's environment variables, if any.

        Raises:
            InputError: a bad ``WORLD_SIZE`` / ``RANK``, or no rendezvous
                (:func:`~ovearth.environment.torchrun`).

        """
        if torchrun().world_size <= 1:
            return cls()
        here = False
        if not dist.is_initialized():
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
            here = True
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), initialized_here=here)

    def close(self) -> None:
        """Leave the process group if this shard joined it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class EvalOptions:
    """Options of an evaluation run.

    Attributes:
        skip_bad: skip images whose files are missing or invalid (listed in the results)
            instead of stopping at the first.
        save_predictions: also write colour label maps to ``out_dir/predictions``.
        extra: more provenance recorded in ``metrics.json`` (and the cache key).

    """

    skip_bad: bool = False
    save_predictions: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalRun:
    """What :func:`evaluate` measured; :attr:`metrics` is ``metrics.json``.

    Attributes:
        out_dir: the output folder (``metrics.json``, ``metrics.md``, ``cache/``).
        metrics: everything ``metrics.json`` holds: the summary and per-class metrics of
            :func:`~ovearth.metrics.compute_metrics` plus the run's provenance.

    """

    out_dir: Path
    metrics: dict[str, Any]

    @property
    def miou(self) -> float:
        """Mean IoU over the classes, in percent."""
        return self.metrics["mIoU"]

    @property
    def macc(self) -> float:
        """Mean per-class accuracy, in percent."""
        return self.metrics["mAcc"]

    @property
    def aacc(self) -> float:
        """Share of pixels labelled right, in percent."""
        return self.metrics["aAcc"]

    @property
    def per_class(self) -> dict[str, dict[str, float]]:
        """Class name -> ``{"IoU", "Acc", "Fscore", "Precision", "Recall"}`` in percent."""
        return self.metrics["per_class"]

    @property
    def num_images(self) -> int:
        """Images evaluated (every process's)."""
        return self.metrics["num_images"]

    @property
    def computed_images(self) -> int:
        """Images this process segmented in this run (the rest came from the cache)."""
        return self.metrics["computed_images"]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Bad images, ``{"image", "problem"}`` each (with ``skip_bad``)."""
        return self.metrics["skipped"]

    @property
    def run_key(self) -> str:
        """Hash of everything that changes predictions (the cache folder's name)."""
        return self.metrics["run_key"]

    @property
    def world_size(self) -> int:
        """Processes that shared the images."""
        return self.metrics["world_size"]


def run_key(segmentor: Segmentor, dataset: SegmentationDataset, options: EvalOptions) -> tuple[str, dict]:
    """Hash of everything that changes the per-image results, and what was hashed."""
    protocol = dataset.protocol
    identity = {
        "model": segmentor.loaded.fingerprint,
        "settings": segmentor.settings.semantic_dict(),
        "classes": str(segmentor.vocabulary),
        "labels": {"reduce_zero_label": protocol.reduce_zero_label, "ignore_index": protocol.ignore_index},
        "extra": options.extra,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return digest, identity


def image_key(sample: Sample) -> str:
    """Readable, unique cache name of one image: its name plus a hash of its files' state."""
    parts = [sample.name]
    for path in (sample.image_path, sample.label_path):
        stat = Path(path).stat()
        parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', sample.name)[-80:]}-{digest}"


def evaluate(
    segmentor: Segmentor,
    dataset: SegmentationDataset,
    out_dir: str | Path,
    options: EvalOptions | None = None,
    progress: ProgressFn | None = None,
) -> EvalRun:
    """Evaluate a segmentor on a dataset and write the reports into ``out_dir``.

    Args:
        segmentor: configured with the dataset's vocabulary and settings.
        dataset: the dataset reader (its ``limit`` selects the first N images).
        out_dir: output folder (reports, cache, predictions).
        options: see :class:`EvalOptions`.
        progress: optional callback after each image.

    Returns:
        The :class:`EvalRun` (its ``metrics`` as in ``metrics.json``), on every process.

    Raises:
        InputError: a bad image when ``skip_bad`` is False.

    """
    options = options or EvalOptions()
    out = Path(out_dir)
    shard = Shard.from_env(segmentor.stages.device)
    try:
        samples, skipped = dataset.samples(skip_bad=options.skip_bad)
        key, identity = run_key(segmentor, dataset, options)
        cache = out / "cache" / key
        cache.mkdir(parents=True, exist_ok=True)
        if shard.rank == 0:  # temporary files left by a process killed mid-write
            for folder in (cache, out, out / "predictions"):
                remove_stale_parts(folder)
        if shard.world_size > 1:
            dist.barrier()  # no rank starts writing entries before the clean-up is done
        num_classes = len(segmentor.vocabulary)
        total = np.zeros((num_classes, num_classes + 1), np.int64)
        mine = samples[shard.rank :: shard.world_size]
        start, computed = time.perf_counter(), 0
        for index, sample in enumerate(mine, start=1):
            entry = cache / f"{image_key(sample)}.npz"
            matrix = read_entry(entry, total.shape)
            if matrix is None:
                matrix = _evaluate_one(segmentor, dataset, sample, out, options)
                write_entry(entry, matrix)
                computed += 1
            total += matrix
            if progress is not None and shard.rank == 0:
                running = compute_metrics(total, segmentor.vocabulary.labels)["mIoU"]
                progress(index, len(mine), running)
        seconds = time.perf_counter() - start
        if shard.world_size > 1:
            reduced = torch.from_numpy(total).to(segmentor.stages.device)
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            total = reduced.cpu().numpy()
        result = compute_metrics(total, segmentor.vocabulary.labels)
        result.update(
            dataset=dataset.protocol.name,
            num_images=len(samples),
            skipped=[{"image": name, "problem": problem} for name, problem in skipped],
            **segmentor.record(),
            refine=segmentor.settings.refine,
            run_key=key,
            world_size=shard.world_size,
            seconds=round(seconds, 3),
            computed_images=computed,
            **({"extra": options.extra} if options.extra else {}),
        )
        if shard.rank == 0:
            write_metrics(out, result, f"{dataset.protocol.title}: ovearth / SegEarth-OV3")
            write_text_atomic(cache / "run.json", json.dumps(identity, indent=2, sort_keys=True) + "\n")
        if shard.world_size > 1:
            dist.barrier()
        return EvalRun(out, result)
    finally:
        shard.close()


def write_entry(path: Path, matrix: np.ndarray) -> None:
    """Store a confusion matrix with its SHA-256 (atomically)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.int64)
    check = np.array(hashlib.sha256(matrix.tobytes()).hexdigest())
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, matrix=matrix, sha256=check)


def read_entry(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The stored matrix if ``path`` exists and checks, else None (a bad entry is removed, with a warning).

    Checks: a readable ``.npz`` without pickles holding ``matrix`` (int64, ``shape``, no
    negative count) and ``sha256`` equal to the matrix's digest.
    """
    if not path.exists():
        return None
    problem = None
    try:
        with np.load(path, allow_pickle=False) as data:
            matrix, check = data["matrix"], str(data["sha256"])
        if matrix.dtype != np.int64 or matrix.shape != tuple(shape):
            problem = f"holds {matrix.dtype} {matrix.shape}, expected int64 {tuple(shape)}"
        elif hashlib.sha256(np.ascontiguousarray(matrix).tobytes()).hexdigest() != check:
            problem = "its checksum does not match"
        elif (matrix < 0).any():
            problem = "it holds negative counts"
    except Exception as error:  # any unreadable file is a bad entry, whatever numpy raises
        problem = f"it cannot be read ({type(error).__name__})"
    if problem is None:
        return matrix
    logger.warning("Discarding the corrupt cache entry %s: %s; recomputing it.", path, problem)
    path.unlink(missing_ok=True)
    return None


def _evaluate_one(
    segmentor: Segmentor, dataset: SegmentationDataset, sample: Sample, out: Path, options: EvalOptions
) -> np.ndarray:
    image = sample.load_image()
    label = sample.load_label()
    prediction = segmentor.predict(image.rgb, valid=image.valid)
    if options.save_predictions:
        target = out / "predictions" / f"{sample.name}.png"
        table = ClassTable.build(prediction.class_names, palette(len(segmentor.vocabulary)), False)
        write_labels(target, prediction.labels, image, table)  # .png: no georef
    return confusion_matrix(
        prediction.labels, label, len(segmentor.vocabulary), dataset.protocol.ignore_index
    )
