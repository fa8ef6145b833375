"""Shared fixtures: a tiny random SAM 3 saved and loaded through the users' path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ovearth import load_model
from ovearth.model.testing import save_tiny_model

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N processes share the cores, one thread each
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def digest_store(tmp_path_factory) -> Path:
    """Remembered weight digests go to a temporary folder, not the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("ovearth-cache")
    os.environ["OVEARTH_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"sample rasters not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny SAM 3 (336 input, 24 x 24 tokens) written by save_pretrained."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, image_size=336)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return load_model(tiny_dir)


def make_image(seed: int, height: int, width: int) -> np.ndarray:
    """A structured random RGB image: smooth blobs plus noise, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy - seed), np.sin(4 * (xx + yy))], axis=-1)
    img = 127 + 90 * base + rng.normal(0, 20, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run ``ovearth ARGS`` in-process; return the exit code and what went to stderr."""
    from ovearth.cli import main

    monkeypatch.setattr(sys, "argv", ["ovearth", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code or 0
    return code, capsys.readouterr().err


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The peer tests first: under ``pytest -n 2 --dist loadfile`` the worker that takes their
    file (one full-size model, minutes) starts at once while the other takes the rest."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("peer") else 1)
