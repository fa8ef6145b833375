"""Training parts: trainable selection, LoRA, adapters, targets, the per-view step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ovearth import InputError, load_model
from ovearth.errors import CheckpointError
from ovearth.model.preprocess import preprocess
from ovearth.model.stages import Sam3Stages
from ovearth.model.testing import tiny_sam3
from ovearth.model.tokenizer import tokenize
from ovearth.segment.vocabulary import Vocabulary
from ovearth.train import SegmentationLoss
from ovearth.train.adapter import (
    LoRALinear,
    Trainable,
    adapted,
    apply_adapter,
    prepare_trainable,
    release_trainable,
    save_adapter,
    trainable_tensors,
)
from ovearth.train.loop import lr_factor, step_views
from ovearth.train.settings import TrainSettings
from ovearth.train.step import TrainStep
from ovearth.train.targets import class_masks, components, instance_pairs, match
from tests.conftest import make_image

VOCAB = Vocabulary.parse("background;building,house;road;tree")


def _text(loaded, stages):
    tokens = tokenize(loaded.tokenizer, VOCAB.names)
    with torch.no_grad():
        return stages.encode_text(tokens.input_ids, tokens.attention_mask)


def _view(seed=0, size=(48, 56)):
    image = torch.from_numpy(make_image(seed, *size)).permute(2, 0, 1)
    label = torch.from_numpy(np.random.default_rng(seed).integers(0, len(VOCAB), size)).long()
    label[:4, :4] = 255
    return preprocess(image, 336, torch.float32)[None], label


def _step(loaded, model=None, **settings):
    stages = Sam3Stages(model or loaded.model, checkpoint_fusion=settings.get("checkpointing", False))
    text = _text(loaded, stages)
    prepared = TrainSettings(**settings)
    return TrainStep(stages, text, VOCAB.name_class, len(VOCAB), prepared, confidence=0.1)


def _fused(model, loaded, pixels):
    stages = Sam3Stages(model)
    with torch.no_grad():
        vision = stages.encode_images(pixels)
        return stages.fuse(vision, _text(loaded, stages), stages.first_self_attention(vision)).tokens


# ---------------------------------------------------------------- trainable parts


def test_trainable_specs_parse_and_refuse():
    assert Trainable.parse("fusion-last-2") == Trainable("fusion-last", last=2)
    assert Trainable.parse("LoRA", rank=4, alpha=8).to_dict() == {
        "trainable": "lora",
        "rank": 4,
        "alpha": 8.0,
    }
    for bad in ("decoder", "fusion-last-0", "fusion-last-x"):
        with pytest.raises(InputError, match="not one of fusion"):
            Trainable.parse(bad)
    with pytest.raises(InputError, match="lora-rank"):
        Trainable.parse("lora", rank=0)
    with pytest.raises(InputError, match="only 1 layer"):
        prepare_trainable(tiny_sam3(image_size=336), Trainable.parse("fusion-last-2"))


@pytest.mark.parametrize("spec", ["fusion", "fusion-last-1", "lora"])
def test_frozen_parameters_get_no_gradient(tiny_dir, spec):
    loaded = load_model(tiny_dir)
    model = tiny_sam3(seed=1, image_size=336, fusion_layers=2)  # last-1 leaves one layer frozen
    params = prepare_trainable(model, Trainable.parse(spec))
    step = _step(loaded, model)
    loss, parts = step(*_view())
    assert parts["masks"] > 0 and all(parts[t] > 0 for t in ("seg", "attn", "contrast", "boundary"))
    loss.backward()
    for name, p in model.named_parameters():
        if name in params:
            assert p.grad is not None, name
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    assert any(float(p.grad.abs().sum()) > 0 for p in params.values())
    names = list(params)
    if spec == "fusion-last-1":
        assert names and all(n.startswith("detr_encoder.layers.1.") for n in names)
    if spec == "lora":
        assert names and all(n.endswith((".lora_A", ".lora_B")) for n in names)


def test_lora_starts_as_identity_merges_exactly_and_releases(tiny_dir, tmp_path):
    loaded = load_model(tiny_dir)
    pixels, _ = _view()
    before = _fused(loaded.model, loaded, pixels)
    original = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    params = prepare_trainable(loaded.model, Trainable.parse("lora", rank=4, alpha=8))
    assert torch.equal(_fused(loaded.model, loaded, pixels), before)  # B = 0: nothing changes yet
    with torch.no_grad():
        for name, p in params.items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    wrapped = _fused(loaded.model, loaded, pixels)
    assert (wrapped - before).abs().max() > 1e-3
    meta = {**Trainable.parse("lora", rank=4, alpha=8).to_dict(), "base_fingerprint": loaded.fingerprint}
    save_adapter(tmp_path / "adapter", trainable_tensors(loaded.model), meta)
    release_trainable(loaded.model, {})
    assert not any(isinstance(m, LoRALinear) for m in loaded.model.modules())
    assert all(torch.equal(v, original[k]) for k, v in loaded.model.state_dict().items())

    merged = apply_adapter(load_model(tiny_dir), tmp_path)  # the run folder works as well as adapter/
    torch.testing.assert_close(_fused(merged.model, merged, pixels), wrapped, atol=1e-5, rtol=1e-5)
    assert merged.fingerprint != loaded.fingerprint and "+adapter:" in merged.source
    with adapted(loaded, tmp_path / "adapter") as inside:
        torch.testing.assert_close(_fused(inside.model, inside, pixels), wrapped, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, original[k]) for k, v in loaded.model.state_dict().items())


def test_bad_adapters_are_refused_in_one_sentence(tiny_dir, tmp_path):
    loaded = load_model(tiny_dir)
    with pytest.raises(CheckpointError, match="no adapter here"):
        apply_adapter(loaded, tmp_path)
    save_adapter(tmp_path / "a", {"detr_encoder.nope": torch.zeros(2)}, {"trainable": "fusion"})
    with pytest.raises(CheckpointError, match="'detr_encoder.nope' is not a parameter"):
        apply_adapter(loaded, tmp_path / "a")
    name = "detr_encoder.layers.0.mlp.fc1.weight"
    save_adapter(tmp_path / "b", {name: torch.zeros(3, 3)}, {"trainable": "fusion"})
    with pytest.raises(CheckpointError, match=r"is \(3, 3\), the model's is"):
        apply_adapter(loaded, tmp_path / "b")
    (tmp_path / "b" / "adapter.json").write_text(json.dumps({"trainable": "decoder"}))
    with pytest.raises(CheckpointError, match="not one of fusion"):
        apply_adapter(loaded, tmp_path / "b")
    (tmp_path / "b" / "adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable ovearth adapter"):
        apply_adapter(loaded, tmp_path / "b")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_dir):
    results = []
    for checkpointing in (False, True):
        loaded = load_model(tiny_dir)
        model = tiny_sam3(seed=1, image_size=336, fusion_layers=2)
        params = prepare_trainable(model, Trainable.parse("fusion"))
        loss, _ = _step(loaded, model, checkpointing=checkpointing)(*_view())
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in params.items()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- targets


def test_class_masks_area_rule():
    label = torch.zeros(4, 4, dtype=torch.long)
    label[:, 2:] = 1
    label[0, 0] = 1  # one of four pixels of cell (0, 0): not a majority
    label[2:, :2] = 255  # ignored pixels belong to no class
    masks = class_masks(label, 2, (2, 2))
    assert masks.tolist() == [[[True, False], [False, False]], [[False, True], [False, True]]]


def test_components_largest_first_and_eight_connected():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one 8-connected component of 2
    mask[3:6, 3:6] = True  # 9 cells
    mask[0, 5] = True  # 1 cell
    found = components(mask, limit=2)
    assert found.shape == (2, 6, 6) and found.flatten(1).sum(1).tolist() == [9, 2]
    assert components(torch.zeros(3, 3, dtype=torch.bool), 4).shape == (0, 3, 3)


def test_hungarian_match_recovers_a_permutation():
    targets = torch.eye(4)[[2, 0, 3]]  # three one-cell instances
    probs = torch.eye(4)[[0, 3, 2, 1]] * 0.9 + 0.01
    q, t = match(probs, targets)
    pairs = sorted(zip(q.tolist(), t.tolist(), strict=True))
    assert pairs == [(0, 1), (1, 2), (2, 0)]  # query 3 (cell 1) matches nothing: only 3 targets


def test_instance_pairs_follow_each_names_class():
    logits = torch.full((2, 3, 4, 4), -5.0)
    logits[0, 0, :2, :2] = 5  # name 0 (class 1), query 0 on the top-left block
    logits[1, 1, 2:, 2:] = 5  # name 1 (class 0), query 1 on the bottom-right block
    kept = torch.tensor([[True, False, False], [False, True, False]])
    by_class = torch.zeros(2, 4, 4, dtype=torch.bool)
    by_class[1, :2, :2] = True
    by_class[0, 2:, 2:] = True
    pairs, targets, matched = instance_pairs(logits, kept, [1, 0], by_class, limit=4)
    assert torch.equal(matched, kept)
    assert pairs.shape == (2, 4, 4)
    assert torch.equal(targets.bool(), torch.stack([by_class[1], by_class[0]]))
    assert torch.equal(pairs, torch.stack([logits[0, 0], logits[1, 1]]))


def test_presence_term_hand_value():
    target = torch.tensor([[[0, 0], [0, 255]]])  # only class 0 present
    logits = torch.zeros(1, 2, 2, 2)
    presence = torch.tensor([[2.0, -1.0]])
    terms = SegmentationLoss().terms(logits, target, presence_logits=presence)
    expected = (
        torch.nn.functional.softplus(torch.tensor(-2.0)) + torch.nn.functional.softplus(torch.tensor(-1.0))
    ) / 2
    assert float(terms["presence_bce"]) == pytest.approx(float(expected), abs=1e-6)


# ---------------------------------------------------------------- schedule and order


def test_schedule_and_view_order():
    assert lr_factor(0, 4, 10) == pytest.approx(0.25) and lr_factor(3, 4, 10) == pytest.approx(1.0)
    assert lr_factor(4, 4, 10) == pytest.approx(1.0) and lr_factor(7, 4, 10) == pytest.approx(0.5)
    assert lr_factor(10, 4, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)
    order = [i for step in range(5) for i in step_views(step, 2, 5, seed=3)]
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:]) == list(range(5))  # epochs
    assert step_views(4, 2, 5, seed=3) == order[8:10]  # a pure function of the step
    assert order != [i for step in range(5) for i in step_views(step, 2, 5, seed=4)]


def test_train_settings_validation():
    with pytest.raises(InputError, match="steps must be an integer >= 1"):
        TrainSettings(steps=0)
    with pytest.raises(InputError, match="At least one loss weight"):
        TrainSettings(seg=0, attn=0, contrast=0, boundary=0)
    with pytest.raises(InputError, match="attention_kind"):
        TrainSettings(attention_kind="cosine")
    with pytest.raises(InputError, match="pseudo_threshold"):
        TrainSettings(pseudo_threshold=1.5)
    assert "save_every" not in TrainSettings().identity()


def test_loss_weights_option():
    from ovearth.cli.training import parse_weights

    assert parse_weights("seg=1, attn=0") == {"seg": 1.0, "attn": 0.0}
    assert parse_weights("") == {}
    with pytest.raises(InputError, match="unknown term 'dice'"):
        parse_weights("dice=1")
    with pytest.raises(InputError, match="'attn=x' needs a number"):
        parse_weights("attn=x")


@pytest.mark.parametrize("prompt_form", ["meta", "transformers"])
def test_training_forward_is_the_inference_forward(tiny_dir, monkeypatch, prompt_form):
    """The step's decoder and semantic outputs equal the segmentor's for the same view and prompt form."""
    from ovearth import Segmentor
    from ovearth.segment.fusion import semantic_probs

    loaded = load_model(tiny_dir)
    stages = Sam3Stages(loaded.model, prompt_form=prompt_form)
    step = TrainStep(stages, _text(loaded, stages), VOCAB.name_class, len(VOCAB), TrainSettings(), 0.1)
    seen = {}
    decode, semantic = Sam3Stages.decode, Sam3Stages.semantic_logits

    def spy_decode(self, *args, **kwargs):
        seen["decoded"] = decode(self, *args, **kwargs)
        return seen["decoded"]

    def spy_semantic(self, *args, **kwargs):
        seen["semantic"] = semantic(self, *args, **kwargs)
        return seen["semantic"]

    monkeypatch.setattr(Sam3Stages, "decode", spy_decode)
    monkeypatch.setattr(Sam3Stages, "semantic_logits", spy_semantic)
    image = torch.from_numpy(make_image(3, 48, 56)).permute(2, 0, 1)
    step(preprocess(image, 336)[None], torch.zeros(48, 56, dtype=torch.long))
    trained = {k: seen[k] for k in ("decoded", "semantic")}
    seg = Segmentor(loaded, VOCAB, prompt_form=prompt_form, use_instances=False, use_presence=False)
    (output,) = seg.engine.run([image])  # logits = sigmoid(resize(semantic logits))
    logits, presence = output.logits, output.presence
    close = dict(rtol=0, atol=1e-6)
    torch.testing.assert_close(trained["decoded"].presence_logits.detach().sigmoid(), presence, **close)
    torch.testing.assert_close(semantic_probs(trained["semantic"].detach(), (48, 56)), logits, **close)
    assert stages.prompt_form == prompt_form


def test_the_loop_trains_in_the_segment_settings_prompt_form(tiny_dir, tmp_path, monkeypatch):
    from ovearth.data.datasets import SegmentationDataset
    from ovearth.data.protocols import load_protocol
    from ovearth.train.loop import train
    from tests.data.make_synthetic import make_dataset

    forms = []
    init = Sam3Stages.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        forms.append(self.prompt_form)

    monkeypatch.setattr(Sam3Stages, "__init__", spy)
    protocol = load_protocol("loveda")
    root = make_dataset("loveda", tmp_path / "data", num_images=1, size=(40, 40))
    data = SegmentationDataset(protocol, root)
    segment = protocol.settings.replace(prompt_form="transformers")
    summary = train(
        load_model(tiny_dir), data, tmp_path / "run", TrainSettings(steps=1, batch=1), segment=segment
    )
    assert forms == ["transformers"] and summary["steps_done"] == 1
