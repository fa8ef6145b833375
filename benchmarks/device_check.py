"""Device check: the first thing to run whenever an accelerator is lent (under 8 min on one H100/H200).

    python benchmarks/device_check.py --device cuda --out benchmarks/results

Writes ``<out>/<device name>_device_check.json`` (e.g. ``nvidia-h200_device_check.json``)
and prints it. Each part is recorded even when a later one fails:

1. ``preprocess``: this device's uint8 resize (torchvision's float-and-round path on
   CUDA) against torchvision's formula computed here, and against the CPU's uint8 kernel;
2. ``peer``: Meta's checkpoint from ``shared/peer`` (generated here, loaded by
   ``load_model`` as users load ``sam3.pt``) on the golden image, float32: raw outputs
   against Meta's goldens (max |difference|; top-5 indices equal) and the three
   SegEarth-OV3 settings (per-class maps max |difference|, share of equal labels), in fast
   and reference modes;
3. ``fast_vs_reference``: the two modes on this device, float32, same run;
4. ``bfloat16``: ``--precision bfloat16`` against float32 (fast) and against the
   reference mode in bfloat16, on the golden image;
5. ``roofline``: FLOPs of one view's backbone (counted by torch), its float32 / bfloat16
   seconds, achieved TFLOP/s and share of a large matrix product's TFLOP/s on the device;
6. ``speed``: docs/benchmarks.md's speed table (``benchmarks/segment_speed.py`` on LoveDA and
   OpenEarthMap: reference / fast / fast+skip, each also in bfloat16; model-only; images/s;
   peak device memory) and sweeps of the view batch and the prompt batch.

Without the peer fixture (``--peer``) parts 2-4 run on a full-size ``Sam3Config()`` with
random weights and the peer numbers are left out. ``--tiny`` runs every part on a tiny
random model (a CPU smoke test of this script; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import Sam3Config, Sam3Model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import segment_speed  # noqa: E402  (the benchmark beside this file)

from ovearth import LoadedModel, Segmentor, load_model  # noqa: E402
from ovearth.model.precision import precision_region  # noqa: E402
from ovearth.model.preprocess import native_uint8_resize, resize_uint8  # noqa: E402
from ovearth.model.stages import Sam3Stages  # noqa: E402
from ovearth.model.testing import save_tiny_model  # noqa: E402
from ovearth.model.tokenizer import builtin_tokenizer, tokenize  # noqa: E402
from ovearth.segment.reference import geometry_prompt, name_forward  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = "building,roof;road;tree,forest;water"
SEGEARTH = {
    "conf0.5_thd0.5": (0.5, 0.5, True),
    "conf0.0_thd0.0": (0.0, 0.0, True),
    "nosem_conf0.0_thd0.0": (0.0, 0.0, False),
}


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def agree(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(
        (torch.as_tensor(np.asarray(a)).long() == torch.as_tensor(np.asarray(b)).long()).float().mean()
    )


def counts(labels: np.ndarray) -> dict[int, int]:
    values, n = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, n, strict=True)}


def check_preprocess(device: torch.device, rgb: np.ndarray) -> dict:
    """This device's resize against torchvision's rule for the device, and against the CPU's."""
    view = torch.from_numpy(rgb).permute(2, 0, 1)
    here = resize_uint8(view.to(device), 1008).cpu()
    aa = dict(size=(1008, 1008), mode="bilinear", align_corners=False, antialias=True)
    if device.type == "cpu":
        rule = F.interpolate(view[None], **aa)[0]  # torchvision's uint8 kernel (an AVX2 CPU)
    else:  # torchvision on CUDA: float32, round, back to uint8
        rule = F.interpolate(view[None].float().to(device), **aa)[0].round().to(torch.uint8).cpu()
    cpu = resize_uint8(view, 1008)
    return {
        "branch": "uint8 kernel" if native_uint8_resize(device) else "float32 + round",
        "equals_torchvision_rule_for_this_device": bool(torch.equal(here, rule)),
        "share_equal_to_cpu_uint8_kernel": agree(here, cpu),
        "max_step_vs_cpu": int((here.int() - cpu.int()).abs().max()),
    }


def check_peer(loaded: LoadedModel, peer: Path, rgb: np.ndarray) -> dict:
    device = next(loaded.model.parameters()).device
    golden = load_file(peer / "golden" / "meta_image_model.safetensors")
    pixels = golden["pixel_values"].to(device)
    raw = {}
    stages = Sam3Stages(loaded.model)
    with torch.inference_mode(), precision_region(device, "float32"):
        vision = stages.encode_images(pixels)
        plain = loaded.model.get_vision_features(pixels)
        geometry = geometry_prompt(loaded.model, plain)
        for prompt in ("building", "road"):
            tokens = tokenize(loaded.tokenizer, [prompt])
            text = stages.encode_text(tokens.input_ids.to(device), tokens.attention_mask.to(device))
            fused = stages.fuse(vision, text)
            decoded = stages.decode(fused)
            embed = stages.pixel_embed(vision, fused)
            top5 = decoded.scores()[0][0].topk(5).indices
            out = name_forward(loaded, plain, prompt, geometry)
            g = {k.split("/", 1)[1]: v for k, v in golden.items() if k.startswith(prompt + "/")}
            raw[prompt] = {
                "fast": {
                    "presence_logit": maxdiff(decoded.presence_logits, g["presence_logit"]),
                    "query_logits": maxdiff(decoded.query_logits[0], g["pred_logits"]),
                    "semantic_logits": maxdiff(stages.semantic_logits(embed)[0], g["semantic_seg"]),
                    "top5_masks": maxdiff(
                        stages.instance_logits(embed[0], decoded.queries[0, top5]), g["top5_mask_logits"]
                    ),
                    "top5_equal": top5.tolist() == g["top5_index"].tolist(),
                },
                "reference": {
                    "presence_logit": maxdiff(out.presence_logits[0], g["presence_logit"]),
                    "query_logits": maxdiff(out.pred_logits[0], g["pred_logits"]),
                    "boxes_xyxy": maxdiff(out.pred_boxes[0], g["pred_boxes_xyxy"]),
                    "semantic_logits": maxdiff(out.semantic_seg[0, 0], g["semantic_seg"]),
                    "top5_masks": maxdiff(
                        out.pred_masks[0, g["top5_index"].to(device)], g["top5_mask_logits"]
                    ),
                },
            }
    return {
        "raw": raw,
        "segearth_ov3": check_segearth(loaded, peer, rgb),
        "tolerance": "maps 1e-4, labels >= 99.9 %, raw 1e-4 (masks 2e-3)",
    }


def check_segearth(loaded: LoadedModel, peer: Path, rgb: np.ndarray) -> dict:
    """SegEarth-OV3's three golden settings, fast and reference modes."""
    segearth = load_file(peer / "golden" / "segearth_ov3.safetensors")
    settings = {}
    for prefix, (conf, thd, sem) in SEGEARTH.items():
        for mode in ("fast", "reference"):
            seg = Segmentor(
                loaded,
                CLASSES,
                confidence_threshold=conf,
                prob_thd=thd,
                use_semantic=sem,
                bg_idx=0,  # SegEarth-OV3's label of low-score pixels (ovearth's default is 254)
                mode=mode,
            )
            pred = seg.predict(rgb)
            ours, theirs = np.asarray(pred.labels), np.asarray(segearth[f"{prefix}/labels"])
            settings[f"{prefix}/{mode}"] = {
                "maps_max_abs_diff": maxdiff(pred.class_logits, segearth[f"{prefix}/probs"]),
                "labels_equal": agree(ours, theirs),
                "label_counts_ours": counts(ours),
                "label_counts_golden": counts(theirs),
            }
    return settings


def check_segearth_cpu_resize(loaded: LoadedModel, peer: Path, rgb: np.ndarray) -> dict:
    """:func:`check_segearth` with each view resized by the CPU's uint8 kernel, as the goldens were.

    A diagnosis: the goldens were made on a CPU, and a GPU resizes in float32 and rounds
    (torchvision's rule there); this part tells how much of the GPU's map difference is the resize.
    """
    import ovearth.segment.segmentor as segmentor_module

    plain = segmentor_module.preprocess

    def on_cpu(view: torch.Tensor, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return plain(view.cpu(), size, dtype).to(view.device)

    segmentor_module.preprocess = on_cpu
    try:
        return check_segearth(loaded, peer, rgb)
    finally:
        segmentor_module.preprocess = plain


def check_modes(loaded: LoadedModel, rgb: np.ndarray) -> dict:
    """fast vs reference (float32) and bfloat16 vs float32 on one image, SegEarth-OV3's conf0.0 settings."""
    runs = {}
    for mode in ("fast", "reference"):
        for precision in ("float32", "bfloat16"):
            seg = Segmentor(
                loaded, CLASSES, confidence_threshold=0.0, prob_thd=0.0, mode=mode, precision=precision
            )
            runs[mode, precision] = seg.predict(rgb)
    fast, ref = runs["fast", "float32"], runs["reference", "float32"]
    return {
        "fast_vs_reference": {
            "maps_max_abs_diff": maxdiff(fast.class_logits, ref.class_logits),
            "labels_equal": agree(fast.labels, ref.labels),
        },
        "bfloat16": {
            "fast_bf16_vs_fast_fp32": {
                "maps_max_abs_diff": maxdiff(runs["fast", "bfloat16"].class_logits, fast.class_logits),
                "labels_equal": agree(runs["fast", "bfloat16"].labels, fast.labels),
            },
            "fast_bf16_vs_reference_bf16": {
                "maps_max_abs_diff": maxdiff(
                    runs["fast", "bfloat16"].class_logits, runs["reference", "bfloat16"].class_logits
                ),
                "labels_equal": agree(runs["fast", "bfloat16"].labels, runs["reference", "bfloat16"].labels),
            },
        },
    }


def peak_matmul(device: torch.device, dtype: torch.dtype, n: int = 8192, repeat: int = 5) -> float:
    """FLOP/s of an ``n x n x n`` matrix product on ``device`` (best of ``repeat`` after one warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeat + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def check_roofline(loaded: LoadedModel, repeat: int) -> dict:
    """FLOPs of one view's backbone (``FlopCounterMode``), its achieved FLOP/s and the share of peak.

    Peak = a large matrix product on the same device and dtype (strict float32, no TF32; the
    bfloat16 line runs the backbone under autocast, as ``--precision bfloat16`` does).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(loaded.model.parameters()).device
    stages = Sam3Stages(loaded.model)
    size = stages.image_size
    pixels = torch.randn(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:  # the counter's module hooks need autograd on (not no_grad / inference_mode)
        stages.encode_images(pixels)
    flops = counter.get_total_flops()
    with torch.inference_mode():
        out = {"backbone_flops_per_view": flops, "image_size": size}
        n = 8192 if device.type == "cuda" else 2048
        for label, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            best = float("inf")
            for i in range(repeat + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with precision_region(device, label):
                    stages.encode_images(pixels)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    best = min(best, time.perf_counter() - t0)
            peak = peak_matmul(device, dtype, n)
            out[label] = {
                "backbone_s_per_view": best,
                "achieved_tflops": flops / best / 1e12,
                "peak_matmul_tflops": peak / 1e12,
                "share_of_peak": flops / best / peak,
            }
    return out


def check_speed(loaded: LoadedModel, repeat: int, save=lambda partial: None) -> dict:
    """The speed table and sweeps; ``save(partial)`` after each setting (a killed run keeps them)."""
    modes = ["reference", "fast", "fast+skip", "reference+bf16", "fast+bf16", "fast+skip+bf16"]
    out: dict = {}
    for setting in ("loveda", "openearthmap"):
        out[setting] = segment_speed.run_setting(loaded, setting, modes, repeat=repeat)
        save(out)
    sweeps: dict[str, dict] = {}
    for option, setting, values in (
        ("view_batch", "openearthmap", (1, 2, 4)),
        ("prompt_batch", "loveda", (1, 4, 11)),
    ):
        sweeps[option] = {}
        for value in values:
            r = segment_speed.run_setting(loaded, setting, ["fast+bf16"], repeat, overrides={option: value})
            sweeps[option][value] = {
                "images_per_s": r["images_per_s"]["fast+bf16"],
                "peak_device_gb": r.get("peak_device_gb", {}).get("fast+bf16"),
            }
            out["sweeps (fast+bf16; view batch on openearthmap, prompt batch on loveda)"] = sweeps
            save(out)
    out["sweeps (fast+bf16; view batch on openearthmap, prompt batch on loveda)"] = sweeps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--peer", type=Path, default=None, help="shared/peer (default: found beside the repo)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: smoke test of this script")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--parts", default="", help="comma list of parts to run (default: all)")

    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ("-tiny" if args.tiny else "")
    candidates = [args.peer] if args.peer else [ROOT.parent / "shared" / "peer", ROOT / "shared" / "peer"]
    peer = next((p for p in candidates if p is not None and (p / "make_meta_checkpoint.py").exists()), None)
    result: dict = {"device": name, "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            loaded, source = load_model(save_tiny_model(Path(tmp) / "tiny", image_size=1008)), "tiny random"
        elif peer is not None:
            subprocess.run(
                [sys.executable, str(peer / "make_meta_checkpoint.py"), f"{tmp}/sam3.pt"], check=True
            )
            loaded, source = load_model(f"{tmp}/sam3.pt"), "shared/peer checkpoint (seed 0)"
        else:
            model = Sam3Model(Sam3Config()).eval()
            loaded = LoadedModel(model=model, tokenizer=builtin_tokenizer(), source="random", fingerprint="-")
            source = "random Sam3Config()"
        loaded.model.to(device)
        result["weights"] = source
        rgb_path = peer / "golden" / "img504.png" if peer is not None else None
        rgb = (
            np.array(Image.open(rgb_path).convert("RGB")) if rgb_path else segment_speed.synthetic_scene(504)
        )
        parts = [
            ("preprocess", lambda: check_preprocess(device, rgb)),
            ("modes", lambda: check_modes(loaded, rgb)),
        ]
        if peer is not None and not args.tiny:
            parts.insert(1, ("peer", lambda: check_peer(loaded, peer, rgb)))
            parts.insert(2, ("peer_cpu_resize", lambda: check_segearth_cpu_resize(loaded, peer, rgb)))
        result["tf32_outside_float32_regions"] = {
            "cudnn": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{slug}_device_check.json"

        def save_speed(partial: dict) -> None:
            result["speed"] = partial
            path.write_text(json.dumps(result, indent=2) + "\n")

        parts.append(("roofline", lambda: check_roofline(loaded, args.repeat)))
        if not args.skip_speed:
            parts.append(("speed", lambda: check_speed(loaded, args.repeat, save_speed)))
        if args.parts:
            parts = [p for p in parts if p[0] in args.parts.split(",")]
        for key, part in parts:
            t0 = time.perf_counter()
            try:
                result[key] = part()
            except Exception:  # record and go on: a later part may still run
                result[key] = {"error": traceback.format_exc(limit=3)}
            result.setdefault("seconds", {})[key] = round(time.perf_counter() - t0, 1)
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(key, json.dumps(result[key], indent=2), flush=True)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
