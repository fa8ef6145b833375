"""Peak host memory of a 10,000 x 10,000 GeoTIFF segmented by windows, against the model's own.

    python benchmarks/scene_memory.py --size 10000 --out benchmarks/results

Writes a synthetic georeferenced uint16 scene (3 bands, deflate, tiled; a nodata
rectangle in one corner; written by strips, so the script itself stays small), saves a
tiny random SAM 3 (``save_tiny_model``, 1008 input), then runs two child processes on
the OpenEarthMap protocol (14 names, 512 crops / 512 stride, percentile stretch):

* ``model``: load the model and segment one 512 x 512 image - the model's own peak
  (weights, text features, one window's activations, one view's logits);
* ``scene``: segment the whole scene by windows (:func:`ovearth.run.files.segment_file`
  with ``windowed=True``) and write labels and a quick-look.

Reports each child's peak RSS (``VmHWM``), the difference, the time and the number of
windows. ``--whole SIZE`` also runs the whole-image path on a SIZE x SIZE scene, to show
how that grows with the area. ``--gis`` writes the GIS outputs as ``segment`` would with
``--scores --vector gpkg`` (COG labels and scores with overviews, polygons) and reports the
files' sizes and feature counts; ``--objects`` adds the objects layer (``--objects``), whose
instances are held until the end of the scene (deduplication needs them together)::

    python benchmarks/scene_memory.py --size 10000 --gis --out benchmarks/results
    python benchmarks/scene_memory.py --size 2000 --gis --objects --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

STRIP = 500


def write_scene(path: Path, size: int) -> None:
    """A ``size x size`` uint16 scene with smooth structure, noise and a nodata corner."""
    profile = dict(
        driver="GTiff", height=size, width=size, count=3, dtype="uint16", nodata=0,
        compress="deflate", tiled=True, blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER",
        crs=CRS.from_epsg(32633), transform=Affine(0.3, 0.0, 500000.0, 0.0, -0.3, 4100000.0),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    xx = np.arange(size)[None, :] / 900
    with rasterio.open(path, "w", **profile) as out:
        for y in range(0, size, STRIP):
            rows = min(STRIP, size - y)
            yy = (y + np.arange(rows))[:, None] / 900
            bands = [np.sin(3 * xx + yy), np.cos(2 * yy - xx), np.sin(xx * yy)]
            data = np.stack([800 + 600 * b + rng.normal(0, 80, (rows, size)) for b in bands])
            data = np.clip(data, 1, 4000).astype(np.uint16)
            if y < size // 10:
                data[:, :, : size // 10] = 0
            out.write(data, window=Window(0, y, size, rows))


def peak_rss_kb() -> int:
    """This process's peak resident set (``VmHWM``). Unlike ``ru_maxrss`` it starts afresh at
    ``exec``, so the parent's memory at fork time does not count."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(kind: str, model: str, path: str, out: str, gis: str = "") -> None:
    """Run one measurement and print a JSON line with its peak RSS."""
    from ovearth import Segmentor, load_model
    from ovearth.data.protocols import load_protocol
    from ovearth.run.files import FileOptions, segment_file

    protocol = load_protocol("openearthmap")
    start = time.perf_counter()
    seg = Segmentor(load_model(model), protocol.vocabulary, settings=protocol.settings)
    result = {}
    if kind == "model":
        rgb = np.full((512, 512, 3), 120, np.uint8)
        seg.predict(rgb)
    else:
        extra = {"scores": True, "vector": "gpkg", "objects": gis == "objects"} if gis else {}
        options = FileOptions(windowed=kind == "scene", **extra)
        prediction, paths = segment_file(seg, path, out, options)
        if kind == "scene":
            result = {"views": prediction.views, "skipped_views": prediction.skipped_views}
        if gis:
            import pyogrio

            result["files_mb"] = {k: round(p.stat().st_size / 2**20, 1) for k, p in paths.items()}
            layers = ("polygons", "objects") if gis == "objects" else ("polygons",)
            result["features"] = {k: pyogrio.read_info(paths[k])["features"] for k in layers}
    result.update(
        kind=kind,
        seconds=round(time.perf_counter() - start, 1),
        peak_rss_gb=round(peak_rss_kb() / 2**20, 3),
    )
    print(json.dumps(result))


def run_child(kind: str, model: Path, path: Path, out: Path, gis: str = "") -> dict:
    command = [sys.executable, __file__, "--child", kind, str(model), str(path), str(out), gis or "-"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        raise SystemExit(f"the {kind} run failed ({how}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--whole", type=int, default=0, help="also run the whole-image path at this size")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--gis", action="store_true", help="also write scores and polygons")
    parser.add_argument("--objects", action="store_true", help="with --gis, also write the objects layer")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child[:4], gis="" if args.child[4] == "-" else args.child[4])
        return
    from ovearth.model.testing import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_model(tmp / "tiny", seed=0)
        scene = tmp / "scene.tif"
        start = time.perf_counter()
        write_scene(scene, args.size)
        print(f"wrote {args.size} x {args.size} scene in {time.perf_counter() - start:.0f} s", flush=True)
        base = run_child("model", model, scene, tmp / "o")
        print(base, flush=True)
        gis = ("objects" if args.objects else "polygons") if args.gis else ""
        windowed = run_child("scene", model, scene, tmp / "o", gis)
        print(windowed, flush=True)
        with rasterio.open(tmp / "o" / "scene_labels.tif") as labels:
            layout = {
                "tiled": labels.profile.get("tiled"),
                "compress": labels.profile.get("compress"),
                "layout": labels.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
                "overviews": labels.overviews(1),
            }
        record = {
            "scene": f"{args.size} x {args.size} x 3 uint16, deflate, tiled",
            "protocol": "openearthmap (14 names, 512 crops / 512 stride)",
            "model": "tiny random SAM 3 (save_tiny_model, 1008 input)",
            "machine": f"{platform.machine()}, {__import__('torch').get_num_threads()} threads",
            "model_only": base,
            "windowed": windowed,
            "added_peak_rss_gb": round(windowed["peak_rss_gb"] - base["peak_rss_gb"], 3),
            "labels_file": layout,
            "gis_outputs": gis or False,
        }
        if args.whole:
            small = tmp / "whole.tif"
            write_scene(small, args.whole)
            record["whole_image"] = {"size": args.whole, **run_child("whole", model, small, tmp / "w")}
    print(json.dumps(record, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"scene_memory_{args.size}{'_gis' if args.gis else ''}{'_objects' if args.objects else ''}.json"
    (args.out / name).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
