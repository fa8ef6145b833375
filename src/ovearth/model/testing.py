"""A tiny random SAM 3 for tests and installation smoke tests.

``tiny_sam3`` builds the real ``transformers.Sam3Model`` architecture with every width
and depth shrunk (about 1.9 M parameters, 7 MB), randomly initialised from a seed. It
runs through exactly the code paths the real ``facebook/sam3`` checkpoint uses; its
outputs are meaningless. Save it with :func:`save_tiny_model` and load it back with
``ovearth.model.load_model(DIR)`` like any other model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Sam3Config, Sam3Model

#: Written beside the weights so nobody mistakes the tiny model for a real one.
TINY_MODEL_NOTE = (
    "This is a tiny randomly initialised SAM 3 made by `ovearth make-tiny-model`. "
    "It exercises the real code paths; its segmentations are meaningless."
)


def tiny_config(image_size: int = 1008, fusion_layers: int = 1) -> Sam3Config:
    """A SAM 3 configuration with tiny widths and depths.

    Args:
        image_size: square input size; a multiple of 14 whose patch grid is a multiple
            of the ViT window (8 below 1008, 24 at 1008). 1008 gives the real 72 x 72
            token grid; 336 (24 x 24) makes tests fast.
        fusion_layers: layers of the DETR fusion encoder (6 in SAM 3).

    Returns:
        The configuration (random-weight models built from it are a few MB).

    """
    grid = image_size // 14
    window = 24 if grid % 24 == 0 else 8
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=image_size,
                patch_size=14,
                window_size=window,
                global_attn_indexes=[1],
                pretrain_image_size=window * 14,
            ),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
        ),
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=32,
            vocab_size=49408,
            max_position_embeddings=32,
        ),
        geometry_encoder_config=dict(
            hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64
        ),
        detr_encoder_config=dict(
            hidden_size=32, num_layers=fusion_layers, num_attention_heads=2, intermediate_size=64
        ),
        detr_decoder_config=dict(
            hidden_size=32, num_layers=2, num_queries=20, num_attention_heads=2, intermediate_size=64
        ),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )


def tiny_sam3(seed: int = 0, image_size: int = 1008, fusion_layers: int = 1) -> Sam3Model:
    """A randomly initialised tiny ``Sam3Model`` in eval mode.

    Linear and convolution layers get PyTorch's fan-in initialisation instead of the
    checkpoint-oriented ``std=0.02`` normal: at width 32 the latter makes activations
    vanish, so every score would sit at 0.5; with it the semantic head and query scores
    spread out and tests exercise kept and dropped instances.

    Args:
        seed: seed of the random initialisation (same seed, same weights).
        image_size: see :func:`tiny_config`.
        fusion_layers: see :func:`tiny_config`.

    Returns:
        The model (float32, CPU).

    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Sam3Model(tiny_config(image_size, fusion_layers)).eval()
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def save_tiny_model(directory: str | Path, seed: int = 0, image_size: int = 1008) -> Path:
    """Write a tiny random SAM 3 as a ``save_pretrained`` directory.

    Args:
        directory: target directory (created).
        seed: seed of the random weights.
        image_size: see :func:`tiny_config`.

    Returns:
        The directory, loadable by ``ovearth.model.load_model``.

    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(directory)
    model = tiny_sam3(seed=seed, image_size=image_size)
    model.save_pretrained(path)
    (path / "README.txt").write_text(TINY_MODEL_NOTE + "\n")
    meta = {"ovearth_tiny_model": True, "seed": seed, "image_size": image_size}
    (path / "ovearth_tiny.json").write_text(json.dumps(meta) + "\n")
    return path
