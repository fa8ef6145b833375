"""Images/s of the fast path against the reference path, same weights, same run.

    python benchmarks/segment_speed.py --setting loveda --repeat 2 --out benchmarks/results

Weights: a full-size ``Sam3Config()`` with random weights (timing does not depend on the
weight values). Random weights score every query near 0.25, so the confidence threshold
is set to the score quantile that keeps ``--keep`` of the queries (default 5 %, about 10
of 200 per prompt, a realistic count for remote-sensing scenes); ``prob_thd`` and
``bg_idx`` are the protocol's. Settings:

* ``loveda``: one 1024 x 1024 image -> one 1008 view, 11 class names;
* ``openearthmap``: one 1024 x 1024 image, 512 crops / 512 stride (4 views), 14 names.

Reports seconds per image for each mode, the reference/fast ratio, "model-only" time
(backbone + batched heads on every view, no post-processing) and peak host memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Sam3Config, Sam3Model

from ovearth import LoadedModel, Segmentor
from ovearth.data.protocols import load_protocol
from ovearth.model.tokenizer import builtin_tokenizer
from ovearth.segment.preprocess import preprocess
from ovearth.segment.windows import views_for


def synthetic_scene(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(9 * xx), np.cos(7 * yy), np.sin(5 * (xx + yy))], axis=-1)
    return np.clip(127 + 90 * base + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)


def threshold_keeping(seg: Segmentor, image: np.ndarray, keep: float) -> float:
    stages = seg.stages
    pixels = preprocess(torch.from_numpy(image).permute(2, 0, 1), stages.image_size)[None]
    with torch.inference_mode():
        scores, _ = stages.decode(stages.fuse(stages.encode_images(pixels), seg.text_features)).scores()
    return float(torch.quantile(scores.flatten().float(), 1 - keep))


def model_only(seg: Segmentor, image: np.ndarray) -> float:
    """Backbone and the heads (in the fast path's prompt batches) on every view, nothing else."""
    s, stages = seg.settings, seg.stages
    view = torch.from_numpy(image).permute(2, 0, 1)
    windows = views_for(*view.shape[-2:], s.slide_crop, s.slide_stride)
    start = time.perf_counter()
    with torch.inference_mode():
        for w in windows:
            pixels = preprocess(view[:, w.y1 : w.y2, w.x1 : w.x2], stages.image_size)[None]
            vision = stages.encode_images(pixels)
            names = seg.text_features.features.shape[0]
            for first in range(0, names, seg.prompt_batch):
                fused = stages.fuse(vision, seg.text_features.select(slice(first, first + seg.prompt_batch)))
                stages.decode(fused)
                stages.semantic_logits(stages.pixel_embed(vision, fused))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=["loveda", "openearthmap"], default="loveda")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="fast,reference", help="fast, reference, fast+skip (skip_absent)")
    parser.add_argument(
        "--zoom", default="", help="also time fast mode with this two-pass zoom, e.g. k=2,scale=2"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Sam3Model(Sam3Config()).eval().to(args.device)
    tokenizer = builtin_tokenizer()
    loaded = LoadedModel(model=model, tokenizer=tokenizer, source="random Sam3Config()", fingerprint="-")
    protocol = load_protocol(args.setting)
    image = synthetic_scene(1024)
    probe = Segmentor(loaded, protocol.vocabulary, settings=protocol.settings)
    conf = threshold_keeping(probe, image[:512, :512] if args.setting == "openearthmap" else image, args.keep)
    settings = protocol.settings.replace(confidence_threshold=conf)
    result = {
        "setting": args.setting,
        "names": len(protocol.vocabulary.names),
        "confidence_threshold": round(conf, 5),
        "keep": args.keep,
        "device": args.device,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "seconds_per_image": {},
    }
    model_only(probe, image)  # warm-up
    result["model_only_s"] = min(model_only(probe, image) for _ in range(args.repeat))
    for mode in args.modes.split(","):
        base, _, extra = mode.partition("+")
        seg = Segmentor(
            loaded, protocol.vocabulary, settings=settings.replace(mode=base, skip_absent=extra == "skip")
        )
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            seg.predict(image)
            times.append(time.perf_counter() - start)
        result["seconds_per_image"][mode] = min(times)
        print(mode, [round(t, 2) for t in times], flush=True)
    if args.zoom:
        seg = Segmentor(loaded, protocol.vocabulary, settings=settings.replace(zoom=args.zoom))
        start = time.perf_counter()
        seg.predict(image)
        result["seconds_per_image"][f"fast+zoom {args.zoom}"] = time.perf_counter() - start
        print("fast+zoom", round(result["seconds_per_image"][f"fast+zoom {args.zoom}"], 2), flush=True)
    per = result["seconds_per_image"]
    if "fast" in per and "reference" in per:
        result["reference_over_fast"] = round(per["reference"] / per["fast"], 3)
    if "fast+skip" in per and "reference" in per:
        result["reference_over_fast_skip"] = round(per["reference"] / per["fast+skip"], 3)
    if "fast" in per and args.zoom:
        result["zoom_over_fast"] = round(per[f"fast+zoom {args.zoom}"] / per["fast"], 3)
    result["fast_over_model_only"] = round(per.get("fast", float("nan")) / result["model_only_s"], 3)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_zoom" if args.zoom else "_skip" if "fast+skip" in per else ""
    path = args.out / f"segment_speed_{args.setting}_{args.device.replace(':', '')}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
