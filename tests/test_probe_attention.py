"""The decoder attention collector, and the two-pass refiners that read it."""

import pytest
import torch

from ovearth import Segmentor
from ovearth.model.attention import DecoderAttention
from ovearth.model.preprocess import preprocess
from ovearth.model.stages import Sam3Stages
from ovearth.refine import RefineContext, parse_refine
from tests.conftest import make_image
from tests.test_segmentor import CLASSES, assert_same_prediction


def fused_batch(tiny, names=("road", "tree", "water")):
    stages = Sam3Stages(tiny.model)
    seg = Segmentor(tiny, ";".join(names))
    pixels = preprocess(torch.from_numpy(make_image(3, 90, 120)).permute(2, 0, 1), stages.image_size)[None]
    with torch.inference_mode():
        return stages, stages.fuse(stages.encode_images(pixels), seg.text_features)


def test_collector_changes_nothing_and_matches_eager_attention(tiny):
    stages, fused = fused_batch(tiny)
    with torch.inference_mode():
        plain = stages.decode(fused)
        with DecoderAttention(tiny.model, keep_full=True) as probe:
            probed = stages.decode(fused)
    for a, b in ((plain.query_logits, probed.query_logits), (plain.presence_logits, probed.presence_logits)):
        assert torch.equal(a, b)
    maps = probe.maps()
    layers = len(tiny.model.detr_decoder.layers)
    heads = tiny.model.config.detr_decoder_config.num_attention_heads
    assert maps.shape == (layers, 3, heads, 21, 24 * 24)  # [L, B, H, Q + 1, N]
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    # the same probabilities as the eager kernel returns (switched on only for this check)
    config = tiny.model.detr_decoder.config
    eager, saved = [], config._attn_implementation
    hooks = [
        layer.vision_cross_attn.register_forward_hook(lambda m, a, out: eager.append(out[1]))
        for layer in tiny.model.detr_decoder.layers
    ]
    try:
        config._attn_implementation = "eager"
        with torch.inference_mode():
            stages.decode(fused)
    finally:
        config._attn_implementation = saved
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(maps, torch.stack(eager).float(), rtol=0, atol=1e-5)


def test_patch_weight_aggregations(tiny):
    stages, fused = fused_batch(tiny)
    with torch.inference_mode(), DecoderAttention(tiny.model, keep_full=True) as probe:
        stages.decode(fused)
    maps = probe.maps()
    torch.testing.assert_close(
        probe.patch_weights("queries"),
        maps[:, :, :, 1:].mean(dim=(0, 2, 3)) / maps[:, :, :, 1:].mean(dim=(0, 2, 3)).sum(-1, keepdim=True),
    )
    torch.testing.assert_close(probe.patch_weights("presence").sum(-1), torch.ones(3))
    scores, keep = torch.rand(3, 20), torch.zeros(3, 20, dtype=torch.bool)
    keep[0, 3] = True
    scored = probe.patch_weights("scored", scores, keep)
    one = maps[:, 0, :, 4].mean(dim=(0, 1))  # query 3 is row 4 (row 0 is presence)
    torch.testing.assert_close(scored[0], one / one.sum())
    torch.testing.assert_close(scored[1], probe.patch_weights("queries")[1])  # none kept: fallback


def test_presence_and_attention_formulas():
    tokens = torch.randn(2, 12, 4)
    context = RefineContext(presence_logits=torch.tensor([0.0, 2.0]))
    out = parse_refine("presence")(tokens, (3, 4), context)
    torch.testing.assert_close(out, tokens * torch.tensor([0.5, torch.tensor(2.0).sigmoid()])[:, None, None])
    half = parse_refine("presence:s=0.5")(tokens, (3, 4), context)
    torch.testing.assert_close(half, tokens * (0.5 + 0.5 * context.presence_logits.sigmoid())[:, None, None])
    weights = torch.softmax(torch.randn(2, 12), dim=-1)
    context.patch_weights = {"queries": weights}
    out = parse_refine("attention:g=0.5")(tokens, (3, 4), context)
    torch.testing.assert_close(out, tokens * (1 + 0.5 * (weights * 12 - 1))[..., None])
    uniform = RefineContext(patch_weights={"queries": torch.full((2, 12), 1 / 12)})
    torch.testing.assert_close(parse_refine("attention:g=3")(tokens, (3, 4), uniform), tokens)
    for spec in ("presence:s=0", "attention:g=0"):
        assert parse_refine(spec)(tokens, (3, 4), RefineContext()) is tokens


@pytest.mark.parametrize("spec", ["presence", "attention:g=0.8", "attention:g=0.5,by=presence+smooth:a=0.2"])
def test_two_pass_refiners_fast_equals_reference(tiny, spec):
    image = make_image(14, 96, 96)
    fast = Segmentor(tiny, CLASSES, refine=spec).predict(image)
    ref = Segmentor(tiny, CLASSES, refine=spec, mode="reference").predict(image)
    assert_same_prediction(fast, ref)
    plain = Segmentor(tiny, CLASSES).predict(image)
    assert (fast.class_logits - plain.class_logits).abs().max() > 1e-4


def test_tokens_report(monkeypatch, capsys, tiny_dir, samples, tmp_path):
    import json
    import sys

    from safetensors.torch import load_file

    from ovearth.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "ovearth",
            "tokens",
            str(samples / "RGB.byte.tif"),
            "--classes",
            "water;land",
            "--refine",
            "lowpass:r=3,b=1",
            "--model",
            str(tiny_dir),
            "-o",
            str(tmp_path),
        ],
    )
    main()
    summary = json.loads((tmp_path / "tokens.json").read_text())
    water = summary["per_class"]["water"]
    assert water["high_freq_after"] < 0.5 * water["high_freq_before"]  # a strong low-pass removes the highs
    arrays = load_file(tmp_path / "tokens.safetensors")
    assert arrays["energy_before"].shape == (2, 24, 24) and arrays["logit_change"].shape == (2, 718, 791)
    assert (tmp_path / "tokens.png").stat().st_size > 5000 and "labels change" in capsys.readouterr().err
