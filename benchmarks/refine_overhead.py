"""Added time per image of each refiner, relative to the unrefined pipeline, same run.

    python benchmarks/refine_overhead.py --out benchmarks/results

Weights: full-size random ``Sam3Config()`` (and a full-size random CLIP ViT-B/16 for
``clip``). Setting: the LoveDA protocol (one 1008 view, 11 names). A refiner adds, per
view, its own work on the fusion tokens of all 11 prompts (``[11, 5184, 256]``), plus
one extra DETR decoder pass per prompt for the two-pass refiners (``presence``,
``attention``), plus CLIP's vision tower once per view for ``clip``; everything else
of the pipeline is unchanged. Each of these parts is timed directly (best of
``--repeat``) and divided by the measured time of one unrefined image.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, Sam3Config, Sam3Model

from ovearth import LoadedModel, Segmentor
from ovearth.data.protocols import load_protocol
from ovearth.model.preprocess import preprocess
from ovearth.model.tokenizer import builtin_tokenizer
from ovearth.refine import RefineContext, parse_refine
from ovearth.refine.first_pass import first_pass

SPECS = [
    "smooth:a=0.2",
    "lowpass:r=12,b=0.2",
    "laplacian:lam=1.0",
    "presence",
    "attention:g=0.5",
    "clip:mode=affinity,w=0.3,model={clip}",
    "clip:mode=text,g=0.3,model={clip}",
]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Sam3Model(Sam3Config()).eval().to(args.device)
    tokenizer = builtin_tokenizer()
    loaded = LoadedModel(model=model, tokenizer=tokenizer, source="random Sam3Config()", fingerprint="-")
    protocol = load_protocol("loveda")
    seg = Segmentor(loaded, protocol.vocabulary, settings=protocol.settings)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    view = torch.from_numpy(image).permute(2, 0, 1).to(args.device)

    clip_dir = Path(tempfile.mkdtemp()) / "clip-vit-b16-random"
    CLIPModel(CLIPConfig(vision_config={"patch_size": 16, "image_size": 224})).save_pretrained(clip_dir)
    builtin_tokenizer().save_pretrained(clip_dir)

    baseline = best(lambda: seg.predict(image), 1)
    with torch.inference_mode():
        stages = seg.stages
        vision = stages.encode_images(preprocess(view, stages.image_size)[None])
        fused = stages.fuse(vision, seg.text_features)  # all 11 prompts at once
        decode = best(lambda: stages.decode(fused), args.repeat)
    names = seg.vocabulary.names
    rows = {}
    for template in SPECS:
        spec = template.format(clip=clip_dir)
        pipeline = parse_refine(spec)

        def run(pipeline=pipeline) -> None:
            with torch.inference_mode():
                context = RefineContext(prompts=names, view=view, cache={})
                if pipeline.first_pass:
                    first_pass(model, pipeline, context, lambda: stages.decode(fused))
                pipeline(fused.tokens, fused.grid, context)

        run()  # warm-up (loads CLIP once)
        added = best(run, args.repeat)
        label = spec.split(",model=")[0]
        rows[label] = {"added_s": round(added, 4), "relative": round(added / baseline, 4)}
        print(f"{label:32s} +{added:7.3f} s  = {100 * added / baseline:5.2f} % of an image", flush=True)
    result = {
        "setting": "loveda (one 1008 view, 11 names), full-size random Sam3Config()",
        "device": args.device,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "baseline_s_per_image": round(baseline, 3),
        "decoder_pass_s_all_prompts": round(decode, 3),
        "refiners": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"refine_overhead_{args.device.replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
