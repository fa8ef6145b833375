"""The CPU's roofline share: the backbone's FLOP/s against a large matrix product's on the same cores.

    python benchmarks/cpu_roofline.py --out benchmarks/results

Reads the backbone's FLOPs per 1008 view (counted by torch's ``FlopCounterMode`` in
``nvidia-h200_device_check.json``: the count depends on the model's shapes only) and its
float32 / bfloat16 seconds per view on this CPU (``cpu_precision.json``, same threads), and
measures the FLOP/s of a 2048^3 matrix product in each dtype here (best of 3 after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_check import peak_matmul  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    flops = json.loads((RESULTS / "nvidia-h200_device_check.json").read_text())["roofline"]
    flops = flops["backbone_flops_per_view"]
    timings = json.loads((RESULTS / "cpu_precision.json").read_text())
    result = {
        "backbone_flops_per_view": flops,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        seconds = timings["precisions"][precision]["backbone_s"]
        peak = peak_matmul(torch.device("cpu"), dtype, n=2048, repeat=3)
        result[precision] = {
            "backbone_s_per_view": seconds,
            "achieved_tflops": flops / seconds / 1e12,
            "peak_matmul_tflops": peak / 1e12,
            "share_of_peak": flops / seconds / peak,
        }
    path = args.out / "cpu_roofline.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
