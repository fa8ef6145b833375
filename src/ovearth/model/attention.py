"""Collect the DETR decoder's image cross-attention without changing the forward.

``DecoderAttention(model)`` is a context manager. While active, a forward pre-hook on
every decoder layer's ``vision_cross_attn`` reads the call's query, key and attention
mask (the box relative-position bias) and recomputes the attention probabilities from
the module's own projections:

    A = softmax(q_proj(query) k_proj(key)^T * head_dim^-1/2 + mask)   per head,

shape ``[B, H, Q + 1, N]`` per layer, where row 0 is the presence token (it attends to
all image tokens with a zero bias) and rows 1..Q are the object queries. The model's
own computation is untouched (the outputs stay bit-identical); the probabilities are
computed a second time, in float32, on the side, without autograd (a training loss
that uses them treats them as a fixed target).

Aggregations (each normalised to sum to 1 over the ``N`` patches):

* ``patch_weights("queries")``: mean over layers, object queries and heads - the
  user's ``w_patch``;
* ``patch_weights("presence")``: the presence token's row, mean over layers and heads;
* ``patch_weights("scored", scores, keep)``: object queries weighted by their scores,
  kept queries only (falls back to ``"queries"`` for a prompt that keeps none).
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import Tensor
from transformers import Sam3Model

KINDS = ("queries", "presence", "scored")


class DecoderAttention:
    """Context manager recording ``[B, H, Q + 1, N]`` per decoder layer.

    Args:
        model: the SAM 3 model.
        keep_full: keep every layer's full probabilities (memory ``L*B*H*(Q+1)*N``
            floats); otherwise only the per-layer sums needed by :meth:`patch_weights`.

    """

    def __init__(self, model: Sam3Model, keep_full: bool = False) -> None:
        self.layers = list(model.detr_decoder.layers)
        self.keep_full = keep_full
        self.full: list[Tensor] = []  # [B, H, Q+1, N] per layer (keep_full)
        self.query_mean: list[Tensor] = []  # [B, N]: mean over heads and object queries
        self.presence: list[Tensor] = []  # [B, N]: presence row, mean over heads
        self.per_query: list[Tensor] = []  # [B, Q, N]: mean over heads
        self._handles: list = []

    def __enter__(self) -> DecoderAttention:
        for layer in self.layers:
            self._handles.append(
                layer.vision_cross_attn.register_forward_pre_hook(self._record, with_kwargs=True)
            )
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, trace: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @torch.no_grad()
    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        probs = attention_probs(module, kwargs["query"], kwargs["key"], kwargs.get("attention_mask"))
        if self.keep_full:
            self.full.append(probs)
        self.presence.append(probs[:, :, 0].mean(dim=1))
        per_query = probs[:, :, 1:].mean(dim=1)
        self.per_query.append(per_query)
        self.query_mean.append(per_query.mean(dim=1))

    def maps(self) -> Tensor:
        """Full probabilities ``[L, B, H, Q + 1, N]`` (needs ``keep_full=True``)."""
        if not self.keep_full:
            raise ValueError("DecoderAttention(keep_full=True) is needed for the full maps.")
        return torch.stack(self.full)

    def patch_weights(
        self, kind: str = "queries", scores: Tensor | None = None, keep: Tensor | None = None
    ) -> Tensor:
        """Patch importance ``[B, N]``, summing to 1 over ``N`` (see the module docstring).

        Args:
            kind: ``"queries"``, ``"presence"`` or ``"scored"``.
            scores: ``[B, Q]`` instance scores (``"scored"`` only).
            keep: ``[B, Q]`` bool kept queries (``"scored"`` only).

        """
        if not self.query_mean:
            raise ValueError("No decoder pass was recorded.")
        if kind == "queries":
            weights = torch.stack(self.query_mean).mean(dim=0)
        elif kind == "presence":
            weights = torch.stack(self.presence).mean(dim=0)
        elif kind == "scored":
            if scores is None or keep is None:
                raise ValueError("patch_weights('scored') needs scores and keep.")
            per_query = torch.stack(self.per_query).mean(dim=0)  # [B, Q, N]
            factor = (scores * keep).float()
            fallback = factor.sum(dim=1, keepdim=True) == 0
            factor = torch.where(fallback, torch.ones_like(factor), factor)
            weights = (per_query * factor[..., None]).sum(dim=1)
        else:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got '{kind}'.")
        return weights / weights.sum(dim=-1, keepdim=True)


def attention_probs(module: torch.nn.Module, query: Tensor, key: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax attention probabilities of a ``Sam3Attention`` call: ``[B, H, Lq, Lk]`` float32."""
    batch, lq, lk = query.shape[0], query.shape[1], key.shape[1]
    heads, dim = module.num_attention_heads, module.head_dim
    q = module.q_proj(query).view(batch, lq, heads, dim).transpose(1, 2).float()
    k = module.k_proj(key).view(batch, lk, heads, dim).transpose(1, 2).float()
    logits = q @ k.transpose(-1, -2) * module.scaling
    if mask is not None:
        logits = logits + (mask.float() if mask.dtype != torch.bool else torch.where(mask, 0.0, -torch.inf))
    return logits.softmax(dim=-1)
