"""Cost of a new class list on an image whose features are held (``Segmentor.set_image``).

    python benchmarks/class_change.py --out benchmarks/results

Full-size ``Sam3Config()`` with random weights (timing does not depend on the values),
one 1024 x 1024 synthetic image (one 1008 view), CPU float32. Times, in one run:

* ``full``: a fresh ``predict`` with LoveDA's 7 classes (11 names): backbone + 11 names;
* ``held_same``: ``predict`` again after ``set_image`` (the 11 names, no backbone);
* ``held_change``: ``with_classes("building;road;water")`` then ``predict`` (3 names, no backbone);
* ``fresh_change``: a fresh segmentor with those 3 classes (backbone + 3 names).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from segment_speed import synthetic_scene
from transformers import Sam3Config, Sam3Model

from ovearth import LoadedModel, Segmentor
from ovearth.data.protocols import load_protocol
from ovearth.model.tokenizer import builtin_tokenizer

OTHER = "building;road;water"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Sam3Model(Sam3Config()).eval()
    loaded = LoadedModel(
        model=model, tokenizer=builtin_tokenizer(), source="random Sam3Config()", fingerprint="-"
    )
    protocol = load_protocol("loveda")
    image = synthetic_scene(1024)
    seg = Segmentor(loaded, protocol.vocabulary, settings=protocol.settings)
    seg.predict(image[:512, :512])  # warm-up
    result = {"full": timed(lambda: seg.predict(image))}
    seg.set_image(image)
    seg.predict(image)  # fills the held features
    result["held_same"] = timed(lambda: seg.predict(image))
    other = seg.with_classes(OTHER)
    result["held_change"] = timed(lambda: other.predict(image))
    result["fresh_change"] = timed(
        lambda: Segmentor(loaded, OTHER, settings=protocol.settings).predict(image)
    )
    result = {k: round(v, 2) for k, v in result.items()}
    result |= {
        "held_change_over_full": round(result["held_change"] / result["full"], 3),
        "held_change_over_fresh_change": round(result["held_change"] / result["fresh_change"], 3),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "names": {"full": len(protocol.vocabulary.names), "change": 3},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "class_change_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
