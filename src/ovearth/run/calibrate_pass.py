"""``ovearth calibrate``'s model pass: the cached per-name logits at the sampled pixels.

Every candidate name of every class is run once per image with every confidence of the
grid (:func:`model_pass`); its logits at the pixels of the sample grid are cached under
``out/cache/<pass key>/<image key>/`` (:func:`pass_key`, :func:`entry_key`,
:mod:`ovearth.calibrate.cache`). :func:`load_pixels` and :func:`load_maps` read them back
for the search (:mod:`ovearth.run.calibrate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..calibrate.cache import image_maps, name_key, read_entry, sampled, write_entry
from ..data.datasets import Sample, SegmentationDataset
from ..data.output import remove_stale_parts
from ..errors import InputError
from ..segment.segmentor import Segmentor
from .evaluate import Shard, image_key

if TYPE_CHECKING:  # calibrate.py imports this module
    from .calibrate import CalibrateOptions

logger = logging.getLogger(__name__)

#: ``progress(stage, done, total)`` during the model pass and the search (rank 0 only).
ProgressFn = Callable[[str, int, int], None]


def pass_key(
    segmentor: Segmentor, dataset: SegmentationDataset, confidences, stride: int
) -> tuple[str, dict]:
    """Hash of what changes the cached maps (not the names: each name has its own entry)."""
    settings = segmentor.settings.semantic_dict()
    for key in ("confidence_threshold", "prob_thd", "class_prob_thd", "bg_idx", "skip_absent", "mode"):
        settings.pop(key, None)
    identity = {
        "model": segmentor.loaded.fingerprint,
        "settings": settings,
        "confidences": list(confidences),
        "stride": stride,
        "labels": {
            "reduce_zero_label": dataset.protocol.reduce_zero_label,
            "ignore_index": dataset.protocol.ignore_index,
        },
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16], identity


def entry_key(identity: dict[str, Any], sample: Sample, entry: str) -> dict[str, Any]:
    """What one cache entry is for: the pass's ``identity`` (see :func:`pass_key`), the image, the entry.

    Args:
        identity: the pass's model fingerprint, settings, confidence grid, stride and label rules.
        sample: the image (its name, and :func:`image_key`: the name and its files' state).
        entry: the prompt name, or ``"target"`` for the label entry.

    """
    return {**identity, "image": sample.name, "image_key": image_key(sample), "entry": entry}


def scored_mask(label: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """The pixels that count (bool, same shape): a label that is not ``ignore_index`` and is a class."""
    return (label != ignore_index) & (label < num_classes)


def model_pass(
    segmentor: Segmentor,
    samples: list[Sample],
    names: list[str],
    cache: Path,
    options: CalibrateOptions,
    confidences: tuple[float, ...],
    identity: dict[str, Any],
    labels: tuple[int, int],
    shard: Shard,
    progress: ProgressFn | None = None,
) -> tuple[int, float]:
    """Cache every (image, name) of this shard that is not cached yet; ``(images run, seconds)``.

    ``labels``: ``(num_classes, ignore_index)``; an image without a scored pixel gets its
    target entry only (its maps are never read).
    """
    mine = samples[shard.rank :: shard.world_size]
    start, computed = time.perf_counter(), 0
    for index, sample in enumerate(mine, start=1):
        folder = cache / image_key(sample)
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(folder)  # entries a killed run was writing (this shard's images only)
        target = read_entry(folder / "target.npz", ("label", "valid"), entry_key(identity, sample, "target"))
        image = None
        if target is None:
            image = sample.load_image()
            target = {
                "label": np.ascontiguousarray(sampled(sample.load_label(), options.stride)),
                "valid": np.ascontiguousarray(sampled(image.valid, options.stride)),
            }
            write_entry(folder / "target.npz", entry_key(identity, sample, "target"), **target)
        missing = []
        if scored_mask(target["label"], *labels).any():
            missing = [
                n
                for n in names
                if read_entry(folder / name_key(n), ("maps", "presence"), entry_key(identity, sample, n))
                is None
            ]
        if missing:
            if image is None:
                image = sample.load_image()
            found = image_maps(
                segmentor, image.rgb, image.valid, missing, confidences, options.stride, options.name_batch
            )
            for name, (maps, presence) in found.items():
                write_entry(
                    folder / name_key(name),
                    entry_key(identity, sample, name),
                    maps=maps,
                    presence=np.float32(presence),
                )
            computed += 1
        if progress is not None and shard.rank == 0:
            progress("model pass", index, len(mine))
    return computed, time.perf_counter() - start


@dataclass
class Pixels:
    """The scored pixels of every image, concatenated (ignored labels left out)."""

    target: np.ndarray  # [N] int64
    nodata: np.ndarray  # [N] bool
    image: np.ndarray  # [N] int64, the sample index of each pixel
    keep: list[np.ndarray]  # per image, the [h' * w'] bool mask of its scored pixels

    def count(self, images: list[int]) -> int:
        """How many scored pixels ``images`` hold."""
        return int(sum(int(self.keep[i].sum()) for i in images))


def load_pixels(
    samples: list[Sample], cache: Path, num_classes: int, ignore_index: int, identity: dict[str, Any]
) -> Pixels:
    """Targets of the cached images, without the pixels whose label is ignored (or not a class)."""
    targets, nodata, image, keep = [], [], [], []
    for i, sample in enumerate(samples):
        key = entry_key(identity, sample, "target")
        entry = read_entry(cache / image_key(sample) / "target.npz", ("label", "valid"), key)
        if entry is None:
            raise InputError(f"{sample.image_path}: its cached label is missing; run calibrate again.")
        label = entry["label"].reshape(-1).astype(np.int64)
        mask = scored_mask(label, num_classes, ignore_index)
        keep.append(mask)
        targets.append(label[mask])
        nodata.append(~entry["valid"].reshape(-1)[mask])
        image.append(np.full(int(mask.sum()), i, np.int64))
    return Pixels(np.concatenate(targets), np.concatenate(nodata), np.concatenate(image), keep)


def load_maps(
    samples: list[Sample], cache: Path, names: list[str], g: int, pixels: Pixels, identity: dict[str, Any]
) -> tuple[np.ndarray, bool]:
    """``([P, N] float32, varies)``: every name's logits at confidence ``g`` at the scored pixels.

    ``varies`` is False when every entry has one plane: the confidence changes nothing.
    Images without a scored pixel have no maps and are not read.
    """
    rows, varies = [], False
    scored = [(sample, keep) for sample, keep in zip(samples, pixels.keep, strict=True) if keep.any()]
    for name in names:
        parts = [np.zeros(0, np.float32)]
        for sample, keep in scored:
            key = entry_key(identity, sample, name)
            entry = read_entry(cache / image_key(sample) / name_key(name), ("maps", "presence"), key)
            if entry is None:
                raise InputError(f"{sample.image_path}: the cached maps of '{name}' are missing; run again.")
            maps = entry["maps"]
            varies |= len(maps) > 1
            parts.append(maps[min(g, len(maps) - 1)].reshape(-1)[keep])
        rows.append(np.concatenate(parts))
    return np.stack(rows), varies
