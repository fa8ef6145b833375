"""SHA-256 of what ``ovearth segment`` writes for the sample rasters with the tiny model.

The digests in ``output_digests.json`` were computed with this script on the code *before*
the runner refactor (commit 2745285) and are compared with today's outputs by
``tests/test_output_digests.py``: outputs byte-identical before and after. Run it as::

    python tests/data/output_digests.py SAMPLES_DIR WORK_DIR [--write tests/data/output_digests.json]

Each case is one ``python -m ovearth segment`` command line; every file it writes except
``run.json`` (which records the version and the command) is hashed. The pixel content of
each GeoTIFF is hashed too, so that a deliberate change of the file layout (tags, tiling)
can be told from a change of values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

#: name -> segment arguments after the inputs and -o (the tiny model is added).
CASES: dict[str, list[str]] = {
    "whole": ["--classes", "water;forest,tree;field;building", "--probs"],
    "slide": ["--classes", "water;forest;road", "--slide-crop", "224", "--slide-stride", "160", "--probs"],
    "windowed": [
        "--classes", "water;forest;road", "--slide-crop", "224", "--slide-stride", "160",
        "--windowed", "--probs",
    ],
    "thresholds": ["--preset", "loveda", "--prob-thd", "0.3", "--no-presence", "--bands", "3,2,1"],
}  # fmt: skip

#: the sample rasters every case segments.
INPUTS = ("RGB.byte.tif", "RGBA.uint16.tif")


def pixel_digest(path: Path) -> str:
    """SHA-256 of a raster's pixel values (all bands, as stored), its dtype and shape."""
    import rasterio

    with rasterio.open(path) as src:
        data = src.read()
    digest = hashlib.sha256(f"{data.dtype}{data.shape}".encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def run_cases(samples: Path, work: Path, model: Path) -> dict[str, dict[str, dict[str, str]]]:
    """Run every case; return case -> file name -> {"bytes": sha, "pixels": sha (rasters)}."""
    digests: dict[str, dict[str, dict[str, str]]] = {}
    for name, args in CASES.items():
        out = work / name
        inputs = [str(samples / f) for f in INPUTS]
        command = [sys.executable, "-m", "ovearth", "segment", *inputs, "-o", str(out), "--model", str(model)]
        subprocess.run([*command, *args], check=True, capture_output=True)
        files = {}
        for path in sorted(out.iterdir()):
            if path.name == "run.json":
                continue
            entry = {"bytes": hashlib.sha256(path.read_bytes()).hexdigest()}
            if path.suffix == ".tif":
                entry["pixels"] = pixel_digest(path)
            files[path.name] = entry
        digests[name] = files
    return digests


def environment() -> dict[str, str]:
    """What float results depend on: the torch build and the CPU kernels it picks."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def tiny_model(work: Path) -> Path:
    """The tests' tiny SAM 3 (seed 0, 336 input), saved under ``work``."""
    from ovearth.model.testing import save_tiny_model

    return save_tiny_model(work / "tiny", seed=0, image_size=336)


def emit(record: dict, path: Path | None) -> None:
    """Print a digest record as JSON and, with ``path``, write it there."""
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    if path:
        path.write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("samples", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--write", type=Path, help="write the digests here (JSON)")
    args = parser.parse_args()
    record = {
        "computed_at": "(describe the commit)",
        "environment": environment(),
        "cases": run_cases(args.samples, args.work, tiny_model(args.work)),
    }
    emit(record, args.write)


if __name__ == "__main__":
    main()
