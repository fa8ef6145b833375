"""Latency of ``ovearth explore``'s requests on CPU: first result, class change, toggle, threshold.

    python benchmarks/explore_latency.py --out benchmarks/results

Full-size ``Sam3Config()`` with random weights (timing does not depend on the values),
one 1024 x 1024 synthetic PNG (one 1008 view), CPU float32, through the HTTP API in
process (Starlette's test client: JSON parsing, caches and rendering included; no network).
Each step is one ``POST /api/run`` unless said otherwise:

* ``first``: a new image with ``building,roof;road;tree;water`` (5 names: backbone + 5 names);
* ``class_change``: the same plus ``bare soil`` (1 new name; backbone features and the other
  names' scores reused);
* ``toggle``: ``road`` switched off (no model);
* ``threshold``: ``prob_thd`` 0.3 and a per-class threshold (no model);
* ``overlay``: ``GET`` of the overlay PNG; ``pixel``: one score readout;
* ``refiner``: ``smooth:a=0.2`` added (new model settings: every name again, the backbone
  features reused);
* ``attention``: ``GET /api/results/{id}/attention/0`` (backbone + one name's decoder, probed).

Model calls (backbone views, decoded prompts) are counted per step, to show which steps
run no model at all.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from segment_speed import synthetic_scene
from starlette.testclient import TestClient
from transformers import Sam3Config, Sam3Model

from ovearth import LoadedModel
from ovearth.explore.catalog import ImageCatalog
from ovearth.explore.server import create_app
from ovearth.explore.session import ExploreSession
from ovearth.model.stages import Sam3Stages
from ovearth.model.tokenizer import builtin_tokenizer

CLASSES = ["building,roof", "road", "tree", "water"]


def counting() -> dict[str, int]:
    """Count backbone views and decoded prompts by wrapping the stages."""
    counts = {"backbone_views": 0, "decoded_prompts": 0}
    encode, decode = Sam3Stages.encode_images, Sam3Stages.decode

    def encode_images(self, pixels):
        counts["backbone_views"] += len(pixels)
        return encode(self, pixels)

    def decode_(self, fused, tokens=None):
        counts["decoded_prompts"] += fused.tokens.shape[0]
        return decode(self, fused, tokens)

    Sam3Stages.encode_images, Sam3Stages.decode = encode_images, decode_
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = LoadedModel(
        model=Sam3Model(Sam3Config()).eval(),
        tokenizer=builtin_tokenizer(),
        source="random Sam3Config()",
        fingerprint="-",
    )
    print("model ready", flush=True)
    counts = counting()
    steps: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        Image.fromarray(synthetic_scene(args.size)).save(root / "scene.png")
        Image.fromarray(synthetic_scene(256, seed=1)).save(root / "warm.png")
        session = ExploreSession(loaded, ImageCatalog([], root))
        client = TestClient(create_app(session), base_url="http://127.0.0.1")

        def step(name: str, call) -> dict:
            before = dict(counts)
            start = time.perf_counter()
            response = call()
            seconds = time.perf_counter() - start
            assert response.status_code == 200, response.text
            steps[name] = {"seconds": round(seconds, 3), **{k: counts[k] - before[k] for k in counts}}
            print(name, steps[name], flush=True)
            return response.json() if "json" in response.headers["content-type"] else {}

        def run(classes, enabled=None, **settings):
            body = {"image": "root:scene.png", "classes": classes, "settings": settings}
            if enabled is not None:
                body["enabled"] = enabled
            return client.post("/api/run", json=body)

        client.post("/api/run", json={"image": "root:warm.png", "classes": ["road"]})  # warm-up
        first = step("first", lambda: run(CLASSES))
        step("class_change", lambda: run([*CLASSES, "bare soil"]))
        step("toggle", lambda: run([*CLASSES, "bare soil"], enabled=[True, False, True, True, True]))
        result = step(
            "threshold",
            lambda: run(
                [*CLASSES, "bare soil"],
                [True, False, True, True, True],
                prob_thd=0.3,
                class_prob_thd={"tree": 0.5},
            ),
        )
        step("overlay", lambda: client.get(result["overlay"]))
        step("pixel", lambda: client.get(f"/api/results/{result['id']}/pixel?x=512&y=512"))
        step("refiner", lambda: run(CLASSES, refine="smooth:a=0.2"))
        step("attention", lambda: client.get(f"/api/results/{first['id']}/attention/0"))
        session.close()
    report = {
        "steps": steps,
        "class_change_over_first": round(steps["class_change"]["seconds"] / steps["first"]["seconds"], 3),
        "image": f"{args.size} x {args.size} PNG, one view",
        "names": {"first": 5, "class_change": 1},
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explore_latency_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
