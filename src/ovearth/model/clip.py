"""CLIP for token refinement: loading, dense patch embeddings and text embeddings.

``load_clip`` loads a ``transformers.CLIPModel`` (default ``openai/clip-vit-base-patch16``)
from a ``save_pretrained`` directory or the Hugging Face cache (the hub only when the
cache lacks it), once per ``(model id, device)`` in this process.

Dense features (:func:`clip_patch_features`) follow MaskCLIP's projection: the vision
tower's last hidden state without its class token goes through the same ``post_layernorm``
and ``visual_projection`` that CLIP applies to the class token, so each patch lands in
the joint image-text space (``D = projection_dim``, 512 for ViT-B/16) and can be
compared with text embeddings as well as with other patches. This is the plain last
layer: MaskCLIP's value-path trick for the last attention block is *not* applied.

The whole view is resized (bicubic, anti-aliased, no centre crop) to the model's square
``image_size``, so CLIP's patch grid covers the same area as SAM 3's token grid; non-square
views are stretched the same way SAM 3's preprocessing stretches them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from ..errors import ModelNotFoundError
from .load import looks_like_path, quiet_hub, quiet_transformers
from .tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

#: Default CLIP for the ``clip`` refiner.
DEFAULT_CLIP = "openai/clip-vit-base-patch16"
#: OpenAI CLIP image normalisation, used when the model folder does not give its own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_LOADED: dict[tuple[str, str], tuple[CLIPModel, PreTrainedTokenizerBase]] = {}


def load_clip(
    model_id: str = DEFAULT_CLIP, device: torch.device | str | None = None
) -> tuple[CLIPModel, PreTrainedTokenizerBase]:
    """Load a CLIP model (eval mode, float32) and its tokenizer, once per id and device.

    Args:
        model_id: hub id or ``CLIPModel.save_pretrained`` directory.
        device: where to put the model (default CPU).

    Returns:
        ``(model, tokenizer)``; the tokenizer is the folder's own when it has one, else
        ovearth's built-in CLIP BPE tokenizer (the same vocabulary).

    Raises:
        ModelNotFoundError: the directory does not exist or holds no CLIP model, or the
            hub id is neither cached nor downloadable.

    """
    place = torch.device(device or "cpu")
    if place.type == "cuda" and place.index is None:
        place = torch.device("cuda", torch.cuda.current_device())
    key = (str(model_id), str(place))
    if key not in _LOADED:
        model = _load_model(str(model_id)).eval()
        _LOADED[key] = (model.to(key[1]), load_tokenizer(model_id))
    return _LOADED[key]


def _load_model(model_id: str) -> CLIPModel:
    quiet_transformers()
    path = Path(model_id).expanduser()
    if looks_like_path(model_id):
        if not (path / "config.json").is_file():
            why = "no config.json there" if path.is_dir() else "no such directory"
            raise ModelNotFoundError(
                f"CLIP model not found at '{path}' ({why}); pass a directory written by "
                "CLIPModel.save_pretrained or a hub id such as openai/clip-vit-base-patch16."
            )
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(f"'{path}' could not be loaded as a CLIP model: {error}") from error
        _set_normalisation(model, path / "preprocessor_config.json")
        return model
    try:
        model = CLIPModel.from_pretrained(model_id, local_files_only=True)
    except OSError:
        logger.info("%s is not in the local Hugging Face cache; trying the hub", model_id)
        try:
            with quiet_hub():
                model = CLIPModel.from_pretrained(model_id)
        except OSError as error:
            raise ModelNotFoundError(
                f"CLIP model '{model_id}' is not in the local Hugging Face cache and the hub cannot be "
                f"reached or refused it: run `hf download {model_id}` once on a machine with internet "
                "access and copy the Hugging Face cache here, or pass model=DIR with a "
                "CLIPModel.save_pretrained directory."
            ) from error
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "preprocessor_config.json")
        if isinstance(cached, str):
            _set_normalisation(model, Path(cached))
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        pass
    return model


def _set_normalisation(model: CLIPModel, file: Path) -> None:
    """Copy ``image_mean`` / ``image_std`` of a preprocessor config onto the model config."""
    if not file.is_file():
        return
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return
    for name in ("image_mean", "image_std"):
        value = data.get(name)
        if isinstance(value, list) and len(value) == 3:
            setattr(model.config, name, tuple(float(v) for v in value))


def _size(value: int | tuple | list) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


@torch.no_grad()
def clip_patch_features(model: CLIPModel, view: Tensor) -> Tensor:
    """Dense CLIP patch embeddings of a whole view, in the joint image-text space.

    ``pixels = (bicubic_resize(view / 255, image_size) - mean) / std`` (the whole view, no
    crop; mean/std from the model config when given, else OpenAI's), then
    ``visual_projection(post_layernorm(last_hidden_state[1:]))``. Not normalised.

    Args:
        model: a ``CLIPModel``.
        view: ``[3, h, w]`` uint8 RGB.

    Returns:
        ``[gh, gw, D]`` float32 on the model's device (``gh = image_size // patch_size``,
        14 x 14 for ViT-B/16 at 224; ``D = projection_dim``).

    """
    vision = model.config.vision_config
    size = _size(vision.image_size)
    patch = _size(vision.patch_size)
    grid = (size[0] // patch[0], size[1] // patch[1])
    param = next(model.parameters())
    mean = torch.tensor(getattr(model.config, "image_mean", CLIP_MEAN), device=param.device)
    std = torch.tensor(getattr(model.config, "image_std", CLIP_STD), device=param.device)
    x = view.to(param.device, torch.float32)[None]
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    x = (x.clamp(0, 255) / 255 - mean[:, None, None]) / std[:, None, None]
    hidden = model.vision_model(pixel_values=x.to(param.dtype)).last_hidden_state[0, 1:]
    features = model.visual_projection(model.vision_model.post_layernorm(hidden))
    return features.float().reshape(*grid, -1)


@torch.no_grad()
def clip_text_features(model: CLIPModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> Tensor:
    """L2-normalised CLIP text embeddings of prompts (the text as given, no template).

    Args:
        model: a ``CLIPModel``.
        tokenizer: its tokenizer; prompts are padded/truncated to the model's
            ``text_config.max_position_embeddings`` (77 for OpenAI CLIP).
        prompts: ``P`` strings.

    Returns:
        ``[P, D]`` float32 on the model's device.

    """
    length = int(model.config.text_config.max_position_embeddings)
    enc = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    device = next(model.parameters()).device
    out = model.text_model(
        input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
    )
    features = model.text_projection(out.pooler_output).float()
    return F.normalize(features, dim=-1)


def tiny_clip(seed: int = 0) -> CLIPModel:
    """A randomly initialised tiny ``CLIPModel`` for tests (64 px input, 8 x 8 patches, D = 16).

    Its embeddings are meaningless; the vocabulary is CLIP's (49408) so that the built-in
    tokenizer works with it. About 0.9 M parameters, most in the token embedding.
    """
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=49408,
            max_position_embeddings=77,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
        ),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def save_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """Write :func:`tiny_clip` with ``save_pretrained`` (safetensors) and return the directory."""
    directory = Path(directory)
    tiny_clip(seed).save_pretrained(directory)
    return directory
