"""Images/s of the fast path against the reference path, same weights, same run.

    python benchmarks/segment_speed.py --setting loveda --repeat 2 --out benchmarks/results

Weights: a full-size ``Sam3Config()`` with random weights (timing does not depend on the
weight values). Random weights score every query near 0.25, so the confidence threshold
is set to the score quantile that keeps ``--keep`` of the queries (default 5 %, about 10
of 200 per prompt, a realistic count for remote-sensing scenes); ``prob_thd`` and
``bg_idx`` are the protocol's. Settings:

* ``loveda``: one 1024 x 1024 image -> one 1008 view, 11 class names;
* ``openearthmap``: one 1024 x 1024 image, 512 crops / 512 stride (4 views), 14 names.

Reports seconds per image and images/s for each mode, reference / mode ratios,
"model-only" time (backbone + batched heads on every view, no post-processing; also
under bfloat16 autocast when a ``+bf16`` mode is asked) and peak host (and device) memory.
On a GPU: ``--device cuda --modes reference,fast,fast+bf16,fast+skip+bf16``.
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
from ovearth.model.preprocess import preprocess
from ovearth.model.tokenizer import builtin_tokenizer
from ovearth.segment.windows import views_for


def synthetic_scene(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(9 * xx), np.cos(7 * yy), np.sin(5 * (xx + yy))], axis=-1)
    return np.clip(127 + 90 * base + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)


def threshold_keeping(seg: Segmentor, image: np.ndarray, keep: float) -> float:
    stages = seg.stages
    pixels = preprocess(torch.from_numpy(image).permute(2, 0, 1).to(stages.device), stages.image_size)[None]
    with torch.inference_mode():
        scores, _ = stages.decode(stages.fuse(stages.encode_images(pixels), seg.text_features)).scores()
    return float(torch.quantile(scores.flatten().float(), 1 - keep))


def model_only(seg: Segmentor, image: np.ndarray, bf16: bool = False) -> float:
    """Backbone (views in ``view_batch``) and the heads (in ``prompt_batch``), nothing else."""
    s, stages = seg.settings, seg.stages
    view = torch.from_numpy(image).permute(2, 0, 1).to(stages.device)
    windows = views_for(*view.shape[-2:], s.slide_crop, s.slide_stride)
    names = seg.text_features.features.shape[0]
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(stages.device.type, torch.bfloat16, enabled=bf16):
        for v in range(0, len(windows), seg.view_batch):
            crops = [view[:, w.y1 : w.y2, w.x1 : w.x2] for w in windows[v : v + seg.view_batch]]
            vision = stages.encode_images(torch.stack([preprocess(c, stages.image_size) for c in crops]))
            for i in range(len(crops)):
                for first in range(0, names, seg.prompt_batch):
                    text = seg.text_features.select(slice(first, first + seg.prompt_batch))
                    fused = stages.fuse(vision.view(i), text)
                    stages.decode(fused)
                    stages.semantic_logits(stages.pixel_embed(vision.view(i), fused))
    if stages.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_setting(
    loaded: LoadedModel,
    setting: str,
    modes: list[str],
    repeat: int = 1,
    keep: float = 0.05,
    zoom: str = "",
    overrides: dict | None = None,
) -> dict:
    """Time ``modes`` on one setting with ``loaded``; the result dict written by :func:`main`.

    ``overrides``: extra settings for every mode (e.g. ``view_batch``, ``prompt_batch``).
    """
    device = next(loaded.model.parameters()).device
    cuda = device.type == "cuda"
    protocol = load_protocol(setting)
    image = synthetic_scene(1024)
    base = protocol.settings.replace(**(overrides or {}))
    probe = Segmentor(loaded, protocol.vocabulary, settings=base)
    conf = threshold_keeping(probe, image[:512, :512] if setting == "openearthmap" else image, keep)
    settings = base.replace(confidence_threshold=conf)
    result = {
        "setting": setting,
        "names": len(protocol.vocabulary.names),
        "confidence_threshold": round(conf, 5),
        "keep": keep,
        "device": str(device),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "overrides": overrides or {},
        "seconds_per_image": {},
    }
    model_only(probe, image[:512, :512])  # warm-up: one view
    result["model_only_s"] = min(model_only(probe, image) for _ in range(repeat))
    if any("bf16" in m for m in modes):
        result["model_only_bf16_s"] = min(model_only(probe, image, bf16=True) for _ in range(repeat))
    peaks = {}
    for mode in modes:
        base_mode, *extras = mode.split("+")
        unknown = set(extras) - {"skip", "bf16", "compile", "transformers"}
        if unknown:
            raise SystemExit(f"unknown mode option(s) {sorted(unknown)} in '{mode}'")
        chosen = settings.replace(
            mode=base_mode,
            skip_absent="skip" in extras,
            precision="bfloat16" if "bf16" in extras else "float32",
            compile="compile" in extras,
            prompt_form="transformers" if "transformers" in extras else "meta",
        )
        seg = Segmentor(loaded, protocol.vocabulary, settings=chosen)
        if "compile" in extras or cuda:
            seg.predict(image)  # compilation and CUDA start-up are paid once, not per image
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            seg.predict(image)  # returns CPU tensors: the device work is done when it returns
            times.append(time.perf_counter() - start)
        result["seconds_per_image"][mode] = min(times)
        if cuda:
            peaks[mode] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(setting, mode, [round(t, 3) for t in times], flush=True)
    if zoom:
        seg = Segmentor(loaded, protocol.vocabulary, settings=settings.replace(zoom=zoom))
        start = time.perf_counter()
        seg.predict(image)
        result["seconds_per_image"][f"fast+zoom {zoom}"] = time.perf_counter() - start
    per = result["seconds_per_image"]
    result["images_per_s"] = {mode: round(1 / t, 4) for mode, t in per.items()}
    if "reference" in per:
        others = {m: t for m, t in per.items() if m != "reference"}
        result["reference_over"] = {m: round(per["reference"] / t, 3) for m, t in others.items()}
    if "fast" in per and "reference" in per:
        result["reference_over_fast"] = round(per["reference"] / per["fast"], 3)
    if "fast+skip" in per and "reference" in per:
        result["reference_over_fast_skip"] = round(per["reference"] / per["fast+skip"], 3)
    if "fast" in per and "fast+transformers" in per:
        result["meta_over_transformers_form"] = round(per["fast"] / per["fast+transformers"], 4)
    if "fast" in per and zoom:
        result["zoom_over_fast"] = round(per[f"fast+zoom {zoom}"] / per["fast"], 3)
    result["fast_over_model_only"] = round(per.get("fast", float("nan")) / result["model_only_s"], 3)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if cuda:
        result["peak_device_gb"] = peaks
        result["device_name"] = torch.cuda.get_device_name(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=["loveda", "openearthmap"], default="loveda")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--modes",
        default="fast,reference",
        help="comma-separated: fast or reference, each with optional +skip (skip_absent), "
        "+bf16 (bfloat16 autocast), +compile (torch.compile backbone), +transformers (text-only "
        "prompt form instead of Meta's), e.g. fast+skip+bf16",
    )
    parser.add_argument(
        "--zoom", default="", help="also time fast mode with this two-pass zoom, e.g. k=2,scale=2"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Sam3Model(Sam3Config()).eval().to(args.device)
    loaded = LoadedModel(
        model=model, tokenizer=builtin_tokenizer(), source="random Sam3Config()", fingerprint="-"
    )
    result = run_setting(loaded, args.setting, args.modes.split(","), args.repeat, args.keep, args.zoom)
    per = result["seconds_per_image"]
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_zoom" if args.zoom else "_skip" if "fast+skip" in per else ""
    suffix += "_forms" if any("transformers" in m for m in per) else ""
    suffix += "_bf16" if any("bf16" in m for m in per) else ""
    path = args.out / f"segment_speed_{args.setting}_{args.device.replace(':', '')}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
