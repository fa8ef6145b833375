"""What is decided once per input file, before its pixels are read: :func:`plan_file`.

:class:`FileOptions` says how the files are read and what is written; :func:`plan_file`
turns it, the segmentor and the file's header into a :class:`FilePlan`: read by windows
or whole (:func:`use_windows`: as asked, else by size against the memory available,
read once), georeferenced or not, the output files' names (:func:`output_paths`) and
the class table of the outputs. :func:`~ovearth.run.files.segment_file` and the scene
writer take the plan instead of deciding again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import UNCLASSIFIED_LABEL
from ..data.describe import sidecar_paths
from ..data.legend import ClassTable
from ..data.raster import RASTER_SUFFIXES, ImageHeader, as_input, check_image, parse_stretch
from ..data.vector_io import VECTOR_SUFFIXES
from ..errors import InputError
from ..segment.segmentor import Segmentor
from ..viz import palette
from .scene import WINDOWED_PIXELS

logger = logging.getLogger(__name__)


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
    """What is decided once for one input, before its pixels are read.

    Attributes:
        windowed: read by windows (:func:`use_windows`: as asked, else by size and memory).
        georeferenced: the input has a CRS: the labels are a GeoTIFF, else a palette PNG,
            whether the input is read whole or by windows.
        outputs: the files written (:func:`output_paths`).
        table: class names and colours of the outputs (254 unclassified when it can occur).

    """

    windowed: bool
    georeferenced: bool
    outputs: dict[str, Path]
    table: ClassTable


def plan_file(
    segmentor: Segmentor,
    path: str | Path,
    out_dir: str | Path,
    options: FileOptions,
    header: ImageHeader | None = None,
) -> FilePlan:
    """Decide :class:`FilePlan` for ``path`` (reads the header, if not given, and the available memory once).

    Raises:
        InputError: as :func:`use_windows`.

    """
    path = as_input(path)
    if header is None:
        with contextlib.suppress(InputError):  # else read whole, where read_image names the problem
            header = check_image(path, options.bands)
    georeferenced = header is not None and header.georeferenced
    names = segmentor.vocabulary.labels
    unclassified = segmentor.settings.low_score_label == UNCLASSIFIED_LABEL
    return FilePlan(
        windowed=use_windows(path, segmentor, options.windowed, header),
        georeferenced=georeferenced,
        outputs=output_paths(path, Path(out_dir), georeferenced, options),
        table=ClassTable.build(names, palette(len(names)), unclassified),
    )


def shares_scene(path: Path, header: ImageHeader | None, segmentor: Segmentor, options: FileOptions) -> bool:
    """Whether every torchrun process takes a part of ``path`` (:mod:`ovearth.run.scene_split`).

    Decided alike in every process, without the memory available (which may differ): a
    GeoTIFF read by windows as asked (``windowed=True``) or for its size (more than
    :data:`~ovearth.run.scene.WINDOWED_PIXELS` pixels), with sliding windows and no zoom.
    A GeoTIFF read by windows only because it does not fit the memory goes to one process.
    """
    if header is None:
        try:
            header = check_image(path, options.bands)
        except InputError:
            return False  # refused by the process that reads it
    s = segmentor.settings
    if not header.is_raster or s.slide_crop == 0 or s.parsed_zoom is not None:
        return False
    return options.windowed is True or (
        options.windowed is None and header.height * header.width > WINDOWED_PIXELS
    )
