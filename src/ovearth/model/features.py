"""What the stages of :class:`~ovearth.model.stages.Sam3Stages` hand each other, with their shapes.

:class:`VisionFeatures` (FPN levels and the geometry prompt token of ``V`` views),
:class:`TextFeatures` (``B`` prompts), :class:`FusedTokens` (the fusion encoder's output,
the refinement seam) and :class:`DecoderOutput` (queries, their scores, presence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class VisionFeatures:
    """Backbone features of a batch of views.

    Attributes:
        levels: FPN levels used by the detector, fine to coarse:
            ``[V, C, 4h, 4w]``, ``[V, C, 2h, 2w]``, ``[V, C, h, w]`` (``h = w = 72`` for
            a 1008 input with patch 14).
        pos: sine position encodings matching ``levels`` (same shapes).
        prompt_token: ``[V, 1, C]`` the geometry encoder's output for an empty box prompt
            (Meta's prompt form), or None (``"transformers"`` form).

    """

    levels: list[Tensor]
    pos: list[Tensor]
    prompt_token: Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` of the patch-token grid (the coarsest level)."""
        return int(self.levels[-1].shape[-2]), int(self.levels[-1].shape[-1])

    def view(self, index: int) -> VisionFeatures:
        """Features of one view, keeping a batch axis of size 1."""
        token = self.prompt_token
        return VisionFeatures(
            levels=[t[index : index + 1] for t in self.levels],
            pos=[t[index : index + 1] for t in self.pos],
            prompt_token=None if token is None else token[index : index + 1],
        )


@dataclass
class TextFeatures:
    """Projected text features of a batch of prompts.

    Attributes:
        features: ``[P, T, C]`` text tokens projected to the detector width (after
            :meth:`Sam3Stages.prompt`, ``T + 1`` tokens with the geometry token last).
        mask: ``[P, T]`` bool, True on real tokens, False on padding.

    """

    features: Tensor
    mask: Tensor

    def select(self, index: slice | Tensor | list[int]) -> TextFeatures:
        """A subset of prompts, in the given order."""
        return TextFeatures(self.features[index], self.mask[index])

    @staticmethod
    def cat(parts: list[TextFeatures]) -> TextFeatures:
        """Concatenate prompt batches along the prompt axis."""
        return TextFeatures(torch.cat([p.features for p in parts]), torch.cat([p.mask for p in parts]))


@dataclass
class FusedTokens:
    """Output of the fusion encoder for ``B`` (view, prompt) pairs.

    Attributes:
        tokens: ``[B, N, C]`` image tokens after fusion with the prompt (``N = h * w``).
        pos: ``[B, N, C]`` flattened position encodings of the tokens.
        text: ``[B, T, C]`` the prompt as the encoder passes it on (text tokens, plus the
            geometry token in Meta's form).
        text_mask: ``[B, T]`` bool padding mask of ``text``.
        spatial_shapes: ``[1, 2]`` long, the grid ``(h, w)`` as the decoder expects it.

    """

    tokens: Tensor
    pos: Tensor
    text: Tensor
    text_mask: Tensor
    spatial_shapes: Tensor

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` of the token grid."""
        return int(self.spatial_shapes[0, 0]), int(self.spatial_shapes[0, 1])

    def select(self, index: Tensor) -> FusedTokens:
        """The (view, prompt) pairs at ``index`` (a 1-D long tensor)."""
        return FusedTokens(
            tokens=self.tokens[index],
            pos=self.pos[index],
            text=self.text[index],
            text_mask=self.text_mask[index],
            spatial_shapes=self.spatial_shapes,
        )


@dataclass
class DecoderOutput:
    """Last-layer decoder outputs for ``B`` (view, prompt) pairs.

    Attributes:
        queries: ``[B, Q, C]`` normalised query states of the last layer.
        query_logits: ``[B, Q]`` class logits (dot product with the pooled prompt).
        presence_logits: ``[B]`` presence logit of the last layer.

    """

    queries: Tensor
    query_logits: Tensor
    presence_logits: Tensor

    def scores(self) -> tuple[Tensor, Tensor]:
        """SAM 3 instance scores.

        Returns:
            ``(scores [B, Q], presence [B])`` with ``presence = sigmoid(presence_logit)``
            and ``scores = sigmoid(query_logit) * presence``.

        """
        presence = self.presence_logits.sigmoid()
        return self.query_logits.sigmoid() * presence[:, None], presence
