"""Tests for the conversion of Meta's original SAM 3 checkpoint (sam3.pt) into Sam3Model weights."""

# ruff: noqa: E501  (tables of key names read better unwrapped)

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import Sam3Config, Sam3Model

from ovearth.errors import CheckpointError, ModelNotFoundError
from ovearth.model.convert import (
    convert_meta_state_dict,
    hf_keys_for_meta_key,
    load_meta_checkpoint,
    meta_state_dict_from_hf,
)


def tiny_config(image_size=336):
    grid = image_size // 14
    return Sam3Config(
        vision_config=dict(backbone_config=dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=14, window_size=8, global_attn_indexes=[1], pretrain_image_size=112), fpn_hidden_size=32, backbone_feature_sizes=[[grid*4]*2,[grid*2]*2,[grid]*2]),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32, vocab_size=49408, max_position_embeddings=32),
        geometry_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=32, num_layers=2, num_queries=20, num_attention_heads=2, intermediate_size=64),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )  # fmt: skip


def qkv(base: str, param: str) -> tuple[str, ...]:
    return tuple(f"{base}{part}_proj.{param}" for part in "qkv")


# Real key names of Meta's sam3.pt, read from facebookresearch/sam3 (sam3/model_builder.py: the file
# holds {"model": {...}} with "detector." / "tracker." prefixes; module attribute names from
# sam3/model/{sam3_image,vl_combiner,vitdet,necks,text_encoder_ve,geometry_encoders,encoder,decoder,
# maskformer_segmentation,model_misc}.py), with layer indices valid for the tiny config. Each maps to
# the Sam3Model key(s) read from transformers' modeling_sam3.py.
VIT = "detector.backbone.vision_backbone.trunk."
NECK = "detector.backbone.vision_backbone.convs."
TXT = "detector.backbone.language_backbone.encoder."
GEO = "detector.geometry_encoder."
ENC = "detector.transformer.encoder.layers.0."
DEC = "detector.transformer.decoder."
SEG = "detector.segmentation_head."
ANCHORS: list[tuple[str, tuple[str, ...]]] = [
    # ViT trunk
    (f"{VIT}patch_embed.proj.weight", ("vision_encoder.backbone.embeddings.patch_embeddings.projection.weight",)),
    (f"{VIT}pos_embed", ("vision_encoder.backbone.embeddings.position_embeddings",)),
    (f"{VIT}ln_pre.weight", ("vision_encoder.backbone.layer_norm.weight",)),
    (f"{VIT}blocks.1.attn.qkv.weight", qkv("vision_encoder.backbone.layers.1.attention.", "weight")),
    (f"{VIT}blocks.0.attn.qkv.bias", qkv("vision_encoder.backbone.layers.0.attention.", "bias")),
    (f"{VIT}blocks.1.attn.proj.weight", ("vision_encoder.backbone.layers.1.attention.o_proj.weight",)),
    (f"{VIT}blocks.0.norm1.bias", ("vision_encoder.backbone.layers.0.layer_norm1.bias",)),
    (f"{VIT}blocks.0.norm2.weight", ("vision_encoder.backbone.layers.0.layer_norm2.weight",)),
    (f"{VIT}blocks.1.mlp.fc1.weight", ("vision_encoder.backbone.layers.1.mlp.fc1.weight",)),
    (f"{VIT}blocks.1.mlp.fc2.bias", ("vision_encoder.backbone.layers.1.mlp.fc2.bias",)),
    # FPN neck (scales 4, 2, 1, 0.5)
    (f"{NECK}0.dconv_2x2_0.weight", ("vision_encoder.neck.fpn_layers.0.scale_layers.0.weight",)),
    (f"{NECK}0.dconv_2x2_1.bias", ("vision_encoder.neck.fpn_layers.0.scale_layers.2.bias",)),
    (f"{NECK}1.dconv_2x2.weight", ("vision_encoder.neck.fpn_layers.1.scale_layers.0.weight",)),
    (f"{NECK}2.conv_1x1.weight", ("vision_encoder.neck.fpn_layers.2.proj1.weight",)),
    (f"{NECK}3.conv_3x3.bias", ("vision_encoder.neck.fpn_layers.3.proj2.bias",)),
    # text encoder (open_clip style) and resizer
    (f"{TXT}token_embedding.weight", ("text_encoder.text_model.embeddings.token_embedding.weight",)),
    (f"{TXT}positional_embedding", ("text_encoder.text_model.embeddings.position_embedding.weight",)),
    (f"{TXT}transformer.resblocks.0.attn.in_proj_weight",
     qkv("text_encoder.text_model.encoder.layers.0.self_attn.", "weight")),
    (f"{TXT}transformer.resblocks.0.attn.in_proj_bias",
     qkv("text_encoder.text_model.encoder.layers.0.self_attn.", "bias")),
    (f"{TXT}transformer.resblocks.0.attn.out_proj.weight",
     ("text_encoder.text_model.encoder.layers.0.self_attn.out_proj.weight",)),
    (f"{TXT}transformer.resblocks.0.ln_1.weight", ("text_encoder.text_model.encoder.layers.0.layer_norm1.weight",)),
    (f"{TXT}transformer.resblocks.0.ln_2.bias", ("text_encoder.text_model.encoder.layers.0.layer_norm2.bias",)),
    (f"{TXT}transformer.resblocks.0.mlp.c_fc.weight", ("text_encoder.text_model.encoder.layers.0.mlp.fc1.weight",)),
    (f"{TXT}transformer.resblocks.0.mlp.c_proj.bias", ("text_encoder.text_model.encoder.layers.0.mlp.fc2.bias",)),
    (f"{TXT}ln_final.weight", ("text_encoder.text_model.final_layer_norm.weight",)),
    (f"{TXT}text_projection", ("text_encoder.text_projection.weight",)),
    ("detector.backbone.language_backbone.resizer.weight", ("text_projection.weight",)),
    # geometry encoder
    (f"{GEO}label_embed.weight", ("geometry_encoder.label_embed.weight",)),
    (f"{GEO}cls_embed.weight", ("geometry_encoder.cls_embed.weight",)),
    (f"{GEO}boxes_pool_project.weight", ("geometry_encoder.boxes_pool_project.weight",)),
    (f"{GEO}boxes_pos_enc_project.bias", ("geometry_encoder.boxes_pos_enc_project.bias",)),
    (f"{GEO}final_proj.weight", ("geometry_encoder.final_proj.weight",)),
    (f"{GEO}img_pre_norm.weight", ("geometry_encoder.vision_layer_norm.weight",)),
    (f"{GEO}norm.bias", ("geometry_encoder.prompt_layer_norm.bias",)),
    (f"{GEO}encode_norm.weight", ("geometry_encoder.output_layer_norm.weight",)),
    (f"{GEO}encode.0.cross_attn_image.in_proj_weight", qkv("geometry_encoder.layers.0.cross_attn.", "weight")),
    (f"{GEO}encode.0.self_attn.out_proj.bias", ("geometry_encoder.layers.0.self_attn.o_proj.bias",)),
    (f"{GEO}encode.0.linear1.weight", ("geometry_encoder.layers.0.mlp.fc1.weight",)),
    (f"{GEO}encode.0.norm3.weight", ("geometry_encoder.layers.0.layer_norm3.weight",)),
    # DETR encoder
    (f"{ENC}self_attn.in_proj_bias", qkv("detr_encoder.layers.0.self_attn.", "bias")),
    (f"{ENC}cross_attn_image.out_proj.weight", ("detr_encoder.layers.0.cross_attn.o_proj.weight",)),
    (f"{ENC}norm2.bias", ("detr_encoder.layers.0.layer_norm2.bias",)),
    (f"{ENC}linear2.weight", ("detr_encoder.layers.0.mlp.fc2.weight",)),
    # DETR decoder, presence token, box head
    (f"{DEC}layers.1.ca_text.in_proj_weight", qkv("detr_decoder.layers.1.text_cross_attn.", "weight")),
    (f"{DEC}layers.1.ca_text.out_proj.weight", ("detr_decoder.layers.1.text_cross_attn.o_proj.weight",)),
    (f"{DEC}layers.0.cross_attn.in_proj_bias", qkv("detr_decoder.layers.0.vision_cross_attn.", "bias")),
    (f"{DEC}layers.0.self_attn.out_proj.bias", ("detr_decoder.layers.0.self_attn.o_proj.bias",)),
    (f"{DEC}layers.0.norm1.weight", ("detr_decoder.layers.0.vision_cross_attn_layer_norm.weight",)),
    (f"{DEC}layers.0.catext_norm.bias", ("detr_decoder.layers.0.text_cross_attn_layer_norm.bias",)),
    (f"{DEC}layers.0.norm2.weight", ("detr_decoder.layers.0.self_attn_layer_norm.weight",)),
    (f"{DEC}layers.0.norm3.bias", ("detr_decoder.layers.0.mlp_layer_norm.bias",)),
    (f"{DEC}layers.1.linear1.weight", ("detr_decoder.layers.1.mlp.fc1.weight",)),
    (f"{DEC}query_embed.weight", ("detr_decoder.query_embed.weight",)),
    (f"{DEC}reference_points.weight", ("detr_decoder.reference_points.weight",)),
    (f"{DEC}presence_token.weight", ("detr_decoder.presence_token.weight",)),
    (f"{DEC}presence_token_head.layers.2.weight", ("detr_decoder.presence_head.layer3.weight",)),
    (f"{DEC}presence_token_out_norm.weight", ("detr_decoder.presence_layer_norm.weight",)),
    (f"{DEC}norm.weight", ("detr_decoder.output_layer_norm.weight",)),
    (f"{DEC}bbox_embed.layers.0.weight", ("detr_decoder.box_head.layer1.weight",)),
    (f"{DEC}ref_point_head.layers.1.bias", ("detr_decoder.ref_point_head.layer2.bias",)),
    (f"{DEC}boxRPB_embed_x.layers.0.weight", ("detr_decoder.box_rpb_embed_x.layer1.weight",)),
    (f"{DEC}boxRPB_embed_y.layers.1.bias", ("detr_decoder.box_rpb_embed_y.layer2.bias",)),
    # dot-product scoring
    ("detector.dot_prod_scoring.prompt_mlp.layers.0.weight", ("dot_product_scoring.text_mlp.layer1.weight",)),
    ("detector.dot_prod_scoring.prompt_mlp.out_norm.weight", ("dot_product_scoring.text_mlp_out_norm.weight",)),
    ("detector.dot_prod_scoring.prompt_proj.bias", ("dot_product_scoring.text_proj.bias",)),
    ("detector.dot_prod_scoring.hs_proj.weight", ("dot_product_scoring.query_proj.weight",)),
    # segmentation head: pixel decoder, mask embedder, prompt cross-attention
    (f"{SEG}pixel_decoder.conv_layers.2.weight", ("mask_decoder.pixel_decoder.conv_layers.2.weight",)),
    (f"{SEG}pixel_decoder.norms.0.bias", ("mask_decoder.pixel_decoder.norms.0.bias",)),
    (f"{SEG}mask_predictor.mask_embed.layers.1.weight", ("mask_decoder.mask_embedder.layers.1.weight",)),
    (f"{SEG}instance_seg_head.weight", ("mask_decoder.instance_projection.weight",)),
    (f"{SEG}semantic_seg_head.bias", ("mask_decoder.semantic_projection.bias",)),
    (f"{SEG}cross_attend_prompt.in_proj_weight", qkv("mask_decoder.prompt_cross_attn.", "weight")),
    (f"{SEG}cross_attend_prompt.out_proj.bias", ("mask_decoder.prompt_cross_attn.o_proj.bias",)),
    (f"{SEG}cross_attn_norm.weight", ("mask_decoder.prompt_cross_attn_norm.weight",)),
]  # fmt: skip

# Real Meta keys that Sam3Model has no place for and that must be dropped, not reported.
IGNORED_ANCHORS = [
    "tracker.maskmem_backbone.mask_downsampler.encoder.0.weight",
    "tracker.sam_mask_decoder.iou_token.weight",
    "tracker.no_mem_embed",
    "detector.backbone.vision_backbone.sam2_convs.0.dconv_2x2_0.weight",
    "detector.backbone.vision_backbone.trunk.blocks.0.attn.freqs_cis",
    "detector.geometry_encoder.points_direct_project.weight",
    "detector.geometry_encoder.points_pool_project.bias",
    "detector.geometry_encoder.points_pos_enc_project.weight",
]

# Meta's naming, one pattern per module family (written from Meta's code, not from convert.py).
_PARAM = r"\.(weight|bias)"
_MHA = r"(in_proj_(weight|bias)|out_proj\.(weight|bias))"
_ENC_LAYER = rf"((self_attn|cross_attn_image)\.{_MHA}|(linear[12]|norm[123]){_PARAM})"
META_NAME_PATTERNS = [
    rf"^{re.escape(VIT)}(pos_embed|patch_embed\.proj\.weight|ln_pre{_PARAM})$",
    rf"^{re.escape(VIT)}blocks\.\d+\.(norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12]){_PARAM}$",
    rf"^{re.escape(NECK)}\d\.(dconv_2x2(_[01])?|conv_1x1|conv_3x3){_PARAM}$",
    rf"^{re.escape(TXT)}(token_embedding\.weight|positional_embedding|text_projection|ln_final{_PARAM})$",
    rf"^{re.escape(TXT)}transformer\.resblocks\.\d+\.(attn\.{_MHA}|(ln_[12]|mlp\.c_fc|mlp\.c_proj){_PARAM})$",
    rf"^detector\.backbone\.language_backbone\.resizer{_PARAM}$",
    rf"^{re.escape(GEO)}((label_embed|cls_embed)\.weight|(boxes_(direct|pool|pos_enc)_project|final_proj){_PARAM})$",
    rf"^{re.escape(GEO)}(norm|img_pre_norm|encode_norm){_PARAM}$",
    rf"^{re.escape(GEO)}encode\.\d+\.{_ENC_LAYER}$",
    rf"^detector\.transformer\.encoder\.layers\.\d+\.{_ENC_LAYER}$",
    rf"^{re.escape(DEC)}layers\.\d+\.((self_attn|ca_text|cross_attn)\.{_MHA}|(norm[123]|catext_norm|linear[12]){_PARAM})$",
    rf"^{re.escape(DEC)}((query_embed|reference_points|presence_token)\.weight|(norm|presence_token_out_norm){_PARAM})$",
    rf"^{re.escape(DEC)}(bbox_embed|presence_token_head|ref_point_head|boxRPB_embed_[xy])\.layers\.\d{_PARAM}$",
    rf"^detector\.dot_prod_scoring\.(prompt_mlp\.layers\.\d|prompt_mlp\.out_norm|prompt_proj|hs_proj){_PARAM}$",
    rf"^{re.escape(SEG)}(pixel_decoder\.(conv_layers|norms)\.\d|mask_predictor\.mask_embed\.layers\.\d){_PARAM}$",
    rf"^{re.escape(SEG)}(instance_seg_head|semantic_seg_head|cross_attn_norm){_PARAM}$",
    rf"^{re.escape(SEG)}cross_attend_prompt\.{_MHA}$",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    """A seeded tiny Sam3Model, its config, HF state dict and the Meta-named export of it."""
    torch.manual_seed(0)
    config = tiny_config()
    model = Sam3Model(config).eval()
    hf_sd = {k: v.clone() for k, v in model.state_dict().items()}
    return config, model, hf_sd, meta_state_dict_from_hf(hf_sd, config)


def save_checkpoint(path: Path, meta_sd: dict) -> Path:
    torch.save({"model": meta_sd}, path)
    return path


@pytest.mark.parametrize(("meta_key", "hf_keys"), ANCHORS, ids=[a[0] for a in ANCHORS])
def test_anchor_key_names(meta_key, hf_keys):
    assert hf_keys_for_meta_key(meta_key) == hf_keys


def test_anchor_values_through_convert(tiny):
    config, _, hf_sd, meta = tiny
    converted = convert_meta_state_dict(meta, config)
    for meta_key, hf_keys in ANCHORS:
        assert meta_key in meta, meta_key
        source = meta[meta_key]
        if len(hf_keys) == 3:  # fused q, k, v stacked along dim 0 in this order
            expected = source.chunk(3, dim=0)
        elif meta_key.endswith("text_projection"):  # open_clip parameter (width, proj_dim)
            expected = (source.t(),)
        elif meta_key.endswith("pos_embed"):  # leading cls-token slot, unused by SAM 3
            assert source.shape[1] == hf_sd[hf_keys[0]].shape[1] + 1
            expected = (source[:, 1:],)
        else:
            expected = (source,)
        for hf_key, value in zip(hf_keys, expected, strict=True):
            assert torch.equal(converted[hf_key], value), hf_key
            assert torch.equal(converted[hf_key], hf_sd[hf_key]), hf_key


def test_ignored_and_unknown_keys():
    for key in IGNORED_ANCHORS:
        assert hf_keys_for_meta_key(key) == (), key
    for key in [
        "detector.foo.bar",
        "backbone.vision_backbone.trunk.pos_embed",
        "detector.transformer.decoder",
    ]:
        assert hf_keys_for_meta_key(key) is None, key


def test_round_trip_through_file_is_bit_identical(tiny, tmp_path):
    config, model, hf_sd, meta = tiny
    with_tracker = dict(meta)
    for key in IGNORED_ANCHORS:
        with_tracker[key] = torch.randn(4, 4)
    path = save_checkpoint(tmp_path / "sam3.pt", with_tracker)

    loaded = load_meta_checkpoint(path, config)
    torch.manual_seed(123)
    fresh = Sam3Model(config).eval()
    fresh.load_state_dict(loaded, strict=True)
    assert all(torch.equal(loaded[k], hf_sd[k]) for k in hf_sd)

    torch.manual_seed(1)
    pixel_values = torch.randn(1, 3, 336, 336)
    input_ids = torch.randint(0, 49408, (2, 32))
    attention_mask = torch.ones(2, 32, dtype=torch.long)
    attention_mask[1, 7:] = 0
    # Sam3Model pairs images and prompts one to one, so the image is repeated for both prompts.
    inputs = dict(
        pixel_values=pixel_values.expand(2, -1, -1, -1), input_ids=input_ids, attention_mask=attention_mask
    )
    with torch.no_grad():
        expected, actual = model(**inputs), fresh(**inputs)
    for name in ("pred_masks", "pred_logits", "presence_logits", "semantic_seg"):
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name


def test_flat_state_dict_file_also_loads(tiny, tmp_path):
    config, _, hf_sd, meta = tiny
    torch.save(meta, tmp_path / "flat.pt")
    loaded = load_meta_checkpoint(tmp_path / "flat.pt", config)
    assert loaded.keys() == hf_sd.keys()


def test_exported_names_follow_meta_naming(tiny):
    _, _, _, meta = tiny
    patterns = [re.compile(p) for p in META_NAME_PATTERNS]
    used = set()
    for key in meta:
        hits = [i for i, p in enumerate(patterns) if p.match(key)]
        assert hits, f"not a Meta-style name: {key}"
        used.update(hits)
        for hf_word in (
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "layer_norm",
            "vision_encoder",
            "detr_",
            "text_model",
        ):
            assert hf_word not in key, key
    assert used == set(range(len(patterns)))


def test_text_projection_keeps_open_clip_layout():
    config = tiny_config()
    config.text_config.projection_dim = 16
    torch.manual_seed(0)
    hf_sd = Sam3Model(config).state_dict()
    meta = meta_state_dict_from_hf(hf_sd, config)
    assert tuple(meta[f"{TXT}text_projection"].shape) == (32, 16)  # (width, output_dim)
    converted = convert_meta_state_dict(meta, config)
    assert torch.equal(
        converted["text_encoder.text_projection.weight"], hf_sd["text_encoder.text_projection.weight"]
    )


def one_sentence_naming(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message and message.endswith(".")
    return message


def test_unexpected_key_names_the_file(tiny, tmp_path):
    config, _, _, meta = tiny
    path = save_checkpoint(tmp_path / "extra.pt", {**meta, "detector.foo.bar": torch.zeros(3)})
    with pytest.raises(CheckpointError) as error:
        load_meta_checkpoint(path, config)
    assert "detector.foo.bar" in one_sentence_naming(error, path)


def test_missing_key_names_the_file(tiny, tmp_path):
    config, _, _, meta = tiny
    missing = f"{VIT}blocks.1.attn.qkv.weight"
    path = save_checkpoint(tmp_path / "missing.pt", {k: v for k, v in meta.items() if k != missing})
    with pytest.raises(CheckpointError) as error:
        load_meta_checkpoint(path, config)
    assert missing in one_sentence_naming(error, path)


def test_shape_mismatch_names_the_file(tiny, tmp_path):
    config, _, _, meta = tiny
    key = f"{DEC}query_embed.weight"
    path = save_checkpoint(tmp_path / "shape.pt", {**meta, key: torch.zeros(21, 32)})
    with pytest.raises(CheckpointError) as error:
        load_meta_checkpoint(path, config)
    assert key in one_sentence_naming(error, path)

    fused = f"{TXT}transformer.resblocks.0.attn.in_proj_weight"
    path = save_checkpoint(tmp_path / "fused.pt", {**meta, fused: torch.zeros(95, 32)})
    with pytest.raises(CheckpointError) as error:
        load_meta_checkpoint(path, config)
    assert fused in one_sentence_naming(error, path)


def test_unreadable_or_absent_file(tmp_path):
    config = tiny_config()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as error:
        load_meta_checkpoint(garbage, config)
    assert str(garbage) in str(error.value)
    with pytest.raises(ModelNotFoundError):
        load_meta_checkpoint(tmp_path / "absent.pt", config)
