"""Convert Meta's original SAM 3 checkpoint (``sam3.pt``) into a ``transformers.Sam3Model`` state dict.

Layout: Meta's loader (``facebookresearch/sam3``, ``sam3/model_builder.py``: ``_load_checkpoint``)
reads ``sam3.pt`` with ``weights_only=True``, unwraps ``ckpt["model"]`` and keeps the keys prefixed
``detector.`` (the image model ``Sam3Image``) or ``tracker.`` (the video tracker). Only
``detector.*`` feeds ``Sam3Model``.

Strategy: a key loses ``detector.`` and is renamed by the first match in :data:`RENAME_RULES`,
ordered ``(meta, hf)`` templates: one ending in ``.`` is a prefix (the rest of the key, e.g.
``weight``, is kept), any other is a whole key, and ``{n}`` is a layer index. The templates compile
to regexes in both directions, so the same table gives the inverse (:func:`meta_state_dict_from_hf`).
Split rules then cut fused projections (ViT ``attn.qkv``, ``in_proj_weight/bias`` of every
``nn.MultiheadAttention``) into ``q_proj/k_proj/v_proj`` (q, k, v along dim 0), and value rules
drop the unused cls-token slot of the ViT ``pos_embed`` (Meta: ``retain_cls_token=False``) and
transpose the open_clip ``text_projection`` parameter ``(width, proj_dim)`` into a ``Linear`` weight.

Sources: ``facebookresearch/sam3``: ``sam3/model_builder.py`` and ``sam3/model/{sam3_image,
vl_combiner,vitdet,necks,text_encoder_ve,geometry_encoders,encoder,decoder,maskformer_segmentation,
model_misc}.py``; ``huggingface/transformers``: ``src/transformers/models/sam3/convert_sam3_to_hf.py``
(its internal checkpoint used the prefix ``sam3_model.``, the released file uses ``detector.``) and
``modeling_sam3.py``.

:data:`IGNORED` lists the keys dropped on purpose; any other unknown key is an error. Not verified
against the real file (it could not be downloaded here): whether ``freqs_cis`` and ``sam2_convs``
are stored (accepted, not required) and whether top-level keys other than ``detector.*`` and
``tracker.*`` exist (they would be rejected). SAM 3.1 (multiplex) checkpoints are not supported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor
from transformers import Sam3Config, Sam3Model

from ovearth.errors import CheckpointError, ModelNotFoundError

META_PREFIX = "detector."


def _under(meta: str, hf: str, *pairs: tuple[str, str]) -> list[tuple[str, str]]:
    """Rules for ``pairs`` of (Meta, HF) names below the prefixes ``meta`` and ``hf``."""
    return [(meta + m, hf + h) for m, h in pairs]


def _mlp(meta: str, hf: str, depth: int) -> list[tuple[str, str]]:
    """Rules for Meta's ``MLP.layers.{i}`` whose HF twin names its layers ``layer{i + 1}``."""
    return _under(meta, hf, *[(f"layers.{i}.", f"layer{i + 1}.") for i in range(depth)])


def _attention(meta: str, hf: str) -> list[tuple[str, str]]:
    """Rules for an ``nn.MultiheadAttention``: ``out_proj`` becomes ``o_proj`` (in_proj is split later)."""
    return [(f"{meta}out_proj.", f"{hf}o_proj."), (meta, hf)]


def _encoder_layer(meta: str, hf: str) -> list[tuple[str, str]]:
    """Rules for Meta's ``TransformerEncoderLayer`` (geometry encoder and DETR encoder)."""
    return [
        *_attention(f"{meta}self_attn.", f"{hf}self_attn."),
        *_attention(f"{meta}cross_attn_image.", f"{hf}cross_attn."),
        *_under(meta, hf, ("linear1.", "mlp.fc1."), ("linear2.", "mlp.fc2."), ("norm1.", "layer_norm1.")),
        *_under(meta, hf, ("norm2.", "layer_norm2."), ("norm3.", "layer_norm3.")),
    ]


_VIT, _TXT = "backbone.vision_backbone.trunk.", "backbone.language_backbone.encoder."
_DEC, _GEO = "transformer.decoder.", "geometry_encoder."

#: Ordered ``(meta, hf)`` templates, Meta side without ``detector.``; more specific entries first.
RENAME_RULES: tuple[tuple[str, str], ...] = (
    # ViT trunk (sam3/model/vitdet.py); patch_embed has no bias (bias_patch_embed=False).
    *_under(_VIT, "vision_encoder.backbone.",
        ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.", "embeddings.patch_embeddings.projection."), ("ln_pre.", "layer_norm."),
        ("blocks.{n}.norm1.", "layers.{n}.layer_norm1."), ("blocks.{n}.norm2.", "layers.{n}.layer_norm2."),
        ("blocks.{n}.attn.qkv.", "layers.{n}.attention.qkv."),
        ("blocks.{n}.attn.proj.", "layers.{n}.attention.o_proj."), ("blocks.{n}.mlp.", "layers.{n}.mlp."),
    ),
    # Simple FPN neck (sam3/model/necks.py), scales (4, 2, 1, 0.5); GELU and max-pool hold no weights.
    *_under("backbone.vision_backbone.convs.", "vision_encoder.neck.fpn_layers.",
        ("0.dconv_2x2_0.", "0.scale_layers.0."), ("0.dconv_2x2_1.", "0.scale_layers.2."),
        ("1.dconv_2x2.", "1.scale_layers.0."), ("{n}.conv_1x1.", "{n}.proj1."),
        ("{n}.conv_3x3.", "{n}.proj2."),
    ),
    # open_clip-style text tower (sam3/model/text_encoder_ve.py) and its resizer to d_model.
    *_under(_TXT, "text_encoder.text_model.",
        ("token_embedding.", "embeddings.token_embedding."),
        ("positional_embedding", "embeddings.position_embedding.weight"), ("ln_final.", "final_layer_norm."),
        ("transformer.resblocks.{n}.attn.", "encoder.layers.{n}.self_attn."),
        ("transformer.resblocks.{n}.ln_1.", "encoder.layers.{n}.layer_norm1."),
        ("transformer.resblocks.{n}.ln_2.", "encoder.layers.{n}.layer_norm2."),
        ("transformer.resblocks.{n}.mlp.c_fc.", "encoder.layers.{n}.mlp.fc1."),
        ("transformer.resblocks.{n}.mlp.c_proj.", "encoder.layers.{n}.mlp.fc2."),
    ),
    (f"{_TXT}text_projection", "text_encoder.text_projection.weight"),
    ("backbone.language_backbone.resizer.", "text_projection."),
    # Geometry (box prompt) encoder (sam3/model/geometry_encoders.py).
    *[(f"{_GEO}{name}.",) * 2 for name in ("label_embed", "cls_embed", "final_proj")],
    *[(f"{_GEO}boxes_{kind}_project.",) * 2 for kind in ("direct", "pool", "pos_enc")],
    *_under(_GEO, _GEO,
        ("img_pre_norm.", "vision_layer_norm."), ("norm.", "prompt_layer_norm."),
        ("encode_norm.", "output_layer_norm."),
    ),
    *_encoder_layer(f"{_GEO}encode.{{n}}.", f"{_GEO}layers.{{n}}."),
    # DETR encoder (sam3/model/encoder.py, TransformerEncoderFusion without text pooling).
    *_encoder_layer("transformer.encoder.layers.{n}.", "detr_encoder.layers.{n}."),
    # DETR decoder (sam3/model/decoder.py) with presence token and box refinement.
    *_attention(f"{_DEC}layers.{{n}}.self_attn.", "detr_decoder.layers.{n}.self_attn."),
    *_attention(f"{_DEC}layers.{{n}}.ca_text.", "detr_decoder.layers.{n}.text_cross_attn."),
    *_attention(f"{_DEC}layers.{{n}}.cross_attn.", "detr_decoder.layers.{n}.vision_cross_attn."),
    *_under(f"{_DEC}layers.{{n}}.", "detr_decoder.layers.{n}.",
        ("norm1.", "vision_cross_attn_layer_norm."), ("catext_norm.", "text_cross_attn_layer_norm."),
        ("norm2.", "self_attn_layer_norm."), ("norm3.", "mlp_layer_norm."),
        ("linear1.", "mlp.fc1."), ("linear2.", "mlp.fc2."),
    ),
    *_under(_DEC, "detr_decoder.",
        ("query_embed.", "query_embed."), ("reference_points.", "reference_points."),
        ("presence_token.", "presence_token."), ("presence_token_out_norm.", "presence_layer_norm."),
        ("norm.", "output_layer_norm."),
    ),
    *_mlp(f"{_DEC}presence_token_head.", "detr_decoder.presence_head.", 3),
    *_mlp(f"{_DEC}bbox_embed.", "detr_decoder.box_head.", 3),
    *_mlp(f"{_DEC}ref_point_head.", "detr_decoder.ref_point_head.", 2),
    *_mlp(f"{_DEC}boxRPB_embed_x.", "detr_decoder.box_rpb_embed_x.", 2),
    *_mlp(f"{_DEC}boxRPB_embed_y.", "detr_decoder.box_rpb_embed_y.", 2),
    # Dot-product scoring (sam3/model/model_misc.py: DotProductScoring).
    *_mlp("dot_prod_scoring.prompt_mlp.", "dot_product_scoring.text_mlp.", 2),
    *_under("dot_prod_scoring.", "dot_product_scoring.",
        ("prompt_mlp.out_norm.", "text_mlp_out_norm."), ("prompt_proj.", "text_proj."),
        ("hs_proj.", "query_proj."),
    ),
    # Segmentation head (sam3/model/maskformer_segmentation.py: UniversalSegmentationHead).
    *_attention("segmentation_head.cross_attend_prompt.", "mask_decoder.prompt_cross_attn."),
    *_under("segmentation_head.", "mask_decoder.",
        ("pixel_decoder.", "pixel_decoder."), ("mask_predictor.mask_embed.", "mask_embedder."),
        ("instance_seg_head.", "instance_projection."), ("semantic_seg_head.", "semantic_projection."),
        ("cross_attn_norm.", "prompt_cross_attn_norm."),
    ),
)  # fmt: skip

#: Full Meta keys dropped on purpose, with the reason.
IGNORED: tuple[tuple[str, str], ...] = (
    (r"^tracker\.", "SAM 2-style video tracker, not part of Sam3Model"),
    (r"^detector\.backbone\.vision_backbone\.sam2_convs\.", "second FPN neck, feeds the tracker only"),
    (r"^detector\.backbone\.vision_backbone\.trunk\.blocks\.\d+\.attn\.freqs_cis$", "RoPE table, recomputed"),
    (r"^detector\.geometry_encoder\.points_(direct|pool|pos_enc)_project\.", "point prompts, unsupported"),
)
_IGNORED = tuple(re.compile(pattern) for pattern, _ in IGNORED)

# Split rules: fused projection (HF-side name after renaming) -> q, k, v chunks along dim 0.
_FUSED = (
    re.compile(r"^(?P<base>vision_encoder\.backbone\.layers\.\d+\.attention\.)qkv\.(?P<param>weight|bias)$"),
    re.compile(r"^(?P<base>.+\.)in_proj_(?P<param>weight|bias)$"),
)
_FUSED_NAMES = ("{base}qkv.{param}", "{base}in_proj_{param}")
_SPLIT_PART = re.compile(r"^(?P<base>.+\.)(?P<part>[qkv])_proj\.(?P<param>weight|bias)$")


def _drop_cls_slot(pos: Tensor) -> Tensor:
    n = pos.shape[1] if pos.ndim == 3 else 0
    return pos[:, 1:].contiguous() if n > 1 and math.isqrt(n - 1) ** 2 == n - 1 else pos


def _add_cls_slot(pos: Tensor) -> Tensor:
    # Meta's trunk discards this slot (retain_cls_token=False), so zeros change nothing.
    return torch.cat([pos.new_zeros(pos.shape[0], 1, pos.shape[2]), pos], dim=1)


# Value rules keyed by HF name: (Meta -> HF, HF -> Meta).
_VALUE_RULES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "vision_encoder.backbone.embeddings.position_embeddings": (_drop_cls_slot, _add_cls_slot),
    "text_encoder.text_projection.weight": (lambda w: w.t().contiguous(),) * 2,
}


def _compile(source: str, target: str) -> tuple[re.Pattern[str], str]:
    body = r"(\d+)".join(re.escape(part) for part in source.split("{n}"))
    return re.compile("^" + body + ("" if source.endswith(".") else "$")), target.replace("{n}", r"\1")


_TO_HF = tuple(_compile(meta, hf) for meta, hf in RENAME_RULES)
_TO_META = tuple(_compile(hf, meta) for meta, hf in RENAME_RULES)


def _rename(key: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, replacement in rules:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return None


def hf_keys_for_meta_key(meta_key: str) -> tuple[str, ...] | None:
    """Name the ``Sam3Model`` weights that one Meta weight becomes.

    Args:
        meta_key: A key of ``sam3.pt``'s model dict, e.g. ``detector.transformer.decoder.norm.weight``.

    Returns:
        One HF key, three (q, k, v) for a fused projection, ``()`` for a key in :data:`IGNORED`,
        or ``None`` when the key is not a known SAM 3 image-model weight.

    """
    if any(pattern.search(meta_key) for pattern in _IGNORED):
        return ()
    hf_key = _rename(meta_key.removeprefix(META_PREFIX), _TO_HF) if meta_key.startswith(META_PREFIX) else None
    if hf_key is None:
        return None
    for pattern in _FUSED:
        if match := pattern.match(hf_key):
            return tuple(f"{match['base']}{part}_proj.{match['param']}" for part in "qkv")
    return (hf_key,)


def _meta_key(hf_key: str) -> str:
    """Name the Meta weight holding ``hf_key`` (the fused one for q/k/v); rules cover every HF key."""
    name: str | None = hf_key
    if match := _SPLIT_PART.match(hf_key):
        fused = (template.format(base=match["base"], param=match["param"]) for template in _FUSED_NAMES)
        name = next((f for f, pattern in zip(fused, _FUSED, strict=True) if pattern.match(f)), None)
    meta_key = _rename(name, _TO_META) if name else None
    if meta_key is None:
        raise CheckpointError(f"No SAM 3 conversion rule covers the Sam3Model weight {hf_key!r}.")
    return META_PREFIX + meta_key


def _expected_shapes(config: Sam3Config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory is allocated and nothing is computed
        model = Sam3Model(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _first(items: list[str], count: int = 3) -> str:
    return ", ".join(items[:count]) + (", ..." if len(items) > count else "")


def convert_meta_state_dict(
    meta_sd: Mapping[str, Tensor], config: Sam3Config, *, source: str = "The checkpoint"
) -> dict[str, Tensor]:
    """Rename and reshape Meta's SAM 3 weights into a strict ``Sam3Model`` state dict.

    Args:
        meta_sd: The flat model dict of ``sam3.pt`` (keys ``detector.*`` and ``tracker.*``).
        config: The configuration of the ``Sam3Model`` that will receive the weights.
        source: How error messages name the checkpoint (usually its path).

    Returns:
        A dict with exactly the keys and shapes of ``Sam3Model(config).state_dict()``.

    Raises:
        CheckpointError: If a key is neither mapped nor ignored, a needed weight is missing, a
            value is not a tensor, or a shape does not fit ``config``.

    """
    converted: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    bad_shapes: list[str] = []
    for key, value in meta_sd.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{source} holds a {type(value).__name__} value, not a tensor, under {key!r}."
            )
        hf_keys = hf_keys_for_meta_key(key)
        if hf_keys is None:
            unexpected.append(key)
        if not hf_keys:  # unknown (reported below) or ignored on purpose
            continue
        if len(hf_keys) == 3 and (value.ndim == 0 or value.shape[0] % 3):
            bad_shapes.append(f"{key} {tuple(value.shape)} cannot be split into q, k, v")
            continue
        for hf_key, part in zip(hf_keys, value.chunk(3) if len(hf_keys) == 3 else (value,), strict=True):
            if hf_key in converted:
                raise CheckpointError(f"{source} holds both {origin[hf_key]!r} and {key!r} for {hf_key!r}.")
            value_rule = _VALUE_RULES.get(hf_key)
            converted[hf_key], origin[hf_key] = (value_rule[0](part) if value_rule else part), key

    expected = _expected_shapes(config)
    unexpected += sorted({origin[k] for k in converted if k not in expected})
    missing = list(dict.fromkeys(_meta_key(k) for k in expected if k not in converted))
    bad_shapes += [
        f"{origin[k]} {tuple(converted[k].shape)} -> {k} expects {shape}"
        for k, shape in expected.items()
        if k in converted and tuple(converted[k].shape) != shape
    ]
    for problems, what in (
        (unexpected, "unknown weight(s) that are not on the ignore list"),
        (missing, "missing weight(s) that Sam3Model needs"),
        (bad_shapes, "weight(s) whose shape does not fit the Sam3Config"),
    ):
        if problems:
            raise CheckpointError(
                f"{source} has {len(problems)} {what} (first: {_first(problems)}), "
                "so it is not Meta's original SAM 3 checkpoint (sam3.pt) for this configuration."
            )
    return {key: converted[key] for key in expected}


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_meta_checkpoint(path: str | Path, config: Sam3Config) -> dict[str, Tensor]:
    """Read Meta's ``sam3.pt`` safely and convert it for ``Sam3Model``.

    Args:
        path: The checkpoint file (``torch.save`` of ``{"model": state_dict}`` or of a flat state dict).
        config: The configuration of the ``Sam3Model`` that will receive the weights.

    Returns:
        The HF state dict, ready for ``Sam3Model(config).load_state_dict(..., strict=True)``.

    Raises:
        ModelNotFoundError: If ``path`` is not a file.
        CheckpointError: If the file cannot be read with ``weights_only=True`` or does not convert.

    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"SAM 3 checkpoint {path} does not exist; download sam3.pt from the Hugging Face repository "
            "facebook/sam3."
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(
            f"{path} cannot be read as a PyTorch checkpoint with safe loading (weights_only=True): "
            f"{_first_line(error)}"
        ) from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__} object, not a SAM 3 state dict.")
    return convert_meta_state_dict(loaded, config, source=str(path))


def meta_state_dict_from_hf(hf_sd: Mapping[str, Tensor], config: Sam3Config) -> dict[str, Tensor]:
    """Export a ``Sam3Model`` state dict under Meta's ``sam3.pt`` names (``detector.*`` only).

    The keys in :data:`IGNORED` cannot be recreated; the cls-token slot of ``pos_embed`` is zeros.

    Args:
        hf_sd: ``Sam3Model.state_dict()`` (exactly its keys).
        config: The configuration of that model, used to check the keys and shapes.

    Returns:
        A flat dict with Meta's key names, fused q/k/v projections and Meta's tensor layouts.

    Raises:
        CheckpointError: If ``hf_sd`` does not match ``Sam3Model(config)``.

    """
    expected = _expected_shapes(config)
    wrong = sorted(set(expected) ^ set(hf_sd))
    wrong += [k for k in expected if k in hf_sd and tuple(hf_sd[k].shape) != expected[k]]
    if wrong:
        raise CheckpointError(f"The state dict does not match Sam3Model(config) (first: {_first(wrong)}).")
    meta: dict[str, Tensor] = {}
    for key, value in hf_sd.items():
        if match := _SPLIT_PART.match(key):
            if match["part"] == "q":
                parts = [hf_sd[f"{match['base']}{p}_proj.{match['param']}"] for p in "qkv"]
                meta[_meta_key(key)] = torch.cat(parts, dim=0)
        else:
            value_rule = _VALUE_RULES.get(key)
            meta[_meta_key(key)] = value_rule[1](value) if value_rule else value
    return meta
