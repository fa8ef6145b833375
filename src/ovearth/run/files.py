"""Segment image files and write the results into an output folder.

For an input ``<stem>.<ext>``, :func:`segment_file` writes into ``out_dir``:

* ``<stem>_labels.tif`` (georeferenced input: a Cloud-Optimized GeoTIFF with the input's
  CRS and transform, uint8 class indices, 254 = unclassified, 255 = nodata, colour table,
  class table; side files ``.tif.aux.xml`` and ``.qml`` with the class names) or
  ``<stem>_labels.png`` (palette PNG) for input without georeferencing;
* ``<stem>_overlay.png``: class colours over the image, with a legend;
* as :class:`FileOptions` asks: ``<stem>_scores.tif`` (one float32 band per class, the
  fused score, NaN on nodata), ``<stem>_labels.<gpkg|geojson|parquet>`` (one polygon per
  region, :mod:`ovearth.data.vectorize`) and ``<stem>_objects.<format>`` (SAM 3's kept
  objects, :mod:`ovearth.data.objects`).

GeoTIFFs larger than :data:`WINDOWED_PIXELS` (or any, with ``windowed=True``) are read
and written by windows (:mod:`ovearth.run.scene`): same outputs, bounded memory, the
labels always a tiled GeoTIFF and the overlay a quick-look.

Every file is written atomically: a failure leaves no partial output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import UNCLASSIFIED_LABEL
from ..data.atomic import atomic_path
from ..data.describe import sidecar_paths
from ..data.legend import ClassTable
from ..data.objects import write_objects
from ..data.output import is_own_output
from ..data.raster import (
    IMAGE_SUFFIXES,
    RASTER_SUFFIXES,
    ImageHeader,
    RasterImage,
    check_image,
    parse_stretch,
    read_image,
    write_labels,
    write_scores,
)
from ..data.vector_io import VECTOR_SUFFIXES
from ..data.vectorize import vectorize
from ..errors import InputError
from ..segment.fusion import scores_for_writing
from ..segment.instances import Instance
from ..segment.segmentor import Prediction, Segmentor
from ..viz import overlay, palette
from .scene import WINDOWED_PIXELS, SceneResult, segment_scene

logger = logging.getLogger(__name__)


def collect_images(inputs: Iterable[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Expand files and folders into the list of image files, in order.

    Folders contribute their GeoTIFF, PNG and JPEG files (not recursive), sorted; hidden
    files (``.DS_Store``, ``._scene.tif``, temporary ``.*.part`` files) are skipped, and so,
    in a folder that is also the output folder ``out_dir``, are ``segment``'s own outputs
    (``<stem>_labels``, ``_overlay``, ``_scores``...), so a second run does not segment them.

    Raises:
        InputError: a path that does not exist, a folder without images, or no input.

    """
    files: list[Path] = []
    out = Path(out_dir).resolve() if out_dir is not None else None
    for item in inputs:
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
    stems = [f.stem for f in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise InputError(f"Several inputs are named '{clash[0]}' (outputs would overwrite each other).")
    return files


#: formats of ``--vector``: the vector writer's suffixes without the dot
VECTOR_FORMATS = tuple(suffix[1:] for suffix in VECTOR_SUFFIXES)


@dataclass(frozen=True)
class FileOptions:
    """How the files are read and what is written.

    Attributes:
        bands: 1-based GeoTIFF bands for R, G, B (None: the default rule).
        stretch: 8-bit scaling rule of non-uint8 rasters.
        scores: also write the per-class fused score raster (``<stem>_scores.tif``).
        windowed: read and write by windows (None: automatic).
        skip_bad: list bad inputs under ``skipped`` instead of stopping.
        overwrite: recompute inputs whose outputs exist with the same key.
        cog: GeoTIFFs as Cloud-Optimized GeoTIFFs with overviews (else plain tiles).
        vector: ``""``, or the format of the labels' polygons: ``gpkg``, ``geojson``, ``parquet``.
        min_area: polygons smaller than this are dropped (square metres; pixels unprojected).
        simplify: polygon simplification tolerance (metres; pixels unprojected), 0: exact.
        objects: also write SAM 3's kept objects as polygons (``<stem>_objects.<format>``).

    """

    bands: tuple[int, int, int] | None = None
    stretch: str = "percentile"
    scores: bool = False
    windowed: bool | None = None
    skip_bad: bool = False
    overwrite: bool = False
    cog: bool = True
    vector: str = ""
    min_area: float = 0.0
    simplify: float = 0.0
    objects: bool = False

    def __post_init__(self) -> None:
        """Check the stretch rule and the vector options here, once, for every caller."""
        parse_stretch(self.stretch)
        if self.vector not in ("", *VECTOR_FORMATS):
            raise InputError(f"--vector must be one of {', '.join(VECTOR_FORMATS)}, got '{self.vector}'.")
        for name in ("min_area", "simplify"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value!r}.")
        if (self.min_area or self.simplify) and not self.vector:
            raise InputError(
                "--min-area and --simplify apply to polygons: add --vector gpkg (or geojson, parquet)."
            )

    @property
    def object_format(self) -> str:
        """Format of the objects layer: the ``vector`` format, else ``gpkg``."""
        return self.vector or "gpkg"

    def key_fields(self) -> dict[str, Any]:
        """The options that change what is written (for the resume key)."""
        fields = dataclasses.asdict(self)
        for name in ("windowed", "skip_bad", "overwrite"):
            fields.pop(name)
        return fields


def output_paths(image: Path, out_dir: Path, georeferenced: bool, options: FileOptions) -> dict[str, Path]:
    """The files :func:`segment_file` writes for ``image`` (the labels' side files included)."""
    labels = out_dir / f"{image.stem}_labels.{'tif' if georeferenced else 'png'}"
    paths = {"labels": labels, **(sidecar_paths(labels) if georeferenced else {})}
    paths["overlay"] = out_dir / f"{image.stem}_overlay.png"
    if options.scores:
        paths["scores"] = out_dir / f"{image.stem}_scores.tif"
    if options.vector:
        paths["polygons"] = out_dir / f"{image.stem}_labels.{options.vector}"
    if options.objects:
        paths["objects"] = out_dir / f"{image.stem}_objects.{options.object_format}"
    return paths


def whole_image_bytes(height: int, width: int, num_names: int, num_classes: int) -> int:
    """Estimated peak host memory of segmenting ``height x width`` pixels in one piece.

    Per pixel: the source bands as float32 for stretching (12 B), RGB and valid mask
    (4 B), the per-name logit sums and the view count (``4 (names + 1)`` B), the class
    logits (``4 classes`` B) and the labels (8 B).
    """
    return height * width * (24 + 4 * (num_names + 1) + 4 * num_classes)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def use_windows(
    path: Path, segmentor: Segmentor, windowed: bool | None, header: ImageHeader | None = None
) -> bool:
    """Whether ``path`` is segmented by windows: as asked, else for large sliding-window GeoTIFFs.

    An image too large for the available memory on the whole-image path goes by windows
    when it can (a GeoTIFF with sliding windows and no zoom, ``windowed`` not False) and
    is refused in one sentence otherwise.

    ``header`` (from :func:`~ovearth.data.raster.check_image`) saves opening the file again.

    Raises:
        InputError: windows asked for a PNG/JPEG, or an image too large for memory.

    """
    is_raster = path.suffix.lower() in RASTER_SUFFIXES
    if windowed and not is_raster:
        raise InputError(f"{path}: --windowed reads GeoTIFFs; PNG and JPEG are read whole.")
    if windowed:
        return True
    if header is None:
        try:
            header = check_image(path)
        except InputError:
            return False  # read whole, where read_image names the problem
    height, width = header.height, header.width
    s, vocabulary = segmentor.settings, segmentor.vocabulary
    can_window = is_raster and s.slide_crop > 0 and s.parsed_zoom is None
    need = whole_image_bytes(height, width, len(vocabulary.names), len(vocabulary))
    free = available_memory()
    if free is not None and need > free:
        if can_window and windowed is None:
            logger.warning("%s is too large to hold whole in memory; it is read by windows.", path)
            return True
        how = (
            "read it by windows (--windowed)"
            if can_window
            else "read it by windows with --slide-crop 1008 --slide-stride 1008"
            if is_raster
            else "convert it to a GeoTIFF and read it by windows (--slide-crop 1008 --slide-stride 1008)"
        )
        raise InputError(
            f"{path}: {height} x {width} pixels need about {need / 2**30:.1f} GB in one piece, more than the "
            f"{free / 2**30:.1f} GB available; {how}."
        )
    if windowed is not None or not is_raster:
        return False
    large = height * width > WINDOWED_PIXELS
    if large and s.slide_crop == 0:
        logger.warning(
            "%s is large and squeezed into one view; --slide-crop/--slide-stride would read it by windows.",
            path,
        )
    return large and can_window


@dataclass(frozen=True)
class FilePlan:
    """What is decided once for one input, before it is read.

    Attributes:
        windowed: read by windows (:func:`use_windows`: as asked, else by size and memory).
        table: class names and colours of the outputs (254 unclassified when it can occur).

    """

    windowed: bool
    table: ClassTable


def plan_file(
    segmentor: Segmentor, path: str | Path, options: FileOptions, header: ImageHeader | None = None
) -> FilePlan:
    """Decide :class:`FilePlan` for ``path`` (reads the available memory once).

    Raises:
        InputError: as :func:`use_windows`.

    """
    names = segmentor.vocabulary.labels
    unclassified = segmentor.settings.low_score_label == UNCLASSIFIED_LABEL
    return FilePlan(
        windowed=use_windows(Path(path), segmentor, options.windowed, header),
        table=ClassTable.build(names, palette(len(names)), unclassified),
    )


def segment_file(
    segmentor: Segmentor,
    path: str | Path,
    out_dir: str | Path,
    options: FileOptions | None = None,
    on_view: Callable[[int, int], None] | None = None,
    header: ImageHeader | None = None,
    plan: FilePlan | None = None,
) -> tuple[Prediction | SceneResult, dict[str, Path]]:
    """Read, segment and write one image.

    Args:
        segmentor: the configured segmentor.
        path: image file.
        out_dir: output folder (created).
        options: how the file is read and what is written (see :class:`FileOptions`).
        on_view: progress callback of windowed runs, ``on_view(done, total)``.
        header: :func:`~ovearth.data.raster.check_image` of ``path``, when already read.
        plan: :func:`plan_file` of ``path``, when already decided (else decided here).

    Returns:
        The prediction (a :class:`SceneResult` when windowed) and the written files.

    Raises:
        InputError: unreadable input.

    """
    path, out = Path(path), Path(out_dir)
    options = options or FileOptions()
    plan = plan or plan_file(segmentor, path, options, header)
    names, table = list(plan.table.names), plan.table
    found: list[Instance] | None = [] if options.objects else None
    if plan.windowed:
        paths = output_paths(path, out, True, options)
        with _scores_for_polygons(paths, out) as scores:
            written = {**paths, "scores": scores} if scores else paths
            result = segment_scene(
                segmentor,
                path,
                written,
                options.bands,
                options.stretch,
                on_view,
                header,
                options.cog,
                found,
                table,
            )
            crs, transform = result.crs, result.transform
            _write_vectors(paths, scores, table, crs, transform, found, options)
        return result, paths
    image: RasterImage = read_image(path, bands=options.bands, stretch=options.stretch, header=header)
    if not image.valid.any():
        logger.warning("%s: every pixel is nodata; all labels are 255 (nodata).", image.path)
    prediction = segmentor.predict(image.rgb, valid=image.valid, instances=options.objects)
    paths = output_paths(image.path, out, image.georeferenced, options)
    write_labels(paths["labels"], prediction.labels, image, table, cog=options.cog)
    with atomic_path(paths["overlay"]) as temp:
        overlay(image.rgb, prediction.labels, names).save(temp, format="PNG")
    with _scores_for_polygons(paths, out) as scores:
        if scores is not None:
            values = scores_for_writing(prediction.class_logits, prediction.valid)
            write_scores(scores, values, names, image, cog=options.cog and "scores" in paths)
        _write_vectors(paths, scores, table, image.crs, image.transform, prediction.instances, options)
    return prediction, paths


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
    scores: Path | None,
    table: ClassTable,
    crs,
    transform,
    instances: list[Instance] | None,
    options: FileOptions,
) -> None:
    """The polygons of the labels and the objects layer, as asked."""
    if "polygons" in paths:
        vectorize(
            paths["labels"],
            paths["polygons"],
            scores=scores,
            table=table,
            min_area=options.min_area,
            simplify=options.simplify,
        )
    if "objects" in paths:
        write_objects(paths["objects"], instances or [], list(table.names), crs, transform)
