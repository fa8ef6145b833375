"""Training targets from a label map: class masks on the mask grid, instances, and matching.

A label map (ground truth or pseudo-labels) gives the semantic target directly. For the
instance masks of SAM 3's kept queries it gives no instances, so they are derived:

1. :func:`class_masks`: the one-hot label area-resized to the mask-logit grid
   (``4h x 4w``, 288 x 288 in SAM 3); a cell belongs to class ``k`` when more than half
   of its pixels do (ignored pixels belong to no class);
2. :func:`components`: each class mask's 8-connected components are its instances
   (the ``limit`` largest);
3. :func:`match`: kept queries of a name and the instances of the name's class are
   paired by the Hungarian algorithm on the cost ``1 - dice(sigmoid(mask), instance)``,
   as DETR matches predictions to objects. Unmatched queries get no mask target (the
   training step pushes their scores down instead).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from torch import Tensor

_EIGHT = np.ones((3, 3), dtype=bool)


def class_masks(label: Tensor, num_classes: int, size: tuple[int, int], ignore_index: int = 255) -> Tensor:
    """``[H, W]`` labels -> ``[K, h, w]`` bool: cell in class ``k`` when > half its pixels are ``k``.

    Uses ``F.interpolate(mode="area")`` (adaptive average pooling for non-integer ratios).
    """
    valid = label != ignore_index
    onehot = F.one_hot(torch.where(valid, label, 0).long(), num_classes).permute(2, 0, 1)
    onehot = (onehot * valid).float()
    if tuple(onehot.shape[-2:]) != tuple(size):
        onehot = F.interpolate(onehot[None], size=size, mode="area")[0]
    return onehot > 0.5


def components(mask: Tensor, limit: int) -> Tensor:
    """The ``limit`` largest 8-connected components of a ``[h, w]`` bool mask: ``[n, h, w]`` bool.

    Ordered by size, largest first (ties by first appearance in row-major order).
    """
    ids, count = ndimage.label(mask.cpu().numpy(), structure=_EIGHT)
    if count == 0:
        return torch.zeros(0, *mask.shape, dtype=torch.bool, device=mask.device)
    sizes = np.bincount(ids.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")[:limit] + 1
    stacked = torch.from_numpy(ids[None] == order[:, None, None])
    return stacked.to(mask.device)


def match(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Hungarian pairing of ``[Q, D]`` probabilities with ``[T, D]`` binary targets.

    Cost ``1 - (2 sum p t) / (sum p + sum t)`` (soft Dice; ``D`` = flattened cells).

    Returns:
        ``(query index [M], target index [M])``, ``M = min(Q, T)``, long, on ``probs``' device.

    """
    if probs.shape[0] == 0 or targets.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=probs.device)
        return empty, empty
    p, t = probs.detach().float(), targets.float()
    dice = 2 * (p @ t.T) / (p.sum(1)[:, None] + t.sum(1)[None, :]).clamp_min(1e-6)
    rows, cols = linear_sum_assignment((1 - dice).cpu().numpy())
    device = probs.device
    return torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)


def instance_pairs(
    mask_logits: Tensor, kept: Tensor, name_class: list[int], masks_by_class: Tensor, limit: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Matched (mask logits, instance target) pairs of every name.

    Args:
        mask_logits: ``[P, Q, h, w]`` mask logits of up to ``Q`` queries per name.
        kept: ``[P, Q]`` bool, the candidate queries (padding is not one).
        name_class: class index of each of the ``P`` names.
        masks_by_class: ``[K, h, w]`` bool class masks on the same grid.
        limit: instances per class (the largest components).

    Returns:
        ``(logits [M, h, w], targets [M, h, w] float, matched [P, Q] bool)`` over all
        names' matched pairs (``M`` may be 0); ``matched`` marks the candidates that got
        an instance.

    """
    logits, targets = [], []
    matched = torch.zeros_like(kept, dtype=torch.bool)
    instances: dict[int, Tensor] = {}
    for p, k in enumerate(name_class):
        rows = kept[p].nonzero()[:, 0]
        if len(rows) == 0:
            continue
        if k not in instances:
            instances[k] = components(masks_by_class[k], limit)
        found = instances[k]
        chosen = mask_logits[p, rows]
        q, t = match(chosen.flatten(1).sigmoid(), found.flatten(1))
        logits.append(chosen[q])
        targets.append(found[t].to(chosen.dtype))
        matched[p, rows[q]] = True
    if not logits:
        shape = (0, *mask_logits.shape[-2:])
        return mask_logits.new_zeros(shape), mask_logits.new_zeros(shape), matched
    return torch.cat(logits), torch.cat(targets), matched
