"""What one training step costs against one inference of the same view, same weights.

    python benchmarks/train_cost.py --runs inference,lora,lora+ckpt,fusion --out benchmarks/results

Weights: a full-size ``Sam3Config()`` with random weights (cost does not depend on the
values). One 1024 x 1024 synthetic image with a smooth 7-class label -> one 1008 view,
the LoveDA protocol's 11 names; the confidence threshold keeps 5 % of the queries, as in
``segment_speed.py``. Each run is a child process so its peak memory (``VmHWM``) is its own:

* ``inference``: the fast path's ``ViewEngine.run`` on the view (what ``segment`` costs);
* ``lora``, ``fusion``, ``fusion-last-2`` (``+ckpt``: gradient checkpointing): two
  optimiser steps of ``TrainStep`` (forward, backward, AdamW) on the view; the second is timed.

Reports seconds, the step / inference ratio, trainable parameters and peak host memory.
On a GPU add ``--device cuda`` (peak device memory is reported too).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Sam3Config, Sam3Model

from ovearth import LoadedModel, Segmentor
from ovearth.data.protocols import load_protocol
from ovearth.model.preprocess import preprocess
from ovearth.model.tokenizer import builtin_tokenizer, tokenize
from ovearth.train.adapter import prepare_trainable
from ovearth.train.settings import TrainSettings
from ovearth.train.step import TrainStep

SIZE = 1024


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM (Linux only)")


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = np.stack([np.sin(9 * xx), np.cos(7 * yy), np.sin(5 * (xx + yy))], axis=-1)
    image = np.clip(127 + 90 * base + rng.normal(0, 15, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    label = (np.floor(4 * xx) + 2 * np.floor(3 * yy)).astype(np.int64) % 7
    return image, label


def child(run: str, device: str) -> dict:
    torch.manual_seed(0)
    protocol = load_protocol("loveda")
    model = Sam3Model(Sam3Config()).eval().to(device)
    loaded = LoadedModel(
        model=model, tokenizer=builtin_tokenizer(), source="random Sam3Config()", fingerprint="-"
    )
    seg = Segmentor(loaded, protocol.vocabulary, settings=protocol.settings)
    image, label = scene()
    view = torch.from_numpy(image).permute(2, 0, 1)
    pixels = preprocess(view, seg.stages.image_size)[None].to(device)
    with torch.inference_mode():
        scores, _ = seg.stages.decode(
            seg.stages.fuse(seg.stages.encode_images(pixels), seg.text_features)
        ).scores()
    confidence = float(torch.quantile(scores.flatten().float(), 0.95))
    out: dict = {"run": run, "names": len(protocol.vocabulary.names), "confidence": confidence}
    if run == "inference":
        seg = Segmentor(
            loaded, protocol.vocabulary, settings=seg.settings.replace(confidence_threshold=confidence)
        )
        seg.text_features  # noqa: B018 (encoded before the clock starts, as the old run did)
        began = time.perf_counter()
        seg.engine.run([view])
        out["seconds"] = time.perf_counter() - began
    else:
        trainable, _, ckpt = run.partition("+")
        settings = TrainSettings(trainable=trainable, checkpointing=ckpt == "ckpt", batch=1)
        params = prepare_trainable(model, settings.parsed_trainable())
        tokens = tokenize(loaded.tokenizer, protocol.vocabulary.names)
        stages = seg.stages
        stages.checkpoint_fusion = settings.checkpointing
        with torch.no_grad():
            text = stages.encode_text(tokens.input_ids.to(device), tokens.attention_mask.to(device))
        step = TrainStep(
            stages, text, protocol.vocabulary.name_class, len(protocol.vocabulary), settings, confidence
        )
        optimizer = torch.optim.AdamW(params.values(), lr=1e-4)
        target = torch.from_numpy(label).to(device)
        times = []
        for _ in range(2):
            began = time.perf_counter()
            loss, parts = step(pixels, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        out.update(
            seconds=times[-1],
            first_step_seconds=times[0],
            trainable_parameters=sum(p.numel() for p in params.values()),
            loss={k: round(float(v), 4) for k, v in parts.items()},
        )
    out["peak_host_gb"] = round(peak_rss_gb(), 2)
    if device.startswith("cuda"):
        out["peak_device_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="inference,lora,lora+ckpt,fusion")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.device)))
        return
    results = []
    for run in args.runs.split(","):
        command = [sys.executable, __file__, "--child", run, "--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            results.append({"run": run, "failed": done.stderr.strip().splitlines()[-1:]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r["seconds"] for r in results if r["run"] == "inference" and "seconds" in r), None)
    for r in results:
        if base and "seconds" in r and r["run"] != "inference":
            r["step_over_inference"] = round(r["seconds"] / base, 2)
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train_cost_{'cpu' if args.device == 'cpu' else 'cuda'}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
