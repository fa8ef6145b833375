"""Supervised segmentation loss ``L_seg`` and the combined training objective (MISSION.md part 2).

``L = seg * L_seg + attn * L_attn + contrast * L_contrast + boundary * L_boundary``, by
default ``L_seg + 0.1 L_attn + 0.05 L_contrast + 0.02 L_boundary``; the three encoder
terms are in :mod:`ovearth.train.losses`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Terms of :class:`CombinedLoss`, in the order they are computed.
TERMS = ("seg", "attn", "contrast", "boundary")


def soft_dice(prob: Tensor, target: Tensor, dims: tuple[int, ...], smooth: float) -> Tensor:
    """``1 - (2 sum p t + s) / (sum p + sum t + s)``, the sums over ``dims``."""
    inter = (prob * target).sum(dims)
    return 1.0 - (2.0 * inter + smooth) / (prob.sum(dims) + target.sum(dims) + smooth)


class SegmentationLoss(nn.Module):
    """BCE + soft Dice on per-class sigmoid maps, optionally on matched instance masks.

    **Semantic.** ``logits [B, K, H, W]`` are independent per-class sigmoid logits
    ``x``; ``target [B, H, W]`` holds labels in ``[0, K)`` or ``ignore_index``. With the
    one-hot target ``t``, ``p = sigmoid(x)`` and ``V`` the non-ignored pixels:

        BCE  = mean_{pixel in V, class k} (-t log p - (1 - t) log(1 - p))   (with logits)
        Dice = mean_{k in C} (1 - (2 sum p t + s) / (sum p + sum t + s)),

    the Dice sums running over the batch and the pixels of ``V`` for class ``k``
    (batch Dice), ``s = smooth``. ``C`` is the classes present in ``V`` of the batch
    (``dice_classes="present"``; absent classes are still pushed down by the BCE) or all
    ``K`` (``"all"``: an absent class scores ``1 - s / (sum p + s)``). Ignored pixels
    contribute nothing and get zero gradient. With no valid pixel both terms are 0.

    **Instances** (optional). ``instance_logits [B, Q, H', W']`` and matched
    ``instance_targets`` of the same shape (bool or soft in ``[0, 1]``), with
    ``instance_valid [B, Q]`` bool marking the matched pairs (all when None). The
    matching (e.g. Hungarian on the same costs) is the caller's job; pair ``(b, q)`` is
    taken as given. BCE is the mean over the pixels of all valid pairs, Dice the mean
    over valid pairs of each pair's own Dice (sums over its pixels); 0 with no pair.

    **Presence** (optional). ``presence_logits [B, K]`` are per-class image-level logits
    (SAM 3's presence token); the target of ``(b, k)`` is 1 when class ``k`` has at
    least one non-ignored pixel in ``target[b]``, else 0. ``BCE_pres`` is the mean BCE
    over the ``B * K`` entries (items without any valid pixel are left out).

    The total is ``bce_weight * (BCE + BCE_inst + BCE_pres) + dice_weight * (Dice +
    Dice_inst)``. :meth:`terms` returns the unweighted parts.

    Args:
        bce_weight: weight of the BCE terms (>= 0).
        dice_weight: weight of the Dice terms (>= 0).
        ignore_index: label of ignored pixels.
        smooth: Dice smoothing ``s`` (> 0).
        dice_classes: ``"present"`` or ``"all"``.

    Raises:
        ValueError: for out-of-range settings.

    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int = 255,
        smooth: float = 1.0,
        dice_classes: str = "present",
    ) -> None:
        super().__init__()
        if not (bce_weight >= 0 and dice_weight >= 0):
            raise ValueError(f"weights must be >= 0, got bce {bce_weight} and dice {dice_weight}.")
        if not smooth > 0:
            raise ValueError(f"smooth must be > 0, got {smooth}.")
        if dice_classes not in ("present", "all"):
            raise ValueError(f"dice_classes must be 'present' or 'all', got '{dice_classes}'.")
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.ignore_index, self.smooth, self.dice_classes = ignore_index, smooth, dice_classes

    def terms(
        self,
        logits: Tensor,
        target: Tensor,
        instance_logits: Tensor | None = None,
        instance_targets: Tensor | None = None,
        instance_valid: Tensor | None = None,
        presence_logits: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted ``bce``, ``dice`` (``instance_bce``, ``instance_dice``, ``presence_bce``) scalars.

        Raises:
            ValueError: on mismatched shapes or labels outside ``[0, K)`` and the ignore label.

        """
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"need logits [B, K, H, W] and target [B, H, W], got {tuple(logits.shape)} "
                f"and {tuple(target.shape)}."
            )
        k = logits.shape[1]
        x = logits.to(torch.promote_types(logits.dtype, torch.float32))
        valid = target != self.ignore_index
        labels = torch.where(valid, target, 0).long()
        if bool(((labels < 0) | (labels >= k)).any()):
            raise ValueError(f"labels must lie in [0, {k}) or be {self.ignore_index} (ignored).")
        v = valid[:, None].to(x.dtype).expand_as(x)
        onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).to(x.dtype) * v
        bce = F.binary_cross_entropy_with_logits(x, onehot, reduction="none")
        out = {"bce": (bce * v).sum() / v.sum().clamp_min(1)}
        dice = soft_dice(torch.sigmoid(x) * v, onehot, (0, 2, 3), self.smooth)  # [K]
        if self.dice_classes == "present":
            classes = (onehot.sum((0, 2, 3)) > 0).to(x.dtype)
        else:
            classes = (v.sum((0, 2, 3)) > 0).to(x.dtype)
        out["dice"] = (dice * classes).sum() / classes.sum().clamp_min(1)
        if instance_logits is not None:
            out.update(self._instance_terms(instance_logits, instance_targets, instance_valid))
        if presence_logits is not None:
            out["presence_bce"] = self._presence_term(presence_logits, onehot, valid)
        return out

    def _presence_term(self, logits: Tensor, onehot: Tensor, valid: Tensor) -> Tensor:
        if logits.shape != onehot.shape[:2]:
            expected, got = tuple(onehot.shape[:2]), tuple(logits.shape)
            raise ValueError(f"presence_logits must be [B, K] = {expected}, got {got}.")
        x = logits.to(onehot.dtype)
        present = (onehot.sum((2, 3)) > 0).to(x.dtype)  # [B, K]
        items = valid.flatten(1).any(1).to(x.dtype)[:, None].expand_as(x)  # [B, K]
        bce = F.binary_cross_entropy_with_logits(x, present, reduction="none")
        return (bce * items).sum() / items.sum().clamp_min(1)

    def _instance_terms(
        self, logits: Tensor, targets: Tensor | None, valid: Tensor | None
    ) -> dict[str, Tensor]:
        if targets is None or logits.dim() != 4 or targets.shape != logits.shape:
            shape = None if targets is None else tuple(targets.shape)
            raise ValueError(
                f"instance_targets must match instance_logits [B, Q, H, W]: {tuple(logits.shape)} vs {shape}."
            )
        if valid is None:
            valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        if valid.shape != logits.shape[:2]:
            raise ValueError(
                f"instance_valid must be [B, Q] = {tuple(logits.shape[:2])}, got {tuple(valid.shape)}."
            )
        x = logits.to(torch.promote_types(logits.dtype, torch.float32))
        x, t = x[valid.bool()], targets[valid.bool()].to(x.dtype)  # [P, H, W]
        zero = logits.sum() * 0.0
        if x.shape[0] == 0:
            return {"instance_bce": zero, "instance_dice": zero}
        bce = F.binary_cross_entropy_with_logits(x, t)
        dice = soft_dice(torch.sigmoid(x), t, (1, 2), self.smooth).mean()
        return {"instance_bce": bce, "instance_dice": dice}

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        instance_logits: Tensor | None = None,
        instance_targets: Tensor | None = None,
        instance_valid: Tensor | None = None,
        presence_logits: Tensor | None = None,
    ) -> Tensor:
        """Weighted total of :meth:`terms` (same arguments), a scalar."""
        parts = self.terms(logits, target, instance_logits, instance_targets, instance_valid, presence_logits)
        bce = parts["bce"] + parts.get("instance_bce", 0.0) + parts.get("presence_bce", 0.0)
        dice = parts["dice"] + parts.get("instance_dice", 0.0)
        return self.bce_weight * bce + self.dice_weight * dice


class CombinedLoss(nn.Module):
    """``L = seg * L_seg + attn * L_attn + contrast * L_contrast + boundary * L_boundary``.

    :meth:`forward` takes a mapping from term name (``TERMS``) to either a scalar tensor
    or a zero-argument callable returning one. A term whose weight is 0 is skipped: its
    callable is never called (so its cost is never paid) and it may be left out of the
    mapping.

    Args:
        seg: weight of ``L_seg`` (>= 0).
        attn: weight of ``L_attn`` (>= 0).
        contrast: weight of ``L_contrast`` (>= 0).
        boundary: weight of ``L_boundary`` (>= 0).

    Raises:
        ValueError: for a negative or non-finite weight, or all weights 0.

    """

    def __init__(
        self, seg: float = 1.0, attn: float = 0.1, contrast: float = 0.05, boundary: float = 0.02
    ) -> None:
        super().__init__()
        self.weights = {"seg": seg, "attn": attn, "contrast": contrast, "boundary": boundary}
        for name, value in self.weights.items():
            if not 0 <= value < float("inf"):
                raise ValueError(f"weight {name} must be finite and >= 0, got {value}.")
        if not any(self.weights.values()):
            raise ValueError("at least one weight must be > 0.")

    def forward(self, terms: Mapping[str, Tensor | Callable[[], Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum and the detached unweighted parts (plus ``"total"``) for logging.

        Raises:
            ValueError: for an unknown term, a missing term of nonzero weight or a non-scalar value.

        """
        unknown = sorted(set(terms) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; known: {', '.join(TERMS)}.")
        weighted: list[Tensor] = []
        parts: dict[str, Tensor] = {}
        for name in TERMS:
            weight = self.weights[name]
            if weight == 0:
                continue
            if name not in terms:
                raise ValueError(f"term '{name}' has weight {weight} but no value: pass it or set {name}=0.")
            value = terms[name]
            value = value() if callable(value) else value
            if not isinstance(value, Tensor) or value.dim() != 0:
                raise ValueError(f"term '{name}' must be a scalar tensor, got {value!r}.")
            weighted.append(weight * value)
            parts[name] = value.detach()
        total = functools.reduce(operator.add, weighted)  # not empty: __init__ wants a weight > 0
        parts["total"] = total.detach()
        return total, parts
