"""Cost of ``ovearth calibrate``: the model pass against the search, measured and extrapolated.

    python benchmarks/calibrate_cost.py --out benchmarks/results

LoveDA's protocol (7 classes) with the built-in synonym pool (31 names, about 5 per
class), on 50 synthetic 1024 x 1024 tiles in LoveDA's layout (``tests/data/make_synthetic``),
with the tiny random SAM 3 (1008 input), default options (sample stride 4, fixed split
30 %, 5 folds, confidences 0.3..0.7, thresholds: the data's cut points), CPU float32. Reports the
model pass and the search times in one run, and extrapolates the model pass to the
full-size model with its measured costs on this machine (``class_change_cpu.json``:
per image, one backbone pass plus 3.3 s per name), to give the search's share of a real run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.data.make_synthetic import make_dataset  # noqa: E402

from ovearth import Segmentor, load_model  # noqa: E402
from ovearth.calibrate.pool import build_pool  # noqa: E402
from ovearth.data.datasets import SegmentationDataset  # noqa: E402
from ovearth.data.protocols import load_protocol  # noqa: E402
from ovearth.model.testing import save_tiny_model  # noqa: E402
from ovearth.run.calibrate import CalibrateOptions, calibrate  # noqa: E402


def full_model_costs(results: Path) -> tuple[float, float]:
    """``(backbone seconds, seconds per name)`` of the full-size model on a 1024 x 1024 LoveDA tile."""
    data = json.loads((results / "class_change_cpu.json").read_text())
    per_name = data["held_change"] / data["names"]["change"]
    return data["full"] - data["names"]["full"] * per_name, per_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    protocol = load_protocol("loveda")
    pool = build_pool(protocol.vocabulary)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_dataset("loveda", tmp, num_images=args.tiles, size=(args.size, args.size))
        loaded = load_model(save_tiny_model(tmp / "tiny", seed=0))
        segmentor = Segmentor(loaded, protocol.vocabulary, settings=protocol.settings)
        start = time.perf_counter()
        result = calibrate(
            segmentor, SegmentationDataset(protocol, root), pool, tmp / "out", CalibrateOptions()
        )
        total = time.perf_counter() - start
    cost = result["cost"]
    backbone, per_name = full_model_costs(args.out)
    full_pass = args.tiles * (backbone + len(pool.names) * per_name)
    record = {
        "protocol": "loveda (7 classes)",
        "names": len(pool.names),
        "tiles": f"{args.tiles} x {args.size} x {args.size}",
        "options": "sample stride 4, holdout 0.3, 5 folds, 5 confidences, thresholds: the data's cuts",
        "model": "tiny random SAM 3 (1008 input)",
        "machine": f"{platform.machine()}, {__import__('torch').get_num_threads()} threads",
        "model_pass_s": cost["model_pass_seconds"],
        "search_s": cost["search_seconds"],
        "total_s": round(total, 1),
        "searches": len(result["splits"])
        * (len(result["confidences"]) if result["confidence_matters"] else 1),
        "evaluations": sum(split["best"]["evaluations"] for split in result["splits"]),
        "full_model": {
            "backbone_s": round(backbone, 1),
            "per_name_s": round(per_name, 2),
            "model_pass_s": round(full_pass),
            "search_share": round(cost["search_seconds"] / (full_pass + cost["search_seconds"]), 4),
        },
    }
    print(json.dumps(record, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibrate_cost_cpu.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
