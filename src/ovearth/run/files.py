"""Segment image files and write the results into an output folder.

For an input ``<stem>.<ext>``, :func:`segment_file` writes into ``out_dir``:

* ``<stem>_labels.tif`` (georeferenced input: a Cloud-Optimized GeoTIFF with the input's
  CRS and transform, uint8 class indices, 254 = unclassified, 255 = nodata, colour table,
  class table; side files ``.tif.aux.xml`` and ``.qml`` with the class names) or
  ``<stem>_labels.png`` (palette PNG) for input without georeferencing, read whole or by
  windows alike (:class:`~ovearth.run.plan.FilePlan` decides it once);
* ``<stem>_overlay.png``: class colours over the image, with a legend;
* as :class:`FileOptions` asks: ``<stem>_scores.tif`` (one float32 band per class, the
  fused score, NaN on nodata), ``<stem>_labels.<gpkg|geojson|parquet>`` (one polygon per
  region, :mod:`ovearth.data.vectorize`) and ``<stem>_objects.<format>`` (SAM 3's kept
  objects, :mod:`ovearth.data.objects`).

GeoTIFFs larger than :data:`~ovearth.run.scene.WINDOWED_PIXELS` (or any, with
``windowed=True``) are read and written by windows (:mod:`ovearth.run.scene`): same
outputs, bounded memory (the labels PNG of a non-georeferenced TIFF is written by strips
from a temporary tiled GeoTIFF, :mod:`ovearth.data.png_rows`) and the overlay a quick-look.

Every file is written atomically: a failure leaves no partial output.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..data.atomic import atomic_path
from ..data.describe import sidecar_paths
from ..data.legend import ClassTable
from ..data.objects import write_objects
from ..data.output import is_own_output
from ..data.png_rows import geotiff_to_palette_png
from ..data.raster import IMAGE_SUFFIXES, ImageHeader, RasterImage, as_input, read_image
from ..data.raster_write import write_labels, write_scores
from ..data.remote import RemoteRaster, is_remote, remote_input
from ..data.vectorize import vectorize
from ..errors import InputError
from ..segment.fusion import scores_for_writing
from ..segment.instances import Instance, ObjectSpill
from ..segment.segmentor import Prediction, Segmentor
from ..viz import overlay
from .plan import FileOptions, FilePlan, plan_file
from .scene import SceneResult, segment_scene
from .scene_split import ScenePart

logger = logging.getLogger(__name__)


def collect_images(
    inputs: Iterable[str | Path], out_dir: str | Path | None = None, stac_asset: str | None = None
) -> list[Path | RemoteRaster]:
    """Expand files, folders, URLs and STAC items into the list of images, in order.

    Folders contribute their GeoTIFF, PNG and JPEG files (not recursive), sorted; hidden
    files (``.DS_Store``, ``._scene.tif``, temporary ``.*.part`` files) are skipped, and so,
    in a folder that is also the output folder ``out_dir``, are ``segment``'s own outputs
    (``<stem>_labels``, ``_overlay``, ``_scores``...), so a second run does not segment them.
    ``https://`` / ``s3://`` GeoTIFFs and STAC items (``.json``, a file or a URL; the asset
    ``stac_asset``) become :class:`~ovearth.data.remote.RemoteRaster` inputs, read remotely.

    Raises:
        InputError: a path that does not exist, a folder without images, or no input.
        RemoteError: a malformed URL, an unreachable STAC item, a missing asset.

    """
    files: list[Path | RemoteRaster] = []
    out = Path(out_dir).resolve() if out_dir is not None else None
    for item in inputs:
        if is_remote(item) or str(item).lower().endswith(".json"):
            files.append(remote_input(str(item), stac_asset))
            continue
        path = Path(item)
        if path.is_dir():
            own = out is not None and path.resolve() == out
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES
                and p.is_file()
                and not p.name.startswith(".")
                and not (own and is_own_output(p))
            )
            if not found:
                raise InputError(f"{path}: the folder has no GeoTIFF, PNG or JPEG images.")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file.")
    if not files:
        raise InputError("No input image given.")
    if stac_asset is not None and not any(
        str(f).lower().endswith(f".json#{stac_asset}".lower()) for f in files
    ):
        raise InputError(f"--stac-asset {stac_asset} applies to STAC items (.json), and no input is one.")
    stems = [f.stem for f in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise InputError(f"Several inputs are named '{clash[0]}' (outputs would overwrite each other).")
    return files


def segment_file(
    segmentor: Segmentor,
    path: str | Path,
    out_dir: str | Path,
    options: FileOptions | None = None,
    on_view: Callable[[int, int], None] | None = None,
    header: ImageHeader | None = None,
    plan: FilePlan | None = None,
    part: ScenePart | None = None,
) -> tuple[Prediction | SceneResult, dict[str, Path]]:
    """Read, segment and write one image.

    Args:
        segmentor: the configured segmentor.
        path: image file.
        out_dir: output folder (created).
        options: how the file is read and what is written (see :class:`FileOptions`).
        on_view: progress callback of windowed runs, ``on_view(done, total)``.
        header: :func:`~ovearth.data.raster.check_image` of ``path``, when already read.
        plan: :func:`plan_file` of ``path`` into ``out_dir``, when already decided (else decided here).
        part: this process's share of a scene that every torchrun process takes
            (:mod:`~ovearth.run.scene_split`; windowed plans only): process 0 writes the
            outputs, the others only their part.

    Returns:
        The prediction (a :class:`SceneResult` when windowed) and the written files.

    Raises:
        InputError: unreadable input.

    """
    path, out = as_input(path), Path(out_dir)
    options = options or FileOptions()
    plan = plan or plan_file(segmentor, path, out, options, header)
    names, table, paths = list(plan.table.names), plan.table, plan.outputs
    if plan.windowed and part is not None and part.rank > 0:  # a band into part files; no output here
        scored = "scores" in paths or "polygons" in paths
        wanted = {**paths, "scores": paths.get("scores", paths["labels"])} if scored else paths
        args = (options.bands, options.stretch, on_view, header, options.cog, None, table)
        return segment_scene(segmentor, path, wanted, *args, part=part), paths
    if plan.windowed:
        with contextlib.ExitStack() as stack:
            labels = stack.enter_context(_labels_by_windows(paths, out, plan.georeferenced, table))
            scores = stack.enter_context(_scores_for_polygons(paths, out))
            # a windowed scene's objects go to disk as they settle, so memory does not grow with them
            spill = stack.enter_context(ObjectSpill(out, paths["labels"].stem)) if options.objects else None
            written = {**paths, "labels": labels, **({"scores": scores} if scores else {})}
            result = segment_scene(
                segmentor,
                path,
                written,
                options.bands,
                options.stretch,
                on_view,
                header,
                options.cog,
                spill,
                table,
                part,
            )
            crs, transform = result.crs, result.transform
            _write_vectors(paths, labels, scores, table, crs, transform, spill, options)
        return result, paths
    image: RasterImage = read_image(path, bands=options.bands, stretch=options.stretch, header=header)
    if not image.valid.any():
        logger.warning("%s: every pixel is nodata; all labels are 255 (nodata).", image.path)
    prediction = segmentor.predict(image.rgb, valid=image.valid, instances=options.objects, on_view=on_view)
    write_labels(paths["labels"], prediction.labels, image, table, cog=options.cog)
    with atomic_path(paths["overlay"]) as temp:
        overlay(image.rgb, prediction.labels, names).save(temp, format="PNG")
    with _scores_for_polygons(paths, out) as scores:
        if scores is not None:
            values = scores_for_writing(prediction.class_logits, prediction.valid)
            write_scores(scores, values, names, image, cog=options.cog and "scores" in paths)
        labels = paths["labels"]
        _write_vectors(
            paths, labels, scores, table, image.crs, image.transform, prediction.instances, options
        )
    return prediction, paths


@contextlib.contextmanager
def _labels_by_windows(
    paths: dict[str, Path], out: Path, georeferenced: bool, table: ClassTable
) -> Iterator[Path]:
    """Where a windowed run writes its labels GeoTIFF.

    Georeferenced input: the labels output itself. Otherwise a temporary GeoTIFF, turned
    into the labels PNG by strips once the scene is done (:func:`geotiff_to_palette_png`)
    and removed with its side files.
    """
    if georeferenced:
        yield paths["labels"]
        return
    temp = out / f".{paths['labels'].stem}.by-windows.part.tif"
    try:
        yield temp
        geotiff_to_palette_png(temp, paths["labels"], table)
    finally:
        for leftover in (temp, *sidecar_paths(temp).values()):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def _scores_for_polygons(paths: dict[str, Path], out: Path) -> Iterator[Path | None]:
    """Where the scores raster goes: its output path, a temporary file, or None.

    A temporary one (removed afterwards) when only the polygons need it, for their ``mean_score``.
    """
    if "scores" in paths:
        yield paths["scores"]
    elif "polygons" in paths:
        temp = out / f".{paths['labels'].stem}.scores-for-polygons.part.tif"
        try:
            yield temp
        finally:
            temp.unlink(missing_ok=True)
    else:
        yield None


def _write_vectors(
    paths: dict[str, Path],
    labels: Path,
    scores: Path | None,
    table: ClassTable,
    crs,
    transform,
    instances: Iterable[Instance] | None,
    options: FileOptions,
) -> None:
    """The polygons of the labels (read from ``labels``) and the objects layer, as asked."""
    if "polygons" in paths:
        vectorize(
            labels,
            paths["polygons"],
            scores=scores,
            table=table,
            min_area=options.min_area,
            simplify=options.simplify,
        )
    if "objects" in paths:
        write_objects(paths["objects"], instances or [], list(table.names), crs, transform)
