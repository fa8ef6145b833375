"""SHA-256 of the tiny model's labels, class maps, presence and instances over a grid of view settings.

Recorded before the view loop was moved into one engine (issue 23) and compared after it
by ``tests/test_view_digests.py``: every case must stay bit-identical. Run it as::

    python tests/data/view_digests.py [--write tests/data/view_digests.json]

Cases cover the fast and reference modes, one view, overlapping windows, disjoint windows
with the provable skip, zoom, instances, view batches 1 and 3, refinement at the backbone
and at fusion, and calibrate's logits for several confidences at once.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]

#: name -> (Segmentor settings, predict keyword arguments)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "fast": ({}, {}),
    "reference": ({"mode": "reference"}, {}),
    "overlap": ({"slide_crop": 128, "slide_stride": 96}, {}),
    "overlap_reference": ({"slide_crop": 128, "slide_stride": 96, "mode": "reference"}, {}),
    "disjoint_skip": ({"slide_crop": 100, "slide_stride": 100, "skip_absent": True, "prob_thd": 0.3}, {}),
    "zoom": ({"zoom": "k=2,scale=2"}, {}),
    "instances": ({"slide_crop": 128, "slide_stride": 96, "confidence_threshold": 0.2}, {"instances": True}),
    "view_batch_1": ({"slide_crop": 128, "slide_stride": 96, "view_batch": 1}, {}),
    "view_batch_3": ({"slide_crop": 128, "slide_stride": 96, "view_batch": 3, "prompt_batch": 2}, {}),
    "refine_backbone": ({"refine": "smooth:a=0.2", "refine_at": "backbone"}, {}),
    "refine_fusion": (
        {"refine": "smooth:a=0.2+lowpass:r=4", "refine_at": "fusion", "refine_for": "mask"},
        {},
    ),
    "nodata": ({"slide_crop": 128, "slide_stride": 96}, {"valid": "corner"}),
}

#: calibrate's path: logits for several confidences from one run
CONFIDENCES = (0.1, 0.3, 0.5)

CLASSES = "water,lake;forest,tree;field;building,roof"


def image(height: int = 200, width: int = 300, seed: int = 1) -> np.ndarray:
    """Smooth blobs plus noise, uint8 ``[H, W, 3]`` (the tests' ``make_image`` rule)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(7 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx - yy))], axis=-1)
    return np.clip(127 + 80 * base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def sha(*arrays: Any) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        data = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        digest.update(f"{data.dtype}{data.shape}".encode())
        digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()


def run_cases(model_dir: Path) -> dict[str, dict[str, str]]:
    """Every case's digests: ``{case: {"labels", "maps", "presence"[, "instances"]}}``."""
    from ovearth import Segmentor, load_model

    loaded = load_model(model_dir)
    rgb = image()
    out: dict[str, dict[str, str]] = {}
    for name, (settings, kwargs) in CASES.items():
        seg = Segmentor(loaded, CLASSES, **settings)
        kwargs = dict(kwargs)
        if kwargs.get("valid") == "corner":
            valid = np.ones(rgb.shape[:2], bool)
            valid[:60, :90] = False
            kwargs["valid"] = valid
        pred = seg.predict(rgb, **kwargs)
        entry = {"labels": sha(pred.labels), "maps": sha(pred.class_logits), "presence": sha(pred.presence)}
        if pred.instances is not None:
            entry["instances"] = (
                sha(
                    *[
                        a
                        for one in pred.instances
                        for a in (one.mask, np.float32(one.score), np.asarray(one.box))
                    ]
                )
                + f":{len(pred.instances)}"
            )
        out[name] = entry
    seg = Segmentor(loaded, CLASSES, slide_crop=128, slide_stride=96)
    logits, presence = seg.name_logits(torch.from_numpy(rgb).permute(2, 0, 1), confidences=CONFIDENCES)
    out["confidences"] = {"maps": sha(logits), "presence": sha(presence)}
    return out


def environment() -> dict[str, str | int]:
    """What float results depend on: the torch build, the CPU kernels it picks and its threads."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="write the digests here (JSON)")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    from ovearth.model.testing import save_tiny_model
    from tests.data.output_digests import emit

    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model(Path(tmp) / "tiny", seed=0, image_size=336)
        record = {"environment": environment(), "cases": run_cases(model)}
    emit(record, args.write)


if __name__ == "__main__":
    main()
