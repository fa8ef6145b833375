"""SegEarth-OV3's rules that turn SAM 3 outputs into per-name logits and labels.

Per view and prompt name ``q`` (see ``SEGEARTH_OV3.md``):

* instances: ``s_j = sigmoid(query_logit_j) * presence``, kept when ``s_j > confidence``;
  ``m_j = sigmoid(resize(mask_logit_j, view))``; ``inst = max(0, max_j m_j * s_j)``;
* semantic: ``sem = sigmoid(resize(semantic_logit, view))``;
* ``logit_q = max(inst, sem) * presence`` (each term switchable).

Per image: class logit = max over its names; label = argmax over classes, set to
``bg_idx`` where the max logit is below ``prob_thd``. Resizes are bilinear with
``align_corners=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import NODATA_LABEL


def resize(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) of ``[B, h, w]`` maps to ``[B, H, W]``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def semantic_probs(semantic_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """``sigmoid(resize(semantic_logits))``: ``[B, h, w] -> [B, H, W]``."""
    return resize(semantic_logits, size).sigmoid()


def instance_max(mask_logits: Tensor, scores: Tensor, size: tuple[int, int], chunk: int = 16) -> Tensor:
    """``max(0, max_j sigmoid(resize(mask_logits_j)) * scores_j)``.

    Vectorised over instances, in chunks of ``chunk`` so memory stays at
    ``chunk * H * W`` floats however many instances are kept.

    Args:
        mask_logits: ``[K, h, w]`` mask logits of the kept instances (``K`` may be 0).
        scores: ``[K]`` their scores.
        size: ``(H, W)`` of the view.
        chunk: instances resized at once.

    Returns:
        ``[H, W]`` instance term (zeros when ``K == 0``).

    """
    out = torch.zeros(size, dtype=mask_logits.dtype, device=mask_logits.device)
    for start in range(0, mask_logits.shape[0], chunk):
        probs = resize(mask_logits[start : start + chunk], size).sigmoid_()
        probs.mul_(scores[start : start + chunk, None, None])
        out = torch.maximum(out, probs.amax(dim=0))
    return out


def kept_padded(scores: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """The kept queries of each prompt, padded to the largest count, for batched masks.

    Args:
        scores: ``[B, Q]`` instance scores.
        keep: ``[B, Q]`` bool, the queries kept.

    Returns:
        ``(index [B, K], weight [B, K])`` with ``K = max_b keep[b].sum()``: the kept
        queries first (by score), then padding whose ``weight`` is 0. Since
        ``sigmoid(m) * 0 = 0`` and the instance term is floored at 0, padding changes
        nothing in :func:`instance_max_batched`. One host sync (for ``K``).

    """
    count = int(keep.sum(dim=1).max()) if keep.numel() else 0
    index = torch.where(keep, scores, -1.0).topk(count, dim=1).indices
    weight = torch.where(keep.gather(1, index), scores.gather(1, index), 0.0)
    return index, weight


def instance_max_batched(
    mask_logits: Tensor, scores: Tensor, size: tuple[int, int], chunk: int = 4
) -> Tensor:
    """:func:`instance_max` for ``B`` prompts at once: ``[B, K, h, w], [B, K] -> [B, H, W]``.

    Padding instances carry score 0 (see :func:`kept_padded`). Resized ``chunk``
    instances of every prompt at a time (memory ``B * chunk * H * W`` floats).
    """
    out = torch.zeros(mask_logits.shape[0], *size, dtype=mask_logits.dtype, device=mask_logits.device)
    for start in range(0, mask_logits.shape[1], chunk):
        part = mask_logits[:, start : start + chunk]
        if tuple(part.shape[-2:]) != tuple(size):
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
        probs = part.sigmoid().mul_(scores[:, start : start + chunk, None, None])
        out = torch.maximum(out, probs.amax(dim=1))
    return out


def names_to_classes(name_logits: Tensor, name_class: list[int], num_classes: int) -> Tensor:
    """Class logit = max over the class's names: ``[P, H, W] -> [K, H, W]``."""
    rows: list[list[int]] = [[] for _ in range(num_classes)]
    for name, k in enumerate(name_class):
        rows[k].append(name)
    return torch.stack([name_logits[r].amax(dim=0) for r in rows])


def labels_from_logits(class_logits: Tensor, prob_thd: float | Sequence[float], bg_idx: int) -> Tensor:
    """``argmax`` over classes; ``bg_idx`` where the max logit ``< prob_thd`` of the winning class.

    Args:
        class_logits: ``[K, H, W]``.
        prob_thd: background threshold, one for all classes or ``K`` (one per class: the
            argmax is taken first, then the winner's threshold decides).
        bg_idx: label given to low-confidence pixels (a class index, or 254 = unclassified).

    Returns:
        ``[H, W]`` int64 labels.

    """
    best, labels = class_logits.max(dim=0)
    # torch.max returns the first maximal index on ties, like argmax.
    if not isinstance(prob_thd, (int, float)):
        thresholds = torch.tensor(list(prob_thd), dtype=best.dtype, device=best.device)
        if len(set(prob_thd)) > 1:
            return labels.masked_fill_(best < thresholds[labels], bg_idx)
        prob_thd = float(thresholds[0])  # one value: the plain comparison, as the reference
    return labels.masked_fill_(best < prob_thd, bg_idx)


def finish(
    name_logits: Tensor,
    valid: np.ndarray,
    name_class: list[int],
    num_classes: int,
    prob_thd: float | Sequence[float],
    bg_idx: int,
) -> tuple[Tensor, np.ndarray]:
    """The end of every prediction path (whole image, windowed scene): names -> classes -> labels.

    Args:
        name_logits: ``[P, H, W]`` per-name logits (averaged over views).
        valid: ``[H, W]`` bool, False on nodata.
        name_class: class index of each name.
        num_classes: ``K``.
        prob_thd: background threshold, or one per class (see :func:`labels_from_logits`).
        bg_idx: label of low-confidence pixels (a class index, or 254 = unclassified).

    Returns:
        ``(class_logits [K, H, W] float32 on the CPU, labels [H, W] uint8)`` with
        ``labels = argmax`` (``bg_idx`` below ``prob_thd``) and 255 on nodata.

    """
    class_logits = names_to_classes(name_logits, name_class, num_classes)
    labels = labels_from_logits(class_logits, prob_thd, bg_idx).to(torch.uint8).cpu().numpy()
    labels[~valid] = NODATA_LABEL
    return class_logits.float().cpu(), labels


def scores_for_writing(class_logits: Tensor, valid: np.ndarray) -> np.ndarray:
    """``[K, H, W]`` float32 copy of the class logits with NaN on nodata (the score raster's nodata)."""
    scores = class_logits.float().cpu().numpy().copy()
    scores[:, ~valid] = np.nan
    return scores
