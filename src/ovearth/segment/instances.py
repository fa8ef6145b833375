"""SAM 3's kept objects as instances: one per kept query of each name, deduplicated.

SegEarth-OV3's fusion keeps only a semantic map; the queries it keeps (``s_j >
confidence_threshold``, ``s_j = sigmoid(query logit) * presence``) are objects in their own
right. An :class:`Instance` is such a query's mask thresholded at 0.5 (mask logit > 0 after
the bilinear resize to the view, the same resize the instance term uses), on valid pixels,
in image coordinates. The same object is often found by several views (overlapping
windows) and by several names of one class (synonyms): :func:`deduplicate` keeps, per
class, the higher-scoring of any two instances whose masks overlap with IoU > 0.5
(greedy, by descending score).
"""

from __future__ import annotations

import os
import struct
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
from torch import Tensor

#: Instances of one class whose masks overlap more than this are one object.
DEDUP_IOU = 0.5


@dataclass(frozen=True)
class Instance:
    """One object found by SAM 3.

    Attributes:
        class_index: the class of the name that found it.
        name: the prompt name (a synonym of the class).
        score: ``sigmoid(query logit) * presence`` of the query.
        box: ``(x1, y1, x2, y2)`` in image pixels, end-exclusive: the mask's extent.
        mask: ``[y2 - y1, x2 - x1]`` bool, the mask inside ``box``.

    """

    class_index: int
    name: str
    score: float
    box: tuple[int, int, int, int]
    mask: np.ndarray

    @cached_property
    def pixels(self) -> int:
        """Pixels in the mask (counted once: deduplication asks for it at every comparison)."""
        return int(self.mask.sum())

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """The mask placed in a ``[height, width]`` bool image."""
        out = np.zeros((height, width), bool)
        x1, y1, x2, y2 = self.box
        out[y1:y2, x1:x2] = self.mask
        return out


def from_mask(
    mask: np.ndarray, class_index: int, name: str, score: float, offset: tuple[int, int] = (0, 0)
) -> Instance | None:
    """An :class:`Instance` from a ``[h, w]`` bool mask of a view at ``offset = (y, x)``.

    Returns None for an empty mask.
    """
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y1, y2 = int(rows.argmax()), int(len(rows) - rows[::-1].argmax())
    x1, x2 = int(cols.argmax()), int(len(cols) - cols[::-1].argmax())
    box = (x1 + offset[1], y1 + offset[0], x2 + offset[1], y2 + offset[0])
    return Instance(class_index, name, float(score), box, mask[y1:y2, x1:x2].copy())


def view_instances(
    mask_logits: Tensor, scores: Tensor, valid: np.ndarray | None, class_index: int, name: str
) -> list[Instance]:
    """Instances of one name in one view.

    Args:
        mask_logits: ``[K, h, w]`` mask logits of the kept queries, resized to the view.
        scores: ``[K]`` their scores.
        valid: ``[h, w]`` bool (False on nodata), or None.
        class_index: the name's class.
        name: the prompt name.

    Returns:
        One :class:`Instance` per query whose mask (logit > 0 on valid pixels) is not empty,
        in view coordinates.

    """
    masks = (mask_logits > 0).cpu().numpy()
    if valid is not None:
        masks &= valid[None]
    found = (from_mask(m, class_index, name, float(s)) for m, s in zip(masks, scores.tolist(), strict=True))
    return [i for i in found if i is not None]


def shifted(instance: Instance, dy: int, dx: int) -> Instance:
    """The instance moved by ``(dy, dx)`` pixels (view -> image coordinates)."""
    x1, y1, x2, y2 = instance.box
    box = (x1 + dx, y1 + dy, x2 + dx, y2 + dy)
    return Instance(instance.class_index, instance.name, instance.score, box, instance.mask)


def restricted(instances: list[Instance], valid: np.ndarray) -> list[Instance]:
    """The instances with their masks cut to ``valid`` ``[H, W]`` pixels (empty ones dropped)."""
    out = []
    for one in instances:
        x1, y1, x2, y2 = one.box
        cut = from_mask(one.mask & valid[y1:y2, x1:x2], one.class_index, one.name, one.score, (y1, x1))
        if cut is not None:
            out.append(cut)
    return out


def mask_iou(a: Instance, b: Instance) -> float:
    """Intersection over union of two instances' masks (0 when their boxes do not overlap)."""
    x1, y1 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    x2, y2 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if x1 >= x2 or y1 >= y2:
        return 0.0
    part_a = a.mask[y1 - a.box[1] : y2 - a.box[1], x1 - a.box[0] : x2 - a.box[0]]
    part_b = b.mask[y1 - b.box[1] : y2 - b.box[1], x1 - b.box[0] : x2 - b.box[0]]
    inter = int(np.logical_and(part_a, part_b).sum())
    union = a.pixels + b.pixels - inter
    return inter / union if union else 0.0


def deduplicate(instances: list[Instance], iou: float = DEDUP_IOU) -> list[Instance]:
    """Per class, drop an instance whose mask IoU with a higher-scoring kept one exceeds ``iou``.

    Returns the kept instances by class, then descending score (ties: the earlier one).
    """
    kept: list[Instance] = []
    order = sorted(range(len(instances)), key=lambda i: (instances[i].class_index, -instances[i].score, i))
    for i in order:
        candidate = instances[i]
        same = (k for k in kept if k.class_index == candidate.class_index)
        if all(mask_iou(candidate, k) <= iou for k in same):
            kept.append(candidate)
    return kept


class StreamingDedup:
    """:func:`deduplicate` for instances that arrive by rows of windows, holding only what is open.

    Instances of one class whose boxes overlap (transitively) form a group; the greedy
    deduplication decides an instance only from higher-scoring kept instances that overlap
    it, so each group can be deduplicated on its own. Once every box of a group ends at or
    above ``frontier`` (the first row of the windows still to come, whose instances start
    at or below it), no later instance can join the group: it is settled and its kept
    instances are set aside. :meth:`finish` returns exactly ``deduplicate(all instances)``,
    in the same order (tested), while the pending instances are those of the last rows.
    """

    def __init__(self, iou: float = DEDUP_IOU, spill: ObjectSpill | None = None) -> None:
        self.iou = iou
        self.pending: list[tuple[int, Instance]] = []
        self.kept: list[tuple[int, Instance]] = []  # settled and kept, unless they go to ``spill``
        self.spill = spill
        self.count = 0

    def add(self, instances: list[Instance]) -> None:
        """Add instances in arrival order (the order :func:`deduplicate` would have seen them)."""
        for one in instances:
            self.pending.append((self.count, one))
            self.count += 1

    def settle(self, frontier: float) -> None:
        """Deduplicate the groups whose boxes all end at or above row ``frontier``.

        Their kept instances go to the spill when there is one (then only the pending
        instances stay in memory), else to :attr:`kept`.
        """
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        still: list[tuple[int, Instance]] = []
        for k in sorted({one.class_index for _, one in self.pending}):
            members = [pair for pair in self.pending if pair[1].class_index == k]
            boxes = np.array([one.box for _, one in members]).reshape(-1, 4)
            x1, y1, x2, y2 = boxes.T
            touch = (np.maximum(x1[:, None], x1) < np.minimum(x2[:, None], x2)) & (
                np.maximum(y1[:, None], y1) < np.minimum(y2[:, None], y2)
            )
            count, group = connected_components(csr_matrix(touch), directed=False)
            bottom = np.full(count, -np.inf)
            np.maximum.at(bottom, group, y2)
            for g in range(count):
                chosen = [members[i] for i in np.flatnonzero(group == g)]  # in arrival order
                if bottom[g] > frontier:
                    still.extend(chosen)
                    continue
                kept = {id(one) for one in deduplicate([one for _, one in chosen], self.iou)}
                for arrival, one in chosen:
                    if id(one) not in kept:
                        continue
                    if self.spill is not None:
                        self.spill.add(arrival, one)
                    else:
                        self.kept.append((arrival, one))
        self.pending = sorted(still, key=lambda pair: pair[0])

    def finish(self) -> list[Instance] | ObjectSpill:
        """Every kept instance, by class then descending score (ties: the earlier), as :func:`deduplicate`.

        With a spill, the spill itself: iterating it reads them back in that order.
        """
        self.settle(np.inf)
        if self.spill is not None:
            return self.spill
        order = sorted(self.kept, key=lambda pair: (pair[1].class_index, -pair[1].score, pair[0]))
        return [one for _, one in order]


#: an instance on disk: class_index, score, box x1 y1 x2 y2, name bytes; then the name, the mask bits
_HEAD = struct.Struct("<idqqqqI")


def encode_instance(instance: Instance) -> bytes:
    """``instance`` as bytes (:func:`read_instance` reads it back equal: fields and mask bits)."""
    name = instance.name.encode()
    head = _HEAD.pack(instance.class_index, instance.score, *instance.box, len(name))
    return head + name + np.packbits(instance.mask).tobytes()


def read_instance(file: BinaryIO) -> Instance:
    """The instance written by :func:`encode_instance` at ``file``'s position."""
    k, score, x1, y1, x2, y2, size = _HEAD.unpack(file.read(_HEAD.size))
    name = file.read(size).decode()
    shape = (y2 - y1, x2 - x1)
    bits = np.frombuffer(file.read((shape[0] * shape[1] + 7) // 8), np.uint8)
    mask = np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)
    return Instance(k, name, score, (x1, y1, x2, y2), mask)


class ObjectSpill:
    """Kept instances written to a hidden file as they settle; read back in :func:`deduplicate`'s order.

    Use as a context manager (the file is removed at exit, whatever happens; a killed
    run's file is a ``.<stem>.<random>.part.objects`` that
    :func:`~ovearth.data.output.remove_stale_parts` removes). Memory holds per instance
    only its sort key and file offset (32 bytes), never its mask. Iterating yields
    instances equal to those added (same fields, the same mask bits), by class, then
    descending score, then arrival: the order of :meth:`StreamingDedup.finish`.

    Args:
        folder: where the file goes (beside the outputs).
        stem: names the file.

    """

    def __init__(self, folder: str | Path, stem: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)  # the outputs' folder may not exist yet
        handle, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part.objects", dir=folder)
        self.path = Path(name)
        self._file = os.fdopen(handle, "w+b")
        self._classes, self._scores = array("q"), array("d")  # sort keys, and the file offsets
        self._arrivals, self._offsets = array("q"), array("q")

    def __enter__(self) -> ObjectSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close and remove the file."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._offsets)

    def add(self, arrival: int, instance: Instance) -> None:
        """Append ``instance``, the ``arrival``-th seen (the tie-break of equal scores)."""
        self._classes.append(instance.class_index)
        self._scores.append(instance.score)
        self._arrivals.append(arrival)
        self._offsets.append(self._file.seek(0, os.SEEK_END))
        self._file.write(encode_instance(instance))

    def __iter__(self) -> Iterator[Instance]:
        """The instances, by class, then descending score, then arrival."""
        self._file.flush()
        keys = (np.asarray(self._arrivals), -np.asarray(self._scores), np.asarray(self._classes))
        for i in np.lexsort(keys).tolist():
            self._file.seek(self._offsets[i])
            yield read_instance(self._file)
