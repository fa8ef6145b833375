"""The staged forward equals transformers' Sam3Model.forward."""

import pytest
import torch

from ovearth.model.stages import Sam3Stages
from ovearth.model.testing import tiny_sam3
from ovearth.model.tokenizer import builtin_tokenizer, tokenize
from ovearth.segment.preprocess import preprocess

from .conftest import make_image


@pytest.mark.parametrize("image_size", [336, 1008])
def test_stages_reproduce_model_forward(image_size):
    model = tiny_sam3(seed=3, image_size=image_size)
    stages = Sam3Stages(model)
    image = torch.from_numpy(make_image(1, 200, 260)).permute(2, 0, 1)
    pixels = preprocess(image, image_size)[None]
    tokens = tokenize(builtin_tokenizer(), ["building", "store tank", "tree"])
    with torch.inference_mode():
        ref = model(
            pixel_values=pixels.expand(3, -1, -1, -1),
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
        )
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
