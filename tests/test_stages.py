"""The staged forward equals transformers' Sam3Model.forward, in both prompt forms."""

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ovearth.model.preprocess import preprocess
from ovearth.model.stages import Sam3Stages
from ovearth.model.testing import tiny_sam3
from ovearth.model.tokenizer import builtin_tokenizer, tokenize
from ovearth.segment.reference import geometry_prompt

from .conftest import make_image


def _model_forward(model, pixels, tokens, prompt_form):
    """Sam3Model.forward on 3 prompts: text only, or text + its own geometry encoder's empty-box output."""
    pixels = pixels.expand(3, -1, -1, -1)
    if prompt_form == "transformers":
        return model(pixel_values=pixels, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    vision = model.get_vision_features(pixels)
    features, valid = geometry_prompt(model, vision)
    text = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    prompt = BaseModelOutputWithPooling(pooler_output=torch.cat([text.pooler_output, features], 1))
    mask = torch.cat([tokens.attention_mask.bool(), valid], 1)
    return model(vision_embeds=vision, text_embeds=prompt, attention_mask=mask)


@pytest.mark.parametrize(
    ("image_size", "prompt_form"), [(336, "meta"), (336, "transformers"), (1008, "meta")]
)
def test_stages_reproduce_model_forward(image_size, prompt_form):
    model = tiny_sam3(seed=3, image_size=image_size)
    stages = Sam3Stages(model, prompt_form=prompt_form)
    image = torch.from_numpy(make_image(1, 200, 260)).permute(2, 0, 1)
    pixels = preprocess(image, image_size)[None]
    tokens = tokenize(builtin_tokenizer(), ["building", "store tank", "tree"])
    with torch.inference_mode():
        ref = _model_forward(model, pixels, tokens, prompt_form)
        vision = stages.encode_images(pixels)
        text = stages.encode_text(tokens.input_ids, tokens.attention_mask)
        fused = stages.fuse(vision, text)
        decoded = stages.decode(fused)
        pixel_embed = stages.pixel_embed(vision, fused)
        masks = stages.instance_logits(pixel_embed, decoded.queries)
        semantic = stages.semantic_logits(pixel_embed)
        one = stages.instance_logits(pixel_embed[1], decoded.queries[1, 4:5])[0]
    grid = image_size // 14
    assert fused.tokens.shape == (3, grid * grid, 32) and fused.grid == (grid, grid)
    assert vision.levels[0].shape[-1] == grid * 4 and len(vision.levels) == 3
    extra = 1 if prompt_form == "meta" else 0  # the geometry token, appended once per view
    assert fused.text.shape[1] == tokens.input_ids.shape[1] + extra
    assert (vision.prompt_token is None) == (prompt_form == "transformers")
    close = dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(decoded.query_logits, ref.pred_logits, **close)
    torch.testing.assert_close(decoded.presence_logits, ref.presence_logits[:, 0], **close)
    torch.testing.assert_close(masks, ref.pred_masks, **close)
    torch.testing.assert_close(semantic, ref.semantic_seg[:, 0], **close)
    # one query's mask computed alone equals its row of the batched masks
    torch.testing.assert_close(one, masks[1, 4])


def test_scores_follow_sam3_formula(tiny):
    stages = Sam3Stages(tiny.model)
    pixels = preprocess(torch.from_numpy(make_image(2, 120, 90)).permute(2, 0, 1), stages.image_size)[None]
    tokens = tokenize(tiny.tokenizer, ["road", "water"])
    with torch.inference_mode():
        fused = stages.fuse(
            stages.encode_images(pixels), stages.encode_text(tokens.input_ids, tokens.attention_mask)
        )
        decoded = stages.decode(fused)
    scores, presence = decoded.scores()
    torch.testing.assert_close(presence, decoded.presence_logits.sigmoid())
    torch.testing.assert_close(scores, decoded.query_logits.sigmoid() * presence[:, None])


def test_shared_first_block_gives_the_encoders_output(tiny):
    """Layer 0's prompt-free self-attention, computed once per view, changes nothing."""
    stages = Sam3Stages(tiny.model)
    pixels = preprocess(torch.from_numpy(make_image(4, 150, 120)).permute(2, 0, 1), stages.image_size)[None]
    tokens = tokenize(tiny.tokenizer, ["road", "water body", "tree"])
    with torch.inference_mode():
        vision = stages.encode_images(pixels)
        text = stages.encode_text(tokens.input_ids, tokens.attention_mask)
        plain = stages.fuse(vision, text)
        first = stages.first_self_attention(vision)
        shared = stages.fuse(vision, text, first)
    assert first.shape == (1, *plain.tokens.shape[1:])
    torch.testing.assert_close(shared.tokens, plain.tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared.pos, plain.pos, rtol=0, atol=0)
    assert torch.equal(shared.spatial_shapes, plain.spatial_shapes)
    assert not torch.equal(shared.tokens[0], shared.tokens[1])  # the prompts still differ


def test_prompt_forms_differ_and_token_depends_on_the_view_only(tiny):
    """Meta's form changes every output; its token is one per view, the same for every prompt."""
    meta, plain = Sam3Stages(tiny.model), Sam3Stages(tiny.model, prompt_form="transformers")
    images = [make_image(s, 120, 90) for s in (5, 6)]
    pixels = torch.stack([preprocess(torch.from_numpy(i).permute(2, 0, 1), meta.image_size) for i in images])
    tokens = tokenize(tiny.tokenizer, ["road", "water"])
    with torch.inference_mode():
        vision = meta.encode_images(pixels)
        text = meta.encode_text(tokens.input_ids, tokens.attention_mask)
        both = meta.fuse(vision.view(0), text)
        alone = meta.fuse(vision.view(0), text.select([1]))
        other_view = meta.fuse(vision.view(1), text.select([1]))
        without = plain.fuse(plain.encode_images(pixels[:1]), text)
    token = vision.prompt_token
    assert token.shape == (2, 1, 32) and not torch.allclose(token[0], token[1])
    torch.testing.assert_close(both.text[:, -1], token[0].expand(2, -1), rtol=0, atol=0)
    assert both.text_mask[:, -1].all()
    torch.testing.assert_close(
        alone.tokens, both.tokens[1:], rtol=0, atol=1e-6
    )  # not a function of the batch
    assert not torch.allclose(other_view.text[:, -1], alone.text[:, -1])
    assert (both.tokens - without.tokens).abs().max() > 1e-3


def test_unknown_prompt_form_is_refused(tiny):
    with pytest.raises(ValueError, match="prompt_form must be one of meta, transformers"):
        Sam3Stages(tiny.model, prompt_form="sam2")
