"""The patch-token audit on the tiny SAM 3: roles found by tracing, not from a table."""

from __future__ import annotations

import json

import pytest
import torch

from ovearth.model.testing import tiny_sam3
from ovearth.probe.audit import run_audit
from ovearth.probe.audit_report import write_audit


@pytest.fixture(scope="module")
def model():
    return tiny_sam3(seed=0, image_size=336)


@pytest.fixture(scope="module")
def result(model):
    return run_audit(model)


def _inputs(result: dict, path: str) -> dict:
    return next(c for c in result["consumers"] if c["path"] == path)["inputs"]


def _kept(inputs: dict) -> set[str]:
    return {k for k, v in inputs.items() if v["token_axis"] == "kept"}


def test_decoder_image_cross_attention_reads_tokens_as_key_and_value_only(model, result):
    layers = len(model.detr_decoder.layers)
    assert layers == 2
    for i in range(layers):
        ins = _inputs(result, f"detr_decoder.layers.{i}.vision_cross_attn")
        assert _kept(ins) == {"key", "value"}
        assert ins["key"]["role"] == "attention key" and ins["value"]["role"] == "attention value"
        assert ins["value"]["source"] == "tokens"  # the tensor itself
        assert ins["key"]["source"] == "direct"  # tokens + position encoding
        assert ins.get("query", {}).get("token_axis") != "kept"
    # Layer 0's query does not depend on the tokens; later queries carry pooled token information.
    assert "query" not in _inputs(result, "detr_decoder.layers.0.vision_cross_attn")
    assert _inputs(result, "detr_decoder.layers.1.vision_cross_attn")["query"]["token_axis"] == "pooled"
    dec = result["decoder"]
    assert dec["vision_cross_attn_roles"] == {
        f"detr_decoder.layers.{i}.vision_cross_attn": ["key", "value"] for i in range(layers)
    }
    assert dec["other_attention_token_roles"] == {} and dec["token_axis_outputs"] == []
    assert dec["writes_back"] is False
    for c in result["consumers"]:
        if (
            ".self_attn" in c["path"]
            or ".text_cross_attn" in c["path"]
            or c["path"].startswith("dot_product")
        ):
            assert not _kept(c["inputs"]), c["path"]


def test_mask_decoder_uses_tokens_as_query_with_residual_into_pixel_decoder(result):
    ins = _inputs(result, "mask_decoder.prompt_cross_attn")
    assert _kept(ins) == {"query"} and set(ins) == {"query"}  # key/value (the prompt) are not derived
    assert ins["query"]["role"] == "attention query"
    assert result["mask_decoder"]["prompt_cross_attn_roles"] == ["query"]
    pix = _inputs(result, "mask_decoder.pixel_decoder")
    assert set(pix) == {"backbone_features[2]"}  # only the coarsest level comes from the tokens
    assert pix["backbone_features[2]"]["token_axis"] == "kept"
    assert pix["backbone_features[2]"]["layout"] == "grid x1"
    conv0 = _inputs(result, "mask_decoder.pixel_decoder.conv_layers.0")["input"]
    assert conv0["role"] == "convolution input" and conv0["token_axis"] == "kept"
    for head in ("semantic_projection", "instance_projection"):
        assert _inputs(result, f"mask_decoder.{head}")["input"]["token_axis"] == "kept"
    res = result["mask_decoder"]["residual"]
    assert res["detected"] and res["bit_exact"] and res["max_abs_diff"] == 0.0
    assert res["new_tensor"] and res["added_max_abs"] > 0
    assert res["source"] == "direct" and res["via"] == ["mask_decoder.prompt_cross_attn"]


def test_tokens_are_bit_identical_after_both_consumers(result):
    assert result["read_only"] == {
        "after_decoder": {"bit_identical": True, "version_unchanged": True},
        "after_mask_decoder": {"bit_identical": True, "version_unchanged": True},
    }
    assert result["noise_floor"] == 0.0


def test_verdicts_and_first_consumers(result):
    claim = result["claim"]
    assert claim["decoder_part"] == "holds"
    assert claim["segmentation_head_part"] == "does not hold"
    assert result["first_consumers"] == [
        "detr_decoder.layers.0.vision_cross_attn",
        "detr_decoder.layers.1.vision_cross_attn",
        "mask_decoder.prompt_cross_attn_norm",
        "mask_decoder.prompt_cross_attn",
        "mask_decoder.pixel_decoder.conv_layers.0",
    ]
    assert result["model"]["grid"] == [24, 24] and result["model"]["tokens"] == 576


def test_hooks_are_removed(model, result):
    for module in [*model.detr_decoder.modules(), *model.mask_decoder.modules()]:
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_write_audit(tmp_path, result):
    paths = write_audit(result, tmp_path / "out")
    assert paths == {"json": tmp_path / "out" / "audit.json", "md": tmp_path / "out" / "audit.md"}
    data = json.loads(paths["json"].read_text())
    assert data["claim"]["decoder_part"] == "holds"
    md = paths["md"].read_text()
    for text in (
        "Decoder part: **holds**",
        "Segmentation-head part: **does not hold**",
        "`detr_decoder.layers.1.vision_cross_attn` | 0 | `key` | attention key",
        "`mask_decoder.prompt_cross_attn` | 0 | `query` | attention query",
        "`mask_decoder.pixel_decoder.conv_layers.0` | 0 | `input` | convolution input",
        "prompt form `meta` (33 prompt tokens)",
        "`geometry_encoder.layers.0.cross_attn` (key, value)",
    ):
        assert text in md
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_unrelated_decoder_tokens_give_no_key_value_role(model, result):
    m = result["model"]
    other = torch.randn(1, m["tokens"], m["channels"], generator=torch.Generator().manual_seed(7))
    control = run_audit(model, decoder_tokens=other)
    assert all(r == [] for r in control["decoder"]["vision_cross_attn_roles"].values())
    assert not [c for c in control["consumers"] if c["path"].startswith("detr_decoder")]
    assert control["claim"]["decoder_part"] == "not shown"
    # the mask decoder still reads the traced tokens
    assert control["mask_decoder"]["prompt_cross_attn_roles"] == ["query"]
    assert control["claim"]["segmentation_head_part"] == "does not hold"


def test_audit_command(monkeypatch, capsys, tiny_dir, tmp_path):
    import json

    from tests.conftest import run_cli

    code, err = run_cli(monkeypatch, capsys, "audit", "--model", tiny_dir, "-o", tmp_path)
    assert code == 0, err
    result = json.loads((tmp_path / "audit.json").read_text())
    assert "holds" in json.dumps(result) and "does not hold" in (tmp_path / "audit.md").read_text()


def test_geometry_encoder_is_reported_as_a_reader_of_the_backbone_level(model, result):
    """Meta's prompt form: the geometry encoder's cross-attention reads the level as key and value."""
    assert result["input"]["prompt_form"] == "meta" and result["input"]["prompt_tokens"] == 33  # 32 text + 1
    readers = result["geometry_encoder"]["readers"]
    layers = len(model.geometry_encoder.layers)
    for i in range(layers):
        assert readers[f"geometry_encoder.layers.{i}.cross_attn"] == ["key", "value"]
    assert not any("self_attn" in path for path in readers)  # the prompt token attends to itself only


def test_transformers_prompt_form_has_no_geometry_reader(model, tmp_path):
    plain = run_audit(model, prompt_form="transformers")
    assert plain["geometry_encoder"] is None and plain["input"]["prompt_tokens"] == 32
    assert plain["claim"]["decoder_part"] == "holds"
    write_audit(plain, tmp_path)
    assert "does not run for a text prompt" in (tmp_path / "audit.md").read_text()
