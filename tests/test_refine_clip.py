"""The clip refiner and its CLIP helpers, on a tiny random CLIP (64 px input, 8 x 8 patches, D = 16)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import ovearth.refine.clip as clip_refiner
from ovearth.errors import InputError, ModelNotFoundError
from ovearth.model.clip import (
    CLIP_MEAN,
    CLIP_STD,
    clip_patch_features,
    clip_text_features,
    load_clip,
    save_tiny_clip,
)
from ovearth.refine import RefineContext, parse_refine
from ovearth.refine.clip import Clip, affinity_matrix, text_gain, window_mask
from ovearth.refine.smooth import mean_filter


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    return str(save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip", seed=0))


@pytest.fixture(scope="session")
def clip(clip_dir):
    return load_clip(clip_dir)


def _view(seed: int = 0, h: int = 48, w: int = 80) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _features(clip, view, grid):
    """Upsampled, normalised CLIP features [N, D], computed here independently of the refiner."""
    patches = clip_patch_features(clip[0], view)
    up = F.interpolate(patches.permute(2, 0, 1)[None], size=grid, mode="bilinear", align_corners=False)
    return F.normalize(up[0].reshape(patches.shape[-1], -1).T, dim=-1)


def _fail(*args, **kwargs):
    raise AssertionError("CLIP must not be touched here")


def test_zero_strength_returns_the_input_without_loading_clip(monkeypatch, clip_dir):
    monkeypatch.setattr(clip_refiner, "load_clip", _fail)
    monkeypatch.setattr(clip_refiner, "clip_patch_features", _fail)
    tokens = torch.randn(2, 12, 4)
    assert Clip(w=0.0, model=clip_dir)(tokens, (3, 4), RefineContext(view=_view())) is tokens
    assert Clip(mode="text", g=0.0, model="/no/such/clip")(tokens, (3, 4), RefineContext()) is tokens


def test_patch_features_resize_the_whole_view_and_normalise(clip):
    model, _ = clip
    view = _view(h=40, w=96)  # not square: a centre crop would drop the sides
    seen = {}
    handle = model.vision_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    try:
        features = clip_patch_features(model, view)
    finally:
        handle.remove()
    expected = F.interpolate(view[None].float(), size=(64, 64), mode="bicubic", antialias=True)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(seen["pixel_values"], (expected.clamp(0, 255) / 255 - mean) / std)
    assert features.shape == (8, 8, 16) and features.dtype == torch.float32
    # Patch tokens (class token dropped) through post_layernorm and visual_projection.
    hidden = model.vision_model(pixel_values=seen["pixel_values"]).last_hidden_state[0, 1:]
    projected = model.visual_projection(model.vision_model.post_layernorm(hidden))
    torch.testing.assert_close(features, projected.detach().reshape(8, 8, 16))


def test_text_features_are_normalised_and_prompt_specific(clip):
    model, tokenizer = clip
    text = clip_text_features(model, tokenizer, ["road", "tree", "a very long prompt " * 40])
    assert text.shape == (3, 16)  # the long prompt is truncated to 77 tokens, not an error
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    assert (text[0] - text[1]).abs().max() > 1e-3


def test_load_clip_is_cached_and_reports_missing_models(clip_dir, tmp_path):
    assert load_clip(clip_dir)[0] is load_clip(clip_dir)[0]
    missing = tmp_path / "no_clip_here"
    with pytest.raises(ModelNotFoundError, match="no_clip_here"):
        load_clip(str(missing))
    tokens = torch.randn(1, 4, 2)
    with pytest.raises(ModelNotFoundError, match="no_clip_here"):
        Clip(model=str(missing))(tokens, (2, 2), RefineContext(view=_view()))
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_clip(str(tmp_path))  # a directory, but no model in it


def test_affinity_rows_sum_to_one_and_match_the_formula(clip, clip_dir):
    view, grid = _view(1), (6, 10)
    f = _features(clip, view, grid)
    a = torch.softmax(f @ f.T / 0.07, dim=-1)
    torch.testing.assert_close(affinity_matrix(f, grid, 0.07), a)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(60))
    tokens = torch.randn(3, 60, 5)
    out = Clip(w=0.3, tau=0.07, model=clip_dir)(tokens, grid, RefineContext(view=view))
    torch.testing.assert_close(out, 0.7 * tokens + 0.3 * a @ tokens, rtol=1e-5, atol=1e-5)


def test_sharp_temperature_with_distinct_features_gives_the_identity(clip, clip_dir):
    view, grid = _view(2), (8, 8)  # CLIP's own grid: 64 distinct patch embeddings
    f = _features(clip, view, grid)
    cos = f @ f.T
    assert (cos - 2 * torch.eye(64)).max() < 0.999  # distinct directions
    tokens = torch.randn(2, 64, 7)
    out = Clip(w=1.0, tau=1e-5, model=clip_dir)(tokens, grid, RefineContext(view=view))
    torch.testing.assert_close(out, tokens, rtol=1e-4, atol=1e-4)
    blurred = Clip(w=1.0, tau=10.0, model=clip_dir)(tokens, grid, RefineContext(view=view))
    assert (blurred - tokens).abs().max() > 0.5  # a soft temperature does mix


def test_identical_clip_features_average_the_grid(monkeypatch, clip_dir):
    monkeypatch.setattr(clip_refiner, "clip_patch_features", lambda model, view: torch.ones(8, 8, 16))
    grid = (5, 7)
    tokens = torch.randn(2, 35, 3)
    out = Clip(w=1.0, model=clip_dir)(tokens, grid, RefineContext(view=_view()))
    torch.testing.assert_close(out, tokens.mean(dim=1, keepdim=True).expand_as(tokens))
    # With a 3 x 3 window the same holds per window, clipped at the border (= the smooth filter).
    windowed = Clip(w=1.0, window=1, model=clip_dir)(tokens, grid, RefineContext(view=_view()))
    as_grid = tokens.transpose(1, 2).reshape(2, 3, *grid)
    expected = mean_filter(as_grid, 3).reshape(2, 3, 35).transpose(1, 2)
    torch.testing.assert_close(windowed, expected)


def test_window_restricts_the_support(clip, clip_dir):
    view, grid = _view(3), (6, 9)
    f = _features(clip, view, grid)
    a = affinity_matrix(f, grid, 0.07, window=1)
    mask = window_mask(grid, 1)
    assert mask.sum(dim=1).tolist()[:2] == [4, 6] and mask[10].sum() == 9  # corner, edge, inside
    assert (a[~mask] == 0).all() and (a[mask] > 0).all()
    torch.testing.assert_close(a.sum(dim=1), torch.ones(54))
    spike = torch.zeros(1, 54, 1)
    spike[0, 2 * 9 + 4] = 1.0  # row 2, column 4
    out = Clip(w=1.0, window=1, model=clip_dir)(spike, grid, RefineContext(view=view))[0, :, 0].reshape(grid)
    rows, cols = torch.nonzero(out, as_tuple=True)
    assert set(rows.tolist()) == {1, 2, 3} and set(cols.tolist()) == {3, 4, 5}


def test_text_gain_formula_on_hand_made_similarities():
    s = torch.tensor([[0.1, 0.3, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    factor = text_gain(s, 0.4)
    scaled = torch.tensor([0.0, 0.5, 1.0, 0.0])
    torch.testing.assert_close(factor[0], 1 + 0.4 * (scaled - scaled.mean()))
    torch.testing.assert_close(factor[1], torch.ones(4))  # flat similarity: no re-weighting
    torch.testing.assert_close(factor.mean(dim=1), torch.ones(2))


def test_text_mode_matches_the_formula_per_prompt(clip, clip_dir):
    model, tokenizer = clip
    view, grid, prompts = _view(4), (6, 10), ["road", "building"]
    f = _features(clip, view, grid)
    t = clip_text_features(model, tokenizer, prompts)
    s = t @ f.T
    low, high = s.min(dim=1, keepdim=True).values, s.max(dim=1, keepdim=True).values
    scaled = (s - low) / (high - low)
    expected_factor = 1 + 0.3 * (scaled - scaled.mean(dim=1, keepdim=True))
    tokens = torch.randn(2, 60, 4)
    out = Clip(mode="text", g=0.3, model=clip_dir)(tokens, grid, RefineContext(prompts=prompts, view=view))
    factor = out / tokens
    torch.testing.assert_close(factor, expected_factor[..., None].expand_as(tokens), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(factor.mean(dim=1), torch.ones(2, 4), rtol=1e-4, atol=1e-4)
    assert (factor[0] - factor[1]).abs().max() > 1e-3  # different prompts, different weights


def test_clip_features_are_computed_once_per_view(monkeypatch, clip_dir):
    calls = []

    def counting(model, view):
        calls.append(view)
        return clip_patch_features(model, view)

    monkeypatch.setattr(clip_refiner, "clip_patch_features", counting)
    context = RefineContext(view=_view(5), cache={})
    text = Clip(mode="text", model=clip_dir)
    for batch in (["road", "tree"], ["water"]):  # two prompt batches of one view
        context.prompts = batch
        text(torch.randn(len(batch), 20, 3), (4, 5), context)
    Clip(model=clip_dir)(torch.randn(1, 20, 3), (4, 5), context)
    Clip(model=clip_dir, window=1)(torch.randn(1, 48, 3), (6, 8), context)  # another grid, same view
    assert len(calls) == 1
    Clip(model=clip_dir)(torch.randn(1, 20, 3), (4, 5), RefineContext(view=_view(6)))  # a new view
    assert len(calls) == 2


def test_text_mode_without_prompts_says_why(clip_dir):
    with pytest.raises(ValueError, match="needs the prompt names.*fusion"):
        Clip(mode="text", model=clip_dir)(torch.randn(1, 20, 3), (4, 5), RefineContext(view=_view()))


def test_keeps_dtype_and_shape(clip_dir):
    tokens = torch.randn(2, 20, 3, dtype=torch.bfloat16)
    context = RefineContext(prompts=["a", "b"], view=_view())
    for refiner in (Clip(model=clip_dir), Clip(mode="text", model=clip_dir)):
        out = refiner(tokens, (4, 5), context)
        assert out.dtype == torch.bfloat16 and out.shape == tokens.shape


def test_grammar_builds_the_refiner_and_rejects_bad_values(clip_dir):
    pipe = parse_refine(f"clip:mode=text,g=0.3,model={clip_dir}")
    (refiner,) = pipe.refiners
    assert refiner == Clip(mode="text", g=0.3, model=clip_dir)
    assert parse_refine(pipe.spec()) == pipe
    assert parse_refine("clip:window=2").refiners[0].window == 2
    for spec, message in [
        ("clip:mode=pixels", "mode must be affinity or text"),
        ("clip:tau=0", "tau must be > 0"),
        ("clip:window=1.5", "window must be an integer"),
        ("clip:w=2", r"w must be in \[0, 1\]"),
        ("clip:gain=0.3", "no parameter 'gain'"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_refine(spec)


def test_builtins_register_clip_in_a_fresh_interpreter():
    code = "from ovearth.refine import list_refiners; assert 'clip' in list_refiners(), list_refiners()"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "spec",
    [
        "smooth:a=0",
        "lowpass:b=0",
        "laplacian:lam=0",
        "clip:w=0",
        "clip:mode=text,g=0",
        "presence:s=0",
        "attention:g=0",
    ],
)
def test_zero_strength_segmentation_is_bit_identical(tiny, spec):
    """Every refiner at strength 0 leaves the whole segmentation output bit for bit unchanged."""
    from ovearth import Segmentor
    from tests.conftest import make_image

    image = make_image(21, 80, 96)
    plain = Segmentor(tiny, "road;tree,forest;water").predict(image)
    zero = Segmentor(tiny, "road;tree,forest;water", refine=spec).predict(image)
    assert torch.equal(plain.class_logits, zero.class_logits) and torch.equal(plain.presence, zero.presence)
    assert (plain.labels == zero.labels).all()
