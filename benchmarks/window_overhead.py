"""Where the wall time of a windowed scene run goes, outside the model and in it.

    python benchmarks/window_overhead.py --size 4000 --out benchmarks/results
    python benchmarks/window_overhead.py --size 2000 --gis --out benchmarks/results

Writes the synthetic uint16 scene of ``benchmarks/scene_memory.py`` (``write_scene``:
3 bands, deflate, tiled, a nodata corner), saves its tiny random SAM 3 (1008 input, so
the model's share is small and the rest shows) and segments the scene by windows on the
OpenEarthMap protocol (14 names, 512 crops / 512 stride, percentile stretch) as
``ovearth segment --windowed`` does: :func:`ovearth.run.scene.segment_scene` writes the
labels GeoTIFF (COG), the overlay and, with ``--gis``, the class scores (COG), then
:func:`ovearth.data.vectorize.vectorize` the polygons and
:func:`ovearth.data.objects.write_objects` SAM 3's objects (``--objects``), all GeoPackages.

No timing code is in the library: the benchmark replaces library functions and methods
by timing wrappers for the run (and puts them back). Each wrapper adds its *exclusive*
time (its own, less that of wrapped calls inside it) to a category:

* ``statistics``: the stretch's two passes over the scene (``SceneReader._samples``);
* ``read``: pixels and masks read from the GeoTIFF (``SceneReader.read_raw``) and the
  ``[h, w, 3]`` copy of ``SceneReader.read``;
* ``stretch``: 16 -> 8 bit (``apply_stretch``);
* ``preprocess``: crops to tensors and resized to the model's input (``to_chw_uint8``,
  ``preprocess``);
* ``model``: the engine's forward (``ViewEngine.run``, less the above and the objects);
* ``accumulate``: ``RowBuffer`` add / mean / drop;
* ``finish``: class rules (``finish``, ``scores_for_writing``);
* ``write labels`` / ``write scores``: ``write`` and ``close`` of the uint8 / float32
  GeoTIFFs and the side files (GDAL compresses a tile when it leaves its block cache, so
  part of this may be charged to whatever GDAL call evicts it);
* ``overviews`` and ``COG copy``: the two steps of :func:`ovearth.data.cog.open_geotiff`;
* ``polygons``: :func:`vectorize`; ``objects``: instances from the masks, restricted,
  shifted, deduplicated (``StreamingDedup``) and written;
* ``quick-look``: the overlay's rows and picture; ``release memory``: ``malloc_trim``;
* ``other``: the rest of the wall time (loops, Python, the garbage collector).

The scene size is chosen so one run takes a few minutes on 2 cores. The JSON
(``benchmarks/results/window_overhead_<size>[_gis].json``) holds the command, seconds
and shares per category, and digests of every output (file bytes for the rasters and
the overlay, features for the GeoPackages, whose bytes hold a timestamp): a change that
cuts time must leave them equal. ``--repeat N`` runs the scene N times and keeps the
run with the least wall time (the machine may be busy). ``--digests`` prints only them.
``--compare OLD.json`` sets an earlier record (the code before a change) beside the new
one and says whether the outputs are equal (the code before: e.g. ``git archive <commit> |
tar -x -C /tmp/before``)::

    PYTHONPATH=/tmp/before/src python benchmarks/window_overhead.py --size 4000 \\
        --label before --out /tmp/before
    python benchmarks/window_overhead.py --size 4000 --label after \\
        --compare /tmp/before/window_overhead_4000.json --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_memory import write_scene  # noqa: E402

#: categories in report order
CATEGORIES = (
    "statistics",
    "read",
    "stretch",
    "preprocess",
    "model",
    "accumulate",
    "finish",
    "write labels",
    "write scores",
    "overviews",
    "COG copy",
    "polygons",
    "objects",
    "quick-look",
    "release memory",
    "other",
)


class Clock:
    """Exclusive seconds and calls per category of the wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._inner: list[float] = []  # seconds spent in wrapped calls inside each open call

    def wrap(self, category: str | Callable[..., str], function: Callable) -> Callable:
        """``function`` timed into ``category`` (or ``category(*args)``: a category per call)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            self._inner.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._inner.pop()
                name = category(*args) if callable(category) else category
                self.seconds[name] += elapsed - inner
                self.calls[name] += 1
                if self._inner:
                    self._inner[-1] += elapsed

        timed.__wrapped__ = function  # type: ignore[attr-defined]
        return timed


def _raster_kind(dataset: Any, *args: Any) -> str:
    return "write labels" if dataset.dtypes[0] == "uint8" else "write scores"


@contextlib.contextmanager
def instrumented(clock: Clock) -> Iterator[None]:
    """Replace the library's functions by timing wrappers (names missing in a version are skipped)."""
    import rasterio.io
    import rasterio.shutil

    import ovearth.data.cog as cog
    import ovearth.data.scene as scene_io
    import ovearth.run.scene as scene_run
    import ovearth.segment.accumulate as accumulate
    import ovearth.segment.instances as instances
    import ovearth.segment.views as views

    targets: list[tuple[Any, str, str | Callable[..., str]]] = [
        (scene_io.SceneReader, "_samples", "statistics"),
        (scene_io.SceneReader, "read_raw", "read"),
        (scene_io.SceneReader, "read", "read"),
        (scene_io, "apply_stretch", "stretch"),
        (scene_run, "to_chw_uint8", "preprocess"),
        (views, "preprocess", "preprocess"),
        (views.ViewEngine, "run", "model"),
        (accumulate.RowBuffer, "add", "accumulate"),
        (accumulate.RowBuffer, "mean", "accumulate"),
        (accumulate.RowBuffer, "drop", "accumulate"),
        (scene_run, "finish", "finish"),
        (scene_run, "scores_for_writing", "finish"),
        (rasterio.io.DatasetWriter, "write", _raster_kind),
        (rasterio.io.DatasetWriter, "close", _raster_kind),
        (scene_io, "write_sidecars", "write labels"),
        (rasterio.io.DatasetWriter, "build_overviews", "overviews"),
        (rasterio.shutil, "copy", "COG copy"),
        (views, "view_instances", "objects"),
        (scene_run, "restricted", "objects"),
        (scene_run, "shifted", "objects"),
        (instances.StreamingDedup, "add", "objects"),
        (instances.StreamingDedup, "settle", "objects"),
        (instances.StreamingDedup, "finish", "objects"),
        (scene_run, "overlay", "quick-look"),
        (scene_run, "release_free_memory", "release memory"),
    ]
    for name in ("_QuickLook", "QuickLook"):
        if hasattr(scene_run, name):
            targets.append((getattr(scene_run, name), "add", "quick-look"))
    del cog  # imported so that its ``rasterio.shutil.copy`` is the patched one
    saved: list[tuple[Any, str, Any]] = []  # (owner, name, own attribute or None when inherited)
    try:
        for owner, name, category in targets:
            if not hasattr(owner, name):
                continue
            saved.append((owner, name, vars(owner).get(name)))
            setattr(owner, name, clock.wrap(category, getattr(owner, name)))
        yield
    finally:
        for owner, name, original in reversed(saved):
            if original is None:
                delattr(owner, name)  # was inherited
            else:
                setattr(owner, name, original)


def vector_digest(path: Path) -> str:
    """SHA-256 of a vector file's features (geometries as WKB and every field), in order."""
    import pyogrio

    frame = pyogrio.raw.read(path)
    meta, geometry, fields = frame[0], frame[2], frame[3]
    digest = hashlib.sha256(json.dumps([list(meta["fields"]), str(meta["crs"])]).encode())
    for item in geometry:
        digest.update(bytes(item))
    for column in fields:
        digest.update(
            np.asarray(column).astype(str).tobytes() if column.dtype == object else column.tobytes()
        )
    return digest.hexdigest()


def run_scene(model: Path, scene: Path, out: Path, gis: bool, objects: bool) -> dict:
    """Segment ``scene`` into ``out`` with every category timed; seconds, calls and output digests."""
    import torch

    from ovearth import Segmentor, load_model
    from ovearth.data.objects import write_objects
    from ovearth.data.protocols import load_protocol
    from ovearth.data.vectorize import vectorize
    from ovearth.run.scene import segment_scene
    from ovearth.segment import instances

    protocol = load_protocol("openearthmap")
    seg = Segmentor(load_model(model), protocol.vocabulary, settings=protocol.settings)
    seg.engine.text_features  # noqa: B018 - encoded once, outside the timed run
    out.mkdir(parents=True, exist_ok=True)
    paths = {"labels": out / "scene_labels.tif", "overlay": out / "scene_overlay.png"}
    if gis:
        paths["scores"] = out / "scene_scores.tif"
    spill = getattr(instances, "ObjectSpill", None)  # objects written as they settle, where it exists
    clock = Clock()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack, instrumented(clock), torch.inference_mode():
        found: Any = None
        if objects:
            found = stack.enter_context(spill(out, "scene_labels")) if spill is not None else []
        result = segment_scene(seg, scene, paths, found=found)
        if gis:
            paths["polygons"] = out / "scene_polygons.gpkg"
            clock.wrap("polygons", vectorize)(paths["labels"], paths["polygons"], scores=paths["scores"])
        if objects:
            paths["objects"] = out / "scene_objects.gpkg"
            write = clock.wrap("objects", write_objects)
            write(paths["objects"], found, list(seg.vocabulary.labels), result.crs, result.transform)
        count = len(found) if found is not None else None
    wall = time.perf_counter() - start
    seconds = {name: clock.seconds.get(name, 0.0) for name in CATEGORIES}
    seconds["other"] = wall - sum(clock.seconds.values())
    digests = {}
    for name, path in sorted(paths.items()):
        if path.suffix == ".gpkg":
            digests[name] = vector_digest(path)
        else:
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "views": result.views,
        "skipped_views": result.skipped_views,
        "objects": count,
        "wall_s": round(wall, 2),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "share_percent": {k: round(100 * v / wall, 1) for k, v in seconds.items()},
        "calls": dict(clock.calls),
        "files_mb": {k: round(p.stat().st_size / 2**20, 1) for k, p in paths.items()},
        "digests": digests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--gis", action="store_true", help="also scores (COG), polygons and objects")
    parser.add_argument("--no-objects", action="store_true", help="with --gis, leave the objects out")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the fastest is kept")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. before / after)")
    parser.add_argument("--digests", action="store_true", help="print the digests only, write no JSON")
    parser.add_argument(
        "--compare", type=Path, help="a JSON of this benchmark (e.g. the code before) to set beside"
    )
    args = parser.parse_args()
    import torch

    from ovearth.model.testing import save_tiny_model

    objects = args.gis and not args.no_objects
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_model(tmp / "tiny", seed=0)
        scene = tmp / "scene.tif"
        write_scene(scene, args.size)
        for r in range(args.repeat):
            runs.append(run_scene(model, scene, tmp / f"o{r}", args.gis, objects))
            print(json.dumps({k: runs[-1][k] for k in ("wall_s", "share_percent")}), flush=True)
    if any(run["digests"] != runs[0]["digests"] for run in runs):
        raise SystemExit("the outputs differ between runs")
    if args.digests:
        print(json.dumps(runs[0]["digests"], indent=2))
        return
    best = min(runs, key=lambda run: run["wall_s"])
    record = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "label": args.label,
        "scene": f"{args.size} x {args.size} x 3 uint16, deflate, tiled (benchmarks/scene_memory.py)",
        "protocol": "openearthmap (14 names, 512 crops / 512 stride, percentile stretch)",
        "model": "tiny random SAM 3 (save_tiny_model, 1008 input)",
        "outputs": "labels COG, overlay"
        + (", scores COG, polygons gpkg" if args.gis else "")
        + (", objects gpkg" if objects else ""),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "runs_wall_s": [run["wall_s"] for run in runs],
        **best,
    }
    if args.compare:
        other = json.loads(args.compare.read_text())
        fields = ("label", "command", "wall_s", "seconds", "share_percent", "calls")
        record["compared"] = {k: other.get(k) for k in fields}
        record["outputs_equal_to_compared"] = other["digests"] == record["digests"]
    print(json.dumps(record, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"window_overhead_{args.size}{'_gis' if args.gis else ''}.json"
    (args.out / name).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
