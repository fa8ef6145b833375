"""What ``ovearth calibrate`` keeps of one model pass: per image and name, its logits at sampled pixels.

For each image, every candidate name is run once (the backbone once per image, the names
in batches, see :func:`image_maps`) with *all* the confidence thresholds of the grid
(:meth:`Segmentor.name_logits` with ``confidences``). Kept per (image, name), in
``<name key>.npz``: ``maps [G', h', w']`` float32 - the per-name logits at the pixels
``y = s//2 + i*s, x = s//2 + j*s`` for sample stride ``s`` (every pixel with ``s = 1``),
one plane per confidence, or one plane when the confidence changes nothing (no instance
kept) - and the name's presence; per image, ``target.npz`` holds the label and the valid
mask at the same pixels.

Each entry records its *key*, what it was computed for (the image, the name or
``target``, and the model, settings, confidences, stride and label rules of the pass;
see :func:`ovearth.run.calibrate_pass.entry_key`), and the SHA-256 of its arrays and key. It
is written atomically; on read, an entry whose bytes do not check, or whose key differs
from the one expected (an entry copied over another's, or one from before keys, which
has none), is discarded with a warning naming the file and what differed, and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def write_entry(path: Path, key: Mapping[str, Any], **arrays: np.ndarray) -> None:
    """Store ``arrays`` with their ``key`` (as JSON) and the SHA-256 of both (atomically)."""
    arrays = {**arrays, "key": np.array(_key_text(key))}
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, sha256=np.array(_digest(arrays)), **arrays)


def read_entry(path: Path, fields: Sequence[str], key: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The ``fields`` of an entry if it exists, checks and was written for ``key``, else None.

    A bad or mismatched entry is removed, with a warning that names the file and the
    problem (the key's fields that differ, with both values).
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = str(data["key"]) if "key" in data.files else None
            arrays = {name: data[name] for name in fields}
            check = str(data["sha256"])
        if stored is None:
            problem = "it records no key (written before entries had one)"
        elif _digest({**arrays, "key": np.array(stored)}) != check:
            problem = "its checksum does not match"
        else:
            differ = key_differences(json.loads(stored), json.loads(_key_text(key)))
            if not differ:
                return arrays
            problem = f"it was written for another {'; '.join(differ)}"
    except Exception as error:  # any unreadable file is a bad entry, whatever numpy raises
        problem = f"it cannot be read ({type(error).__name__})"
    logger.warning("Discarding the cache entry %s: %s; recomputing it.", path, problem)
    path.unlink(missing_ok=True)
    return None


def key_differences(stored: Any, expected: Any, where: str = "") -> list[str]:
    """``field: <stored> here, <expected> expected`` (values as JSON) per differing leaf of two values."""
    if isinstance(stored, dict) and isinstance(expected, dict):
        out = []
        for name in sorted(set(stored) | set(expected)):
            part = f"{where}.{name}" if where else name
            out += key_differences(stored.get(name, "(none)"), expected.get(name, "(none)"), part)
        return out
    if stored == expected:
        return []
    return [f"{where or 'key'}: {_brief(stored)} here, {_brief(expected)} expected"]


def _brief(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_text(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' bytes, in the order of their names."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


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
