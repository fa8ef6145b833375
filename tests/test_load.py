"""Model loading through the paths users take: save_pretrained folders and Meta's sam3.pt."""

import pytest
import torch

from ovearth import load_model
from ovearth.errors import CheckpointError, ModelNotFoundError
from ovearth.model.convert import meta_state_dict_from_hf
from ovearth.model.testing import save_tiny_model, tiny_sam3
from ovearth.model.tokenizer import builtin_tokenizer

from .conftest import make_image


def outputs(model):
    pixels = torch.from_numpy(make_image(0, 336, 336)).permute(2, 0, 1)[None].float() / 127.5 - 1
    ids = builtin_tokenizer()(["road"], padding="max_length", max_length=32, return_tensors="pt")
    with torch.inference_mode():
        out = model(pixel_values=pixels, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    return out.pred_logits, out.semantic_seg, out.presence_logits


def test_saved_tiny_model_loads_identically(tiny_dir, tiny):
    original = tiny_sam3(seed=0, image_size=336)
    for name, value in original.state_dict().items():
        assert torch.equal(value, tiny.model.state_dict()[name]), name
    # Same weights; from_pretrained may lay tensors out differently, so kernels round differently.
    for a, b in zip(outputs(original), outputs(tiny.model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert len(tiny.fingerprint) == 16 and tiny.source == str(tiny_dir)


def test_fingerprint_follows_the_weights(tmp_path, tiny):
    other = load_model(save_tiny_model(tmp_path / "seed1", seed=1, image_size=336))
    assert other.fingerprint != tiny.fingerprint


def test_directory_with_tokenizer_files_uses_them(tmp_path):
    path = save_tiny_model(tmp_path / "m", seed=0, image_size=336)
    builtin_tokenizer().save_pretrained(path)
    loaded = load_model(path)
    assert loaded.tokenizer is not builtin_tokenizer()
    assert loaded.tokenizer("tennis court")["input_ids"] == builtin_tokenizer()("tennis court")["input_ids"]


def test_meta_checkpoint_loads_into_the_same_model(tmp_path):
    original = tiny_sam3(seed=4, image_size=336)
    meta = meta_state_dict_from_hf(original.state_dict(), original.config)
    torch.save({"model": meta}, tmp_path / "sam3.pt")
    original.config.to_json_file(tmp_path / "config.json")
    loaded = load_model(tmp_path / "sam3.pt")
    for a, b in zip(outputs(original), outputs(loaded.model), strict=True):
        assert torch.equal(a, b)


def test_missing_and_broken_models(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a SAM 3 model directory"):
        load_model(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
