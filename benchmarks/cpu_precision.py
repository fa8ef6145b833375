"""CPU precision: float32 against bfloat16 autocast and int8 dynamic quantisation, speed and agreement.

    python benchmarks/cpu_precision.py --out benchmarks/results [--sample ../shared/samples/RGB.byte.tif]

Weights: the full-size checkpoint in Meta's layout from ``shared/peer`` (seed 0), loaded by
``load_model`` as users load ``sam3.pt``. For each precision, on the peer fixture's 504 x 504
image (one 1008 view; SegEarth-OV3's ``conf0.0_thd0.0`` setting, 4 classes / 6 names):

* ``backbone_s``: one view through the backbone (best of ``--repeat`` after a warm-up);
* ``predict_s``: one ``Segmentor.predict`` (text encoding included, as in a one-image run);
* agreement with float32 (max |map difference|, share of equal labels) and with the
  SegEarth-OV3 goldens (same measures);
* with ``--sample``: the share of labels equal to float32 on that raster (4 classes).

``bfloat16`` is ``--precision bfloat16`` (autocast over the model, as on CUDA). ``int8`` is
``torch.ao.quantization.quantize_dynamic`` of the backbone's ``nn.Linear`` layers (weights
int8 per tensor, activations quantised per batch at run time), the rest float32.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from ovearth import LoadedModel, Segmentor, load_model
from ovearth.data.raster import read_image
from ovearth.model.precision import precision_region
from ovearth.model.stages import Sam3Stages

ROOT = Path(__file__).resolve().parents[1]
CLASSES = "building,roof;road;tree,forest;water"
SETTINGS = {"confidence_threshold": 0.0, "prob_thd": 0.0, "bg_idx": 0}


def quantized(loaded: LoadedModel) -> LoadedModel:
    """A copy of ``loaded`` whose backbone ``nn.Linear`` layers are int8 (dynamic quantisation)."""
    from torch.ao.quantization import quantize_dynamic

    model = copy.deepcopy(loaded.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        backbone = model.vision_encoder.backbone
        model.vision_encoder.backbone = quantize_dynamic(backbone, {torch.nn.Linear}, dtype=torch.qint8)
    source = loaded.source + " (int8 backbone)"
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, source=source, fingerprint="-")


def backbone_seconds(loaded: LoadedModel, precision: str, repeat: int) -> float:
    stages = Sam3Stages(loaded.model)
    pixels = torch.randn(1, 3, stages.image_size, stages.image_size)
    best = float("inf")
    with torch.inference_mode(), precision_region(stages.device, precision):
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            stages.encode_images(pixels)
            if i:
                best = min(best, time.perf_counter() - t0)
    return best


def agreement(maps: torch.Tensor, labels: np.ndarray, ref_maps: torch.Tensor, ref_labels: np.ndarray) -> dict:
    return {
        "maps_max_abs_diff": float((maps.float() - ref_maps.float()).abs().max()),
        "labels_equal": float((np.asarray(labels) == np.asarray(ref_labels)).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", type=Path, default=ROOT.parent / "shared" / "peer")
    parser.add_argument("--sample", type=Path, default=None, help="a raster to compare labels on")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--precisions", default="float32,bfloat16,int8")
    args = parser.parse_args()
    rgb = np.array(Image.open(args.peer / "golden" / "img504.png").convert("RGB"))
    golden = load_file(args.peer / "golden" / "segearth_ov3.safetensors")
    sample = read_image(args.sample) if args.sample else None
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "image": "shared/peer golden img504.png (one 1008 view), conf0.0_thd0.0, 4 classes / 6 names",
        "precisions": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cpu_precision.json"
    with tempfile.TemporaryDirectory() as tmp:
        maker = args.peer / "make_meta_checkpoint.py"
        subprocess.run([sys.executable, str(maker), f"{tmp}/sam3.pt"], check=True, capture_output=True)
        plain = load_model(f"{tmp}/sam3.pt")
        reference: dict = {}
        for precision in args.precisions.split(","):
            loaded = quantized(plain) if precision == "int8" else plain
            run_as = "float32" if precision == "int8" else precision
            entry: dict = {"backbone_s": backbone_seconds(loaded, run_as, args.repeat)}
            seg = Segmentor(loaded, CLASSES, precision=run_as, **SETTINGS)
            t0 = time.perf_counter()
            pred = seg.predict(rgb)
            entry["predict_s"] = time.perf_counter() - t0
            entry["vs_segearth_golden"] = agreement(
                pred.class_logits,
                pred.labels,
                golden["conf0.0_thd0.0/probs"],
                golden["conf0.0_thd0.0/labels"].numpy(),
            )
            if precision == "float32":
                reference["peer"] = (pred.class_logits, pred.labels)
            elif "peer" in reference:
                entry["vs_float32"] = agreement(pred.class_logits, pred.labels, *reference["peer"])
            if sample is not None:
                labels = seg.predict(sample.rgb, valid=sample.valid).labels
                if precision == "float32":
                    reference["sample"] = labels
                elif "sample" in reference:
                    entry["sample_labels_equal_to_float32"] = float((labels == reference["sample"]).mean())
            result["precisions"][precision] = entry
            if "float32" in result["precisions"] and precision != "float32":
                base = result["precisions"]["float32"]
                entry["backbone_speedup"] = base["backbone_s"] / entry["backbone_s"]
                entry["predict_speedup"] = base["predict_s"] / entry["predict_s"]
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(precision, json.dumps(entry, indent=2), flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
