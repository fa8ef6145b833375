"""SAM 3's detector forward, split into named stages.

``transformers.Sam3Model.forward`` runs everything for one batch of (image, prompt)
pairs. For semantic segmentation with many class names we want each stage run once at
the right granularity, so this module calls the model's own sub-modules in the same
order, with the same arguments:

======================  ===========================================  =================
stage                   computes                                     runs
======================  ===========================================  =================
``encode_images``       ViT backbone + FPN neck (levels 4x, 2x, 1x)  once per view
                        + the geometry prompt token (Meta's form)
``encode_text``         CLIP text encoder + projection               once per prompt
``fuse``                DETR fusion encoder (image tokens x text)    per view x prompt
``decode``              DETR decoder: query scores and presence      per view x prompt
``pixel_embed``         mask decoder prompt cross-attn + pixel FPN   per view x prompt
``semantic_logits``     semantic head on the pixel embedding         per view x prompt
``instance_logits``     mask logits for selected queries only        per kept query
======================  ===========================================  =================

Nothing here re-implements a layer: each stage is a thin call of ``Sam3Model``'s
sub-modules, so converted or fine-tuned weights behave exactly as in ``Sam3Model``.
The fourth FPN level (0.5x) that ``Sam3Model`` computes and then discards is skipped.

**Prompt form.** Meta's ``Sam3Image`` (and so SegEarth-OV3 and every published number)
appends to the text tokens the geometry encoder's output for an *empty* box prompt: its
CLS token, which cross-attends to the view's coarsest FPN level. The prompt every stage
after the text encoder reads is therefore ``T`` text tokens + 1 token (``"meta"``, the
default). ``transformers``' ``Sam3Model.forward`` skips the geometry encoder when no box
is given (``"transformers"``). The token depends on the view only, so it is computed
once per view in :meth:`Sam3Stages.encode_images` and appended in :meth:`Sam3Stages.fuse`;
``decode`` and ``pixel_embed`` read the prompt that ``fuse`` passed on.

Between ``fuse`` and the two consumers of its tokens (``decode`` and ``pixel_embed``)
sits the refinement seam: callers may hand different token tensors to each.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import Sam3Model
from transformers.masking_utils import create_bidirectional_mask

from ..constants import PROMPT_FORMS
from .features import DecoderOutput, FusedTokens, TextFeatures, VisionFeatures


class Sam3Stages:
    """Run ``Sam3Model``'s detector stage by stage.

    Args:
        model: a ``transformers.Sam3Model`` in eval mode. Its device and dtype are used
            for every stage; nothing here names a device.
        compile_backbone: run the ViT backbone through ``torch.compile``.
        checkpoint_fusion: under autograd, recompute fusion-encoder layers 1.. in the
            backward pass instead of storing their activations (gradient checkpointing,
            for training; applies to :meth:`fuse` with ``shared``).
        prompt_form: ``"meta"`` (default: text + the geometry encoder's token for an
            empty box prompt, as Meta's ``sam3``) or ``"transformers"`` (text only).

    Raises:
        ValueError: unknown ``prompt_form``.

    """

    def __init__(
        self,
        model: Sam3Model,
        compile_backbone: bool = False,
        checkpoint_fusion: bool = False,
        prompt_form: str = "meta",
    ) -> None:
        if prompt_form not in PROMPT_FORMS:
            raise ValueError(f"prompt_form must be one of {', '.join(PROMPT_FORMS)}, got '{prompt_form}'.")
        self.model = model
        self.checkpoint_fusion = checkpoint_fusion
        self.prompt_form = prompt_form
        backbone = model.vision_encoder.backbone
        # torch.compile wraps without changing the module (the loaded model stays plain)
        self._backbone = torch.compile(backbone) if compile_backbone else backbone

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        """Square input size the backbone expects (1008 for SAM 3)."""
        size = self.model.config.vision_config.backbone_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def encode_images(self, pixel_values: Tensor) -> VisionFeatures:
        """ViT backbone and the three FPN levels the detector reads.

        Args:
            pixel_values: ``[V, 3, S, S]`` normalised images, ``S = image_size``.

        Returns:
            Features of the ``V`` views, with the geometry prompt token in Meta's form.

        """
        vision = self.model.vision_encoder
        hidden = self._backbone(pixel_values).last_hidden_state  # [V, h*w, D]
        patch = vision.config.backbone_config.patch_size
        h, w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        spatial = hidden.view(hidden.shape[0], h, w, -1).permute(0, 3, 1, 2)
        neck = vision.neck
        levels, pos = [], []
        for layer in neck.fpn_layers[:-1]:  # the 0.5x level is unused by the detector
            level = layer(spatial)
            levels.append(level)
            pos.append(neck.position_encoding(level.shape, level.device, level.dtype))
        return self.with_coarsest(VisionFeatures(levels=levels, pos=pos), levels[-1])

    def with_coarsest(self, vision: VisionFeatures, level: Tensor) -> VisionFeatures:
        """``vision`` with its coarsest level replaced by ``level`` ``[V, C, h, w]``.

        The geometry prompt token reads that level, so it is computed from ``level``
        (Meta's form): every reader of the 72 x 72 level sees the same tokens, e.g. a
        refinement applied to the backbone level.
        """
        token = self.prompt_token(level, vision.pos[-1]) if self.prompt_form == "meta" else None
        return VisionFeatures(levels=[*vision.levels[:-1], level], pos=vision.pos, prompt_token=token)

    def prompt_token(self, level: Tensor, pos: Tensor) -> Tensor:
        """The geometry encoder's output for an empty box prompt (Meta's extra prompt token).

        With no box, ``Sam3GeometryEncoder`` encodes only its CLS token:
        ``x = prompt_layer_norm(final_proj(cls_embed))``, then each layer
        ``x += self_attn(norm1(x))`` (one token: its own value), ``x += cross_attn(q =
        norm2(x), k = level + pos, v = level)``, ``x += mlp(norm3(x))``, and finally
        ``output_layer_norm(x)``. The box branch (``roi_align``) has nothing to pool.

        Args:
            level: ``[V, C, h, w]`` the coarsest FPN level.
            pos: ``[V or 1, C, h, w]`` its position encoding.

        Returns:
            ``[V, 1, C]``, one token per view.

        """
        geo = self.model.geometry_encoder
        views = level.shape[0]
        hidden = geo.cls_embed.weight[None].expand(views, -1, -1)  # [V, 1, C]
        hidden = geo.prompt_layer_norm(geo.final_proj(hidden))
        feats = level.flatten(2).transpose(1, 2)
        pos_flat = pos.flatten(2).transpose(1, 2).expand(views, -1, -1)
        for layer in geo.layers:
            hidden = layer(
                prompt_feats=hidden, vision_feats=feats, vision_pos_encoding=pos_flat, prompt_mask=None
            )
        return geo.output_layer_norm(hidden)

    def prompt(self, vision: VisionFeatures, text: TextFeatures) -> TextFeatures:
        """The prompt the detector reads: ``text`` plus the view's geometry token, if any.

        Args:
            vision: features of one view (broadcast) or of ``B`` views.
            text: ``B`` prompts, ``[B, T, C]``.

        Returns:
            ``[B, T + 1, C]`` with the token last and always valid (Meta's form), or
            ``text`` itself (``"transformers"`` form).

        """
        token = vision.prompt_token
        if token is None:
            return text
        batch = text.features.shape[0]
        token = token.expand(batch, -1, -1) if token.shape[0] != batch else token
        valid = torch.ones(batch, 1, dtype=torch.bool, device=text.mask.device)
        return TextFeatures(torch.cat([text.features, token], 1), torch.cat([text.mask, valid], 1))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """CLIP text encoder plus the projection to the detector width.

        Args:
            input_ids: ``[P, T]`` token ids.
            attention_mask: ``[P, T]`` 1 on real tokens, 0 on padding.

        Returns:
            Text features of the ``P`` prompts.

        """
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return TextFeatures(features=out.pooler_output, mask=attention_mask.bool())

    def first_self_attention(self, vision: VisionFeatures) -> Tensor:
        """The fusion encoder's first block, which does not see the prompt.

        Layer 0 starts with ``x + self_attn(q = k = norm1(x) + pos, v = norm1(x))`` on
        the image tokens alone; the prompt enters only at its cross-attention. Computed
        once per view, it serves every prompt (pass it to :meth:`fuse` as ``shared``).

        Returns:
            ``[V, N, C]`` tokens after that block.

        """
        layer = self.model.detr_encoder.layers[0]
        tokens = vision.levels[-1].flatten(2).transpose(1, 2)
        pos = vision.pos[-1].flatten(2).transpose(1, 2)
        normed = layer.layer_norm1(tokens)
        attended, _ = layer.self_attn(query=normed + pos, key=normed + pos, value=normed)
        return layer.dropout(attended) + tokens

    def fuse(self, vision: VisionFeatures, text: TextFeatures, shared: Tensor | None = None) -> FusedTokens:
        """Fusion encoder: the coarsest image level attends to each prompt.

        Args:
            vision: features of ONE view (batch 1) or of ``B`` views (batch ``B``).
            text: ``B`` prompts (text features from :meth:`encode_text`); a single view
                is broadcast to all of them. The view's prompt token is appended here.
            shared: :meth:`first_self_attention` of ``vision``; when given, layer 0
                continues from it (cross-attention and MLP) instead of recomputing it
                for every prompt. Equal results; the plain call is the encoder's forward.

        Returns:
            Fused tokens of the ``B`` (view, prompt) pairs.

        """
        text = self.prompt(vision, text)
        batch = text.features.shape[0]
        level, pos = vision.levels[-1], vision.pos[-1]
        if level.shape[0] != batch:
            level = level.expand(batch, -1, -1, -1)
            pos = pos.expand(batch, -1, -1, -1)
        if shared is not None:
            return self._fuse_from_shared(level, pos, text, shared.expand(batch, -1, -1))
        out = self.model.detr_encoder(
            vision_features=[level],
            text_features=text.features,
            vision_pos_embeds=[pos],
            text_mask=text.mask,
        )
        return FusedTokens(
            tokens=out.last_hidden_state,
            pos=out.pos_embeds_flattened,
            text=out.text_features,
            text_mask=text.mask,
            spatial_shapes=out.spatial_shapes,
        )

    def _fuse_from_shared(
        self, level: Tensor, pos: Tensor, text: TextFeatures, hidden: Tensor
    ) -> FusedTokens:
        """``Sam3DetrEncoder.forward`` with layer 0's self-attention block already done."""
        encoder = self.model.detr_encoder
        tokens = level.flatten(2).transpose(1, 2)
        pos_flat = pos.flatten(2).transpose(1, 2)
        mask = create_bidirectional_mask(
            config=encoder.config,
            inputs_embeds=tokens,
            attention_mask=text.mask,
            encoder_hidden_states=text.features,
        )
        first = encoder.layers[0]  # its cross-attention and MLP blocks, as in its forward
        normed = first.layer_norm2(hidden)
        attended, _ = first.cross_attn(
            query=normed, key=text.features, value=text.features, attention_mask=mask
        )
        hidden = first.dropout(attended) + hidden
        hidden = first.dropout(first.mlp(first.layer_norm3(hidden))) + hidden
        inputs = dict(prompt_feats=text.features, vision_pos_encoding=pos_flat, prompt_cross_attn_mask=mask)
        for layer in encoder.layers[1:]:
            if self.checkpoint_fusion and torch.is_grad_enabled():
                hidden = checkpoint(layer, hidden, use_reentrant=False, **inputs)
            else:
                hidden = layer(hidden, **inputs)
        shape = torch.tensor([level.shape[-2:]], dtype=torch.long, device=level.device)
        return FusedTokens(
            tokens=hidden, pos=pos_flat, text=text.features, text_mask=text.mask, spatial_shapes=shape
        )

    def decode(self, fused: FusedTokens, tokens: Tensor | None = None) -> DecoderOutput:
        """DETR decoder (queries + presence token) and dot-product query scoring.

        Args:
            fused: fusion-encoder output.
            tokens: ``[B, N, C]`` image tokens to attend to; ``fused.tokens`` if None
                (the refinement seam: pass refined tokens here).

        Returns:
            Last-layer query states, query logits and presence logits.

        """
        model = self.model
        out = model.detr_decoder(
            vision_features=fused.tokens if tokens is None else tokens,
            text_features=fused.text,
            vision_pos_encoding=fused.pos,
            text_mask=fused.text_mask,
            spatial_shapes=fused.spatial_shapes,
        )
        last = out.intermediate_hidden_states[-1:]  # [1, B, Q, C]: scoring is per layer
        logits = model.dot_product_scoring(
            decoder_hidden_states=last, text_features=fused.text, text_mask=fused.text_mask
        )
        return DecoderOutput(
            queries=last[0],
            query_logits=logits[0, ..., 0],
            presence_logits=out.presence_logits[-1, :, 0],
        )

    def pixel_embed(self, vision: VisionFeatures, fused: FusedTokens, tokens: Tensor | None = None) -> Tensor:
        """Mask decoder up to the pixel embedding.

        The fused tokens are the *query* of a cross-attention to the prompt; the result is
        added back as a residual, reshaped to the grid and used as the coarsest level of
        the pixel decoder (FPN 4x / 2x / 1x), as in ``Sam3MaskDecoder``.

        Args:
            vision: features of one view (batch 1, broadcast) or of ``B`` views.
            fused: fusion-encoder output for ``B`` pairs (gives the prompt features).
            tokens: ``[B, N, C]`` tokens to use instead of ``fused.tokens`` (refinement seam).

        Returns:
            ``[B, C, 4h, 4w]`` pixel embedding.

        """
        dec = self.model.mask_decoder
        hidden = fused.tokens if tokens is None else tokens
        normed = dec.prompt_cross_attn_norm(hidden)
        attn_mask = create_bidirectional_mask(
            config=dec.config,
            inputs_embeds=normed,
            encoder_hidden_states=fused.text,
            attention_mask=fused.text_mask,
        )
        attended, _ = dec.prompt_cross_attn(
            query=normed, key=fused.text, value=fused.text, attention_mask=attn_mask
        )
        hidden = hidden + dec.prompt_cross_attn_dropout(attended)
        h, w = fused.grid
        coarse = hidden.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], h, w)
        # Broadcasting adds the shared finer levels (batch 1) to every prompt's pyramid.
        return dec.pixel_decoder([*vision.levels[:-1], coarse])

    def semantic_logits(self, pixel_embed: Tensor) -> Tensor:
        """Semantic head: ``[B, C, H, W] -> [B, H, W]`` logits."""
        return self.model.mask_decoder.semantic_projection(pixel_embed)[:, 0]

    def instance_logits(self, pixel_embed: Tensor, queries: Tensor) -> Tensor:
        """Mask logits of selected queries.

        Args:
            pixel_embed: ``[C, H, W]`` pixel embedding of one (view, prompt) pair, or
                ``[B, C, H, W]`` with ``queries`` ``[B, K, C]``.
            queries: ``[K, C]`` (or ``[B, K, C]``) decoder query states to turn into masks.

        Returns:
            ``[K, H, W]`` (or ``[B, K, H, W]``) mask logits, equal to the rows of
            ``Sam3MaskDecoder``'s ``pred_masks`` for those queries.

        """
        dec = self.model.mask_decoder
        batched = pixel_embed.dim() == 4
        embed = pixel_embed if batched else pixel_embed[None]
        instance = dec.instance_projection(embed)
        mask_embed = dec.mask_embedder(queries if batched else queries[None])
        masks = torch.einsum("bqc,bchw->bqhw", mask_embed, instance)
        return masks if batched else masks[0]
