"""What ``ovearth calibrate`` keeps of one model pass: per image and name, its logits at sampled pixels.

For each image, every candidate name is run once (the backbone once per image, the names
in batches, see :func:`image_maps`) with *all* the confidence thresholds of the grid
(:meth:`Segmentor.name_logits` with ``confidences``). Kept per (image, name), in
``<name key>.npz``: ``maps [G', h', w']`` float32 - the per-name logits at the pixels
``y = s//2 + i*s, x = s//2 + j*s`` for sample stride ``s`` (every pixel with ``s = 1``),
one plane per confidence, or one plane when the confidence changes nothing (no instance
kept) - and the name's presence; per image, ``target.npz`` holds the label and the valid
mask at the same pixels. Entries carry their SHA-256, are written atomically and a bad one
is discarded and recomputed, as ``eval``'s.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.atomic import atomic_path
from ..model.preprocess import to_chw_uint8
from ..segment.segmentor import Segmentor
from ..segment.vocabulary import Vocabulary

logger = logging.getLogger(__name__)


def sampled(array: np.ndarray | torch.Tensor, stride: int):
    """The pixels ``[..., s//2::s, s//2::s]`` of ``array`` (all of them for ``s = 1``)."""
    start = stride // 2
    return array[..., start::stride, start::stride]


def name_key(name: str) -> str:
    """File name of a prompt name's entry: readable, unique (a hash of the exact name)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40]
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}.npz"


def write_entry(path: Path, **arrays: np.ndarray) -> None:
    """Store arrays with the SHA-256 of their bytes (atomically)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, sha256=np.array(digest.hexdigest()), **arrays)


def read_entry(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays of an entry if it exists and checks, else None (a bad one is removed, with a warning)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in keys}
            check = str(data["sha256"])
        digest = hashlib.sha256()
        for key in sorted(arrays):
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
        if digest.hexdigest() == check:
            return arrays
        problem = "its checksum does not match"
    except Exception as error:  # any unreadable file is a bad entry, whatever numpy raises
        problem = f"it cannot be read ({type(error).__name__})"
    logger.warning("Discarding the corrupt cache entry %s: %s; recomputing it.", path, problem)
    path.unlink(missing_ok=True)
    return None


def image_maps(
    segmentor: Segmentor,
    rgb: np.ndarray,
    valid: np.ndarray,
    names: Sequence[str],
    confidences: Sequence[float],
    stride: int,
    name_batch: int = 8,
) -> dict[str, tuple[np.ndarray, float]]:
    """Per name: ``(maps [G', h', w'] float32 at the sampled pixels, presence)`` of one image.

    Args:
        segmentor: any segmentor with the run's model and settings (its classes are not used).
        rgb: ``[H, W, 3]`` uint8 image.
        valid: ``[H, W]`` bool; an image without valid pixels is not run (zeros).
        names: the prompt names to run.
        confidences: the ``G`` confidence thresholds.
        stride: the sample stride ``s``.
        name_batch: names per pass of the per-name stages (bounds memory at
            ``G * name_batch * H * W`` floats; the backbone runs once per image).

    """
    height, width = rgb.shape[:2]
    out: dict[str, tuple[np.ndarray, float]] = {}
    if not valid.any():
        shape = sampled(np.zeros((1, height, width), np.float32), stride).shape
        return {name: (np.zeros(shape, np.float32), 0.0) for name in names}
    view = to_chw_uint8(rgb)
    segmentor.set_image(rgb)  # the backbone features serve every batch of names
    for start in range(0, len(names), name_batch):
        chunk = list(names[start : start + name_batch])
        one = segmentor.with_classes(Vocabulary(tuple((name,) for name in chunk)))
        logits, presence = one.name_logits(view, confidences=confidences)
        logits = sampled(logits, stride).float().cpu().numpy()  # [G, p, h', w']
        for j, name in enumerate(chunk):
            planes = np.ascontiguousarray(logits[:, j])
            if all(np.array_equal(planes[0], plane) for plane in planes[1:]):
                planes = planes[:1]
            out[name] = (planes, float(presence[j]))
    segmentor.release_image()
    return out
