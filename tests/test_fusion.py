"""SegEarth-OV3's fusion rules on inputs with known answers."""

import torch

from ovearth.segment.fusion import (
    instance_max,
    labels_from_logits,
    names_to_classes,
    resize,
    semantic_probs,
)


def test_instance_max_is_max_of_sigmoid_times_score():
    masks = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 100.0), torch.full((2, 2), -100.0)])
    masks[0, 0, 0] = 100.0  # sigmoid -> 1 at one pixel of instance 0
    scores = torch.tensor([0.9, 0.6, 0.99])
    out = instance_max(masks, scores, (2, 2))
    expected = torch.tensor([[0.9, 0.6], [0.6, 0.6]])  # 0.5 * 0.9 = 0.45 < 0.6 elsewhere
    torch.testing.assert_close(out, expected)


def test_instance_max_without_instances_is_zero_and_chunking_is_invisible():
    assert instance_max(torch.zeros(0, 4, 4), torch.zeros(0), (8, 8)).eq(0).all()
    generator = torch.Generator().manual_seed(0)
    masks, scores = torch.randn(37, 6, 5, generator=generator), torch.rand(37, generator=generator)
    # vectorised sigmoid may round its tail elements differently: 1e-6, not bit-equality
    torch.testing.assert_close(
        instance_max(masks, scores, (12, 9), chunk=1),
        instance_max(masks, scores, (12, 9), chunk=16),
        rtol=0,
        atol=1e-6,
    )


def test_semantic_probs_resizes_then_applies_sigmoid():
    logits = torch.tensor([[[0.0, 2.0], [-2.0, 0.0]]])
    torch.testing.assert_close(semantic_probs(logits, (2, 2)), logits.sigmoid())
    # Bilinear, align_corners=False: upsampling a 1x2 row [a, b] to 4 gives a, .75a+.25b, .25a+.75b, b
    up = resize(torch.tensor([[[0.0, 4.0]]]), (1, 4))
    torch.testing.assert_close(up, torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))
    # sigmoid(resize(x)) differs from resize(sigmoid(x)): the order is part of the rule
    x = torch.tensor([[[-6.0, 6.0]]])
    assert not torch.allclose(semantic_probs(x, (1, 4)), resize(x.sigmoid(), (1, 4)))


def test_names_to_classes_takes_max_over_synonyms():
    logits = torch.tensor([[[0.1]], [[0.7]], [[0.3]], [[0.2]]])  # names: a, a', b, c
    out = names_to_classes(logits, [0, 0, 1, 2], 3)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([0.7, 0.3, 0.2]))


def test_labels_argmax_and_background_threshold():
    logits = torch.tensor(
        [
            [[0.9, 0.05], [0.3, 0.4]],
            [[0.1, 0.04], [0.3, 0.6]],
        ]
    )
    labels = labels_from_logits(logits.clone(), prob_thd=0.1, bg_idx=5)
    # pixel (0,1): max 0.05 < 0.1 -> bg; pixel (1,0): tie -> first class
    assert labels.tolist() == [[0, 5], [0, 1]]
    assert labels_from_logits(logits.clone(), prob_thd=0.0, bg_idx=5).tolist() == [[0, 0], [0, 1]]


def test_finish_gives_class_max_labels_and_nodata():
    import numpy as np

    from ovearth.segment.fusion import finish, scores_for_writing

    names = torch.tensor([[[0.1, 0.6]], [[0.3, 0.2]], [[0.05, 0.7]]])  # 3 names, 1 x 2 pixels
    valid = np.array([[True, False]])
    class_logits, labels = finish(names, valid, [0, 1, 0], 2, prob_thd=0.35, bg_idx=1)
    torch.testing.assert_close(class_logits, torch.tensor([[[0.1, 0.7]], [[0.3, 0.2]]]))
    assert labels.dtype == np.uint8 and labels.tolist() == [[1, 255]]  # 0.3 < 0.35 -> bg_idx; nodata -> 255
    scores = scores_for_writing(class_logits, valid)
    assert np.isnan(scores[:, 0, 1]).all() and scores[1, 0, 0] == np.float32(0.3)
    assert not torch.isnan(class_logits).any()  # the prediction's own logits keep their values
