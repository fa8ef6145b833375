"""Training losses: gradients by finite differences, hand values, sampling bounds."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch.autograd import gradcheck

from ovearth.train import (
    AttentionDistillation,
    BoundaryHinge,
    CombinedLoss,
    MaskContrastive,
    SegmentationLoss,
    mask_boundary,
    masks_on_grid,
)

GRID = (4, 4)


def _tokens(seed: int = 0, n: int = 16, c: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, c, generator=gen, dtype=torch.float64).requires_grad_(True)


def _square(size: int, lo: int, hi: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[lo:hi, lo:hi] = True
    return mask


# ---------------------------------------------------------------- gradients (float64)


@pytest.mark.parametrize("kind", ["kl", "l1", "topk", "rank"])
def test_attention_gradcheck(kind):
    attention = torch.rand(1, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    loss = AttentionDistillation(kind, k=4)
    assert gradcheck(lambda t: loss(t, attention), (_tokens(),))


def test_contrastive_gradcheck():
    masks = torch.stack([_square(4, 0, 3), _square(4, 1, 4)])[None]  # 9 inside, 7 outside each
    scores = torch.tensor([[0.9, 0.8]])
    loss = MaskContrastive(tau=0.5, samples=3)

    def fn(t):
        return loss(t, GRID, masks, scores, generator=torch.Generator().manual_seed(0))

    assert gradcheck(fn, (_tokens(),))
    assert loss.last_counts.tolist() == [[3, 3], [3, 3]]


def test_boundary_gradcheck():
    masks = _square(4, 0, 3)[None, None]
    loss = BoundaryHinge(margin=1.5)
    assert gradcheck(lambda t: loss(t, GRID, masks), (_tokens(),))
    assert loss(_tokens(), GRID, masks) > 0  # the hinge is active: the check saw real gradients


def test_segmentation_gradcheck():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    target = torch.randint(0, 3, (2, 4, 4), generator=gen)
    target[0, 0, :2] = 255
    inst = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    inst_target = torch.rand(2, 2, 4, 4, generator=gen) > 0.5
    valid = torch.tensor([[True, False], [True, True]])
    loss = SegmentationLoss(bce_weight=0.7, dice_weight=1.3)
    assert gradcheck(lambda x, y: loss(x, target, y, inst_target, valid), (logits, inst))


def test_combined_gradcheck():
    attention = torch.rand(1, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    masks = _square(4, 1, 4)[None, None]
    attn, boundary = AttentionDistillation(), BoundaryHinge(margin=1.5)
    combined = CombinedLoss(seg=0.0)

    def fn(t):
        return combined(
            {
                "attn": lambda: attn(t, attention),
                "boundary": lambda: boundary(t, GRID, masks),
                "contrast": MaskContrastive(samples=4)(
                    t, GRID, masks, torch.ones(1, 1), generator=torch.Generator().manual_seed(0)
                ),
            }
        )[0]

    assert gradcheck(fn, (_tokens(),))


# ---------------------------------------------------------------- attention distillation


def test_kl_zero_when_proportional():
    tokens = _tokens(4).detach()
    attention = 3.0 * tokens.norm(dim=-1)
    for kind in ("kl", "l1", "topk", "rank"):
        assert AttentionDistillation(kind, k=5)(tokens, attention).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_and_l1_hand_values():
    tokens = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]], dtype=torch.float64)  # e = [5, 1] -> p = [5/6, 1/6]
    attention = torch.tensor([[2.0, 2.0]], dtype=torch.float64)  # q = [1/2, 1/2]
    kl = AttentionDistillation("kl")(tokens, attention)
    assert kl.item() == pytest.approx(0.5 * math.log(0.5 / (5 / 6)) + 0.5 * math.log(0.5 / (1 / 6)))
    assert AttentionDistillation("l1")(tokens, attention).item() == pytest.approx(2 / 3)
    # the direction is KL(q || p), not KL(p || q)
    reverse = 5 / 6 * math.log((5 / 6) / 0.5) + 1 / 6 * math.log((1 / 6) / 0.5)
    assert kl.item() != pytest.approx(reverse)


def test_kl_eps_clamp():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)  # p = [1, 0]
    attention = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    value = AttentionDistillation("kl", eps=1e-6)(tokens, attention).item()
    assert value == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-6))


def test_topk_and_rank_hand_values():
    q = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    tokens = torch.tensor([[[1.0], [5.0], [2.0], [2.0]]], dtype=torch.float64)  # p = [.1, .5, .2, .2]
    # top-2 of q = {0, 1}: overlap (min(.1,.4) + min(.5,.3)) / (.4 + .3) = 4/7
    assert AttentionDistillation("topk", k=2)(tokens, q).item() == pytest.approx(3 / 7)
    increasing = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]], dtype=torch.float64)
    assert AttentionDistillation("rank")(increasing, q).item() == pytest.approx(2.0)  # anti-correlated
    assert AttentionDistillation("rank")(increasing, q.flip(-1)).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_is_a_detached_target():
    tokens = _tokens(5)
    attention = (torch.rand(1, 16, dtype=torch.float64) + 0.1).requires_grad_(True)
    AttentionDistillation()(tokens, attention).backward()
    assert attention.grad is None and tokens.grad is not None


def test_attention_bad_inputs():
    with pytest.raises(ValueError, match="kind must be one of"):
        AttentionDistillation("cosine")
    with pytest.raises(ValueError, match="nonnegative"):
        AttentionDistillation()(torch.ones(1, 2, 3), torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match=r"attention \[B, N\]"):
        AttentionDistillation()(torch.ones(1, 2, 3), torch.ones(1, 3))


# ---------------------------------------------------------------- boundary hinge


def test_boundary_is_the_ring():
    boundary = mask_boundary(_square(6, 1, 5))
    ring = _square(6, 1, 5) & ~_square(6, 2, 4)
    assert boundary.sum() == 12 and torch.equal(boundary, ring)
    full = mask_boundary(torch.ones(6, 6, dtype=torch.bool))  # the grid border counts as outside
    assert full.sum() == 20 and not full[1:5, 1:5].any()


def test_masks_on_grid_resizes_by_area():
    image = torch.zeros(1, 1, 12, 12)
    image[..., 3:9, 3:9] = 1.0  # cells (1..2, 1..2) fully inside on a 4 x 4 grid
    image[..., 0:3, 0:1] = 1.0  # a third of cell (0, 0): not inside
    assert torch.equal(masks_on_grid(image, GRID)[0, 0], _square(4, 1, 3))
    assert torch.equal(masks_on_grid(image > 0.5, GRID), masks_on_grid(image, GRID))


def test_boundary_hinge_zero_when_far():
    tokens = torch.eye(36, dtype=torch.float64)[None]  # every token orthogonal to its neighbours: d = 1
    masks = _square(6, 1, 5)[None, None]
    assert BoundaryHinge(margin=0.9)(tokens, (6, 6), masks).item() == 0.0


def test_boundary_hinge_positive_when_smooth():
    masks = _square(6, 1, 5)[None, None]
    constant = torch.ones(1, 36, 4, dtype=torch.float64)
    assert BoundaryHinge(margin=0.3)(constant, (6, 6), masks).item() == pytest.approx(0.3)
    tokens = torch.eye(36, dtype=torch.float64)[None]
    i, j = 1, 2  # a boundary cell of the ring; set it to the mean of its 8 neighbours
    neighbours = [(y, x) for y in range(i - 1, i + 2) for x in range(j - 1, j + 2) if (y, x) != (i, j)]
    tokens[0, i * 6 + j] = torch.stack([tokens[0, y * 6 + x] for y, x in neighbours]).mean(0)
    assert BoundaryHinge(margin=0.1)(tokens, (6, 6), masks).item() == pytest.approx(0.1 / 12)


def test_boundary_hinge_image_resolution_masks():
    tokens = _tokens(6).detach()
    grid_mask = _square(4, 0, 3)[None, None]
    image_mask = grid_mask.repeat_interleave(3, -1).repeat_interleave(3, -2)
    loss = BoundaryHinge(margin=1.0)
    assert loss(tokens, GRID, image_mask).item() == pytest.approx(loss(tokens, GRID, grid_mask).item())


def test_boundary_hinge_no_boundary_is_zero_with_grad():
    tokens = _tokens(7)
    value = BoundaryHinge()(tokens, GRID, torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.equal(tokens.grad, torch.zeros_like(tokens))


# ---------------------------------------------------------------- mask contrastive


def _two_region_tokens(aligned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    basis = torch.eye(8)
    tokens = torch.where(mask.reshape(64, 1), basis[0], basis[1]) + 0.05 * torch.randn(64, 8, generator=gen)
    if not aligned:
        tokens = tokens[torch.randperm(64, generator=gen)]
    return tokens[None], mask[None, None]


def test_infonce_lower_when_aligned():
    loss = MaskContrastive(tau=0.1, samples=16)
    scores = torch.ones(1, 1)
    values = []
    for aligned in (True, False):
        tokens, masks = _two_region_tokens(aligned)
        values.append(loss(tokens, (8, 8), masks, scores, generator=torch.Generator().manual_seed(0)).item())
    assert values[0] < 0.01 < values[1] - 1.0


def test_contrastive_deterministic_and_seeded():
    tokens, masks = _two_region_tokens(False)
    scores = torch.ones(1, 1)
    loss = MaskContrastive(samples=5)
    first, second = (
        loss(tokens, (8, 8), masks, scores, generator=torch.Generator().manual_seed(3)) for _ in range(2)
    )
    assert first.item() == second.item()
    a, b = MaskContrastive(samples=5, seed=11), MaskContrastive(samples=5, seed=11)
    assert [a(tokens, (8, 8), masks, scores).item() for _ in range(3)] == [
        b(tokens, (8, 8), masks, scores).item() for _ in range(3)
    ]


def test_contrastive_picks_top_scored_qualifying_masks():
    tokens = _tokens(9).detach()
    masks = torch.stack(
        [torch.ones(4, 4, dtype=torch.bool), _square(4, 0, 2), _square(4, 0, 3), _square(4, 1, 2)]
    )[None]  # the full mask has no outside patch: never used
    scores = torch.tensor([[0.99, 0.5, 0.9, 0.7]])
    loss = MaskContrastive(top_k=2, samples=64)
    loss(tokens, GRID, masks, scores, generator=torch.Generator().manual_seed(0))
    assert loss.last_masks.tolist() == [[0, 2], [0, 3]]
    assert loss.last_counts.tolist() == [[9, 7], [1, 15]]  # fewer than `samples` exist: all are taken


def test_contrastive_no_mask_is_zero_with_grad():
    tokens = _tokens(10)
    masks = torch.stack([torch.zeros(4, 4), torch.ones(4, 4)])[None]
    value = MaskContrastive()(tokens, GRID, masks, torch.ones(1, 2))
    value.backward()
    assert value.item() == 0.0 and value.requires_grad and tokens.grad.abs().sum() == 0
    empty = MaskContrastive()(tokens, GRID, masks[:, :0], torch.ones(1, 0))
    assert empty.shape == () and empty.item() == 0.0


def test_contrastive_sampling_is_bounded_on_a_full_grid():
    gen = torch.Generator().manual_seed(12)
    tokens = torch.randn(2, 72 * 72, 64, generator=gen).requires_grad_(True)
    masks = torch.zeros(2, 10, 288, 288)
    for b in range(2):
        for m in range(10):
            y, x = torch.randint(0, 200, (2,), generator=gen).tolist()
            masks[b, m, y : y + 40 + 4 * m, x : x + 60] = 0.9
    masks[0, 0] = 0.0
    masks[0, 0, :8, :8] = 1.0  # 2 x 2 grid cells: only 4 positives exist
    loss = MaskContrastive(top_k=8, samples=64)
    start = time.perf_counter()
    value = loss(
        tokens, (72, 72), masks, torch.rand(2, 10, generator=gen) + (torch.arange(10) == 0), generator=gen
    )
    value.backward()
    assert time.perf_counter() - start < 10.0
    counts = loss.last_counts
    assert counts.shape == (16, 2) and bool((counts <= 64).all()) and bool((counts >= 1).all())
    assert [0, 0] in loss.last_masks.tolist()
    assert counts[loss.last_masks.tolist().index([0, 0])].tolist() == [4, 64]
    assert torch.isfinite(value) and torch.isfinite(tokens.grad).all()


# ---------------------------------------------------------------- segmentation


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_segmentation_hand_values():
    target = torch.tensor([[[0, 1], [1, 255]]])
    loss = SegmentationLoss()
    parts = loss.terms(torch.zeros(1, 2, 2, 2), target)
    assert parts["bce"].item() == pytest.approx(math.log(2))
    # class 0: inter .5, sum p 1.5, sum t 1; class 1: inter 1, sum p 1.5, sum t 2
    assert parts["dice"].item() == pytest.approx(((1 - 2 / 3.5) + (1 - 3 / 4.5)) / 2)
    logits = torch.tensor([[[[2.0, -2.0], [-2.0, 0.0]], [[-2.0, 2.0], [2.0, 0.0]]]])
    parts = loss.terms(logits, target)
    s = _sigmoid(2.0)
    assert parts["bce"].item() == pytest.approx(math.log(1 + math.exp(-2)))
    dice = ((1 - (2 * s + 1) / (4 - s)) + (1 - (4 * s + 1) / (4 + s))) / 2
    assert parts["dice"].item() == pytest.approx(dice)
    assert loss(logits, target).item() == pytest.approx(math.log(1 + math.exp(-2)) + dice)
    assert SegmentationLoss(bce_weight=0.0, dice_weight=2.0)(logits, target).item() == pytest.approx(2 * dice)


def test_segmentation_ignores_label_255():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(2, 3, 5, 5, generator=gen).requires_grad_(True)
    target = torch.randint(0, 3, (2, 5, 5), generator=gen)
    target[:, :2] = 255
    loss = SegmentationLoss()
    base = loss(logits, target)
    base.backward()
    changed = logits.detach().clone()
    changed[:, :, :2] = 50.0 * torch.randn(2, 3, 2, 5, generator=gen)
    assert loss(changed, target).item() == pytest.approx(base.item())
    assert logits.grad[:, :, :2].abs().sum() == 0 and logits.grad[:, :, 2:].abs().sum() > 0
    assert loss(logits, torch.full_like(target, 255)).item() == 0.0


def test_segmentation_dice_over_present_classes():
    gen = torch.Generator().manual_seed(14)
    logits = torch.randn(1, 2, 4, 4, generator=gen)
    target = torch.randint(0, 2, (1, 4, 4), generator=gen)
    extra = torch.cat([logits, torch.randn(1, 1, 4, 4, generator=gen)], dim=1)  # class 2 absent
    present = SegmentationLoss(dice_classes="present")
    assert present.terms(extra, target)["dice"].item() == pytest.approx(
        present.terms(logits, target)["dice"].item()
    )
    every = SegmentationLoss(dice_classes="all")
    assert every.terms(extra, target)["dice"].item() != pytest.approx(
        every.terms(logits, target)["dice"].item()
    )


def test_instance_terms_hand_values_and_validity():
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    inst_target = torch.zeros(1, 2, 2, 2)
    inst_target[0, 0, 0, 0] = 1.0
    inst_logits = torch.zeros(1, 2, 2, 2)
    inst_logits[0, 1] = 30.0  # unmatched pair: must not count
    valid = torch.tensor([[True, False]])
    parts = SegmentationLoss().terms(torch.zeros(1, 1, 2, 2), target, inst_logits, inst_target, valid)
    assert parts["instance_bce"].item() == pytest.approx(math.log(2))
    assert parts["instance_dice"].item() == pytest.approx(1 - (2 * 0.5 + 1) / (2 + 1 + 1))
    none = SegmentationLoss().terms(torch.zeros(1, 1, 2, 2), target, inst_logits, inst_target, valid & False)
    assert none["instance_bce"].item() == 0.0 and none["instance_dice"].item() == 0.0


def test_segmentation_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        SegmentationLoss()(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 2))


# ---------------------------------------------------------------- combined


def test_combined_is_the_weighted_sum():
    values = {
        name: torch.tensor(v, requires_grad=True)
        for name, v in zip(("seg", "attn", "contrast", "boundary"), (1.5, 2.0, 3.0, 4.0), strict=True)
    }
    total, parts = CombinedLoss()(values)
    assert total.item() == pytest.approx(1.5 + 0.1 * 2.0 + 0.05 * 3.0 + 0.02 * 4.0)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(
        {"seg": 1.5, "attn": 2.0, "contrast": 3.0, "boundary": 4.0, "total": total.item()}
    )
    assert not any(v.requires_grad for v in parts.values())
    total.backward()
    assert values["attn"].grad.item() == pytest.approx(0.1)
    total, _ = CombinedLoss(seg=2.0, attn=0.5, contrast=1.0, boundary=3.0)(values)
    assert total.item() == pytest.approx(3.0 + 1.0 + 3.0 + 12.0)


def test_combined_zero_weight_is_not_computed():
    def never() -> torch.Tensor:
        raise AssertionError("a term with weight 0 was computed")

    calls = []

    def seg() -> torch.Tensor:
        calls.append("seg")
        return torch.tensor(2.0)

    total, parts = CombinedLoss(contrast=0.0, boundary=0.0)(
        {"seg": seg, "attn": torch.tensor(1.0), "contrast": never}
    )
    assert calls == ["seg"] and set(parts) == {"seg", "attn", "total"}
    assert total.item() == pytest.approx(2.1)


def test_combined_bad_inputs():
    with pytest.raises(ValueError, match="unknown loss terms"):
        CombinedLoss()({"seg": torch.tensor(1.0), "edge": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="term 'boundary' has weight 0.02"):
        CombinedLoss()({"seg": torch.tensor(1.0), "attn": torch.tensor(1.0), "contrast": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="at least one weight"):
        CombinedLoss(0, 0, 0, 0)
    with pytest.raises(ValueError, match="weight attn"):
        CombinedLoss(attn=-1.0)


def test_losses_keep_float32_on_float32_input():
    tokens = torch.randn(1, 16, 3)
    assert AttentionDistillation()(tokens, torch.rand(1, 16) + 0.1).dtype == torch.float32
    assert BoundaryHinge()(tokens, GRID, _square(4, 0, 3)[None, None]).dtype == torch.float32
    assert (
        MaskContrastive()(tokens, GRID, _square(4, 0, 3)[None, None], torch.ones(1, 1)).dtype == torch.float32
    )
    assert (
        SegmentationLoss()(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)).dtype
        == torch.float32
    )
