"""Read images (GeoTIFF, PNG, JPEG) as 8-bit RGB, and write labels and class-score rasters.

Band choice: ``bands`` (1-based, e.g. ``(3, 2, 1)``) when given; else the bands whose
colour interpretation is red, green and blue; else bands 1, 2, 3. A raster with fewer
than three bands needs explicit ``bands`` (``(1, 1, 1)`` repeats a grey band).

8-bit scaling of other types (``stretch``): ``"percentile"`` (default) maps each band's
2nd..98th percentile over valid pixels linearly to 0..255 and clips; ``"minmax"`` uses
the band's min..max; ``"LOW,HIGH"`` uses fixed values for all bands (e.g. ``0,3000`` for
reflectance); ``"none"`` clips the values to 0..255. A band without spread (all valid
values equal) falls back to the type's range (0..max for integers, 0..1 for floats).
uint8 data is never rescaled.

Validity: the raster's dataset mask (nodata value, alpha band or internal mask), and
for floats also non-finite values. PNG and JPEG are decoded with Pillow, as the
benchmark pipelines do, and carry no georeferencing.

Writing (:func:`write_labels`, :func:`write_scores`; by windows with
:class:`~ovearth.data.scene.SceneWriter`): Cloud-Optimized GeoTIFFs by default
(:mod:`ovearth.data.cog`) that describe themselves (:mod:`ovearth.data.describe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError

from ..errors import InputError
from .remote import RemoteRaster, gdal_options, is_remote, remote_input, remote_problem

RASTER_SUFFIXES = (".tif", ".tiff")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = RASTER_SUFFIXES + PICTURE_SUFFIXES


@dataclass
class RasterImage:
    """An image ready for segmentation.

    Attributes:
        path: the source file.
        rgb: ``[H, W, 3]`` uint8.
        valid: ``[H, W]`` bool, False on nodata.
        crs: coordinate reference system, or None.
        transform: affine geotransform, or None.
        bands: the 1-based bands read as R, G, B (None for PNG/JPEG).

    """

    path: Path
    rgb: np.ndarray
    valid: np.ndarray
    crs: rasterio.crs.CRS | None = None
    transform: rasterio.Affine | None = None
    bands: tuple[int, int, int] | None = None

    @property
    def georeferenced(self) -> bool:
        """True when the image has a CRS (outputs are then GeoTIFFs)."""
        return self.crs is not None


def parse_bands(spec: str | tuple[int, ...] | None) -> tuple[int, int, int] | None:
    """``"3,2,1"`` -> ``(3, 2, 1)``; None stays None.

    Raises:
        InputError: not three positive integers.

    """
    if spec is None:
        return None
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        bands = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--bands '{spec}' must be three band numbers like 3,2,1.") from None
    if len(bands) != 3 or min(bands) < 1:
        raise InputError(f"--bands '{spec}' must be three band numbers (1-based) like 3,2,1.")
    return bands  # type: ignore[return-value]


def as_input(path: str | Path | RemoteRaster) -> Path | RemoteRaster:
    """An input as ovearth holds it: a :class:`RemoteRaster` for URLs, else a ``Path``."""
    if isinstance(path, RemoteRaster):
        return path
    if is_remote(path):
        return remote_input(str(path))
    return Path(path)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read once before any pixel (see :func:`check_image`).

    Attributes:
        path: the file.
        height, width: size in pixels.
        bands: the 1-based bands read as R, G, B (None for PNG/JPEG, decoded as RGB).
        georeferenced: the file has a CRS (as :attr:`RasterImage.georeferenced`; outputs
            are then GeoTIFFs).

    """

    path: Path
    height: int
    width: int
    bands: tuple[int, int, int] | None
    georeferenced: bool = False

    @property
    def is_raster(self) -> bool:
        """True for a GeoTIFF (read with rasterio, by windows if need be)."""
        return self.bands is not None


def check_image(path: str | Path, bands: tuple[int, int, int] | None = None) -> ImageHeader:
    """Validate an image from its header, before any pixel is read.

    Args:
        path: image file.
        bands: requested bands, or None.

    Returns:
        The header: size and the bands that will be read (pass it on instead of
        re-opening the file: :func:`read_image`, ``SceneReader``, the window decision).

    Raises:
        InputError: missing file, unsupported type, unreadable header, or a band
            choice the file cannot satisfy.

    """
    path = as_input(path)
    if not isinstance(path, RemoteRaster) and not path.is_file():
        raise InputError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported image type '{path.suffix}'; use GeoTIFF, PNG or JPEG.")
    if suffix in PICTURE_SUFFIXES:
        try:
            with Image.open(path) as picture:
                size = picture.size
                picture.verify()
        except Exception as error:  # Pillow raises many types for broken files
            raise InputError(f"{path}: not a readable {suffix[1:].upper()} image ({error}).") from None
        if bands is not None:
            raise InputError(f"{path}: --bands applies to GeoTIFFs; PNG and JPEG are read as RGB.")
        return ImageHeader(path=path, height=size[1], width=size[0], bands=None)
    try:
        with gdal_options(path), rasterio.open(path) as dataset:
            chosen = _choose_bands(path, dataset, bands)
            crs = dataset.crs is not None
            return ImageHeader(path, dataset.height, dataset.width, chosen, georeferenced=crs)
    except RasterioError as error:
        if isinstance(path, RemoteRaster):
            raise remote_problem(path, error) from None
        raise InputError(f"{path}: not a readable raster ({error}).") from None


def _choose_bands(path: Path, dataset: rasterio.DatasetReader, bands: tuple[int, int, int] | None) -> tuple:
    count = dataset.count
    if bands is not None:
        if max(bands) > count:
            raise InputError(
                f"{path} has {count} band(s); --bands {','.join(map(str, bands))} asks for band {max(bands)}."
            )
        return bands
    interp = list(dataset.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return tuple(interp.index(c) + 1 for c in wanted)
    if count >= 3:
        return (1, 2, 3)
    raise InputError(
        f"{path} has {count} band(s) but SAM 3 needs three (R,G,B); pass --bands, "
        "e.g. --bands 1,1,1 to repeat a grey band."
    )


def read_image(
    path: str | Path,
    bands: tuple[int, int, int] | None = None,
    stretch: str = "percentile",
    header: ImageHeader | None = None,
) -> RasterImage:
    """Read an image as 8-bit RGB with its validity mask and georeferencing.

    Args:
        path: GeoTIFF, PNG or JPEG file.
        bands: 1-based bands for R, G, B (GeoTIFF only); see the module docstring.
        stretch: 8-bit scaling rule for non-uint8 rasters (see the module docstring).
        header: :func:`check_image` of ``path`` with ``bands``, when already read.

    Returns:
        The image.

    Raises:
        InputError: see :func:`check_image`; also unreadable pixel data.

    """
    path = as_input(path)
    chosen = (header or check_image(path, bands)).bands
    if chosen is None:
        try:
            with Image.open(path) as picture:
                rgb = np.asarray(picture.convert("RGB"))
        except Exception as error:
            raise InputError(f"{path}: the pixel data cannot be decoded ({error}).") from None
        return RasterImage(path=path, rgb=rgb, valid=np.ones(rgb.shape[:2], bool))
    try:
        with gdal_options(path), rasterio.open(path) as dataset:
            data, valid = read_bands(dataset, chosen, path)
            crs, transform = dataset.crs, dataset.transform
    except RasterioError as error:
        raise InputError(
            f"{path}: the pixel data is corrupt or truncated and cannot be read ({error})."
        ) from None
    rgb = to_uint8(data, valid, stretch, path)
    return RasterImage(
        path=path,
        rgb=np.ascontiguousarray(rgb.transpose(1, 2, 0)),
        valid=valid,
        crs=crs,
        transform=transform if crs is not None else None,
        bands=chosen,
    )


def read_bands(
    dataset: rasterio.DatasetReader,
    bands: tuple[int, int, int],
    path: Path | str,
    window: rasterio.windows.Window | None = None,
    out_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``([3, h, w] band data, [h, w] valid)`` of an open raster, whole or one window.

    Valid = the dataset mask (nodata value, alpha, internal mask), and for floats finite
    values in all three bands. With ``out_shape = (h, w)`` both are read decimated to that
    size (nearest neighbour; a quick-look).

    Raises:
        InputError: corrupt or truncated pixel data.

    """
    try:
        if out_shape is None:
            data = dataset.read(list(bands), window=window)
            valid = dataset.dataset_mask(window=window) > 0
        else:
            nearest = Resampling.nearest
            data = dataset.read(list(bands), window=window, out_shape=(3, *out_shape), resampling=nearest)
            valid = dataset.dataset_mask(window=window, out_shape=out_shape, resampling=nearest) > 0
    except RasterioError as error:
        raise InputError(
            f"{path}: the pixel data is corrupt or truncated and cannot be read ({error})."
        ) from None
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return data, valid


def to_uint8(data: np.ndarray, valid: np.ndarray, stretch: str, path: Path | str = "image") -> np.ndarray:
    """Scale ``[3, H, W]`` band data to uint8 by the ``stretch`` rule.

    The statistics of ``percentile`` and ``minmax`` come from :func:`stretch_sample`
    of each band's valid values, so a reader that streams the raster by windows
    (:mod:`ovearth.data.scene`) can reproduce them exactly.

    Raises:
        InputError: an unknown rule.

    """
    if data.dtype == np.uint8:
        return data
    samples = [stretch_sample(band[valid].astype(np.float64)) for band in data]
    return apply_stretch(data, stretch_limits(samples, data.dtype, stretch, path))


#: At most about this many valid values per band feed the stretch statistics.
STRETCH_SAMPLE = 1_000_000


def sample_step(count: int) -> int:
    """Every ``step``-th valid value (in raster order) feeds the statistics."""
    return count // STRETCH_SAMPLE if count > STRETCH_SAMPLE else 1


def stretch_sample(values: np.ndarray) -> np.ndarray:
    """``values[::sample_step(len(values))]``: the statistics sample of one band's valid values."""
    return values[:: sample_step(values.size)]


def needs_statistics(dtype: np.dtype, stretch: str) -> bool:
    """True when the rule reads the data (``percentile`` / ``minmax`` on non-uint8 data)."""
    return np.dtype(dtype) != np.uint8 and stretch.strip().lower() in ("percentile", "minmax")


def parse_stretch(stretch: str, path: Path | str = "--stretch") -> str | tuple[float, float]:
    """``percentile`` / ``minmax`` / ``none``, or ``(low, high)`` from ``"LOW,HIGH"``.

    Raises:
        InputError: another word, or limits that are not finite with ``LOW < HIGH``.

    """
    rule = stretch.strip().lower()
    if rule in ("percentile", "minmax", "none"):
        return rule
    try:
        low, high = (float(v) for v in rule.split(","))
    except ValueError:
        words = "percentile, minmax, none or LOW,HIGH"
        raise InputError(f"{path}: --stretch '{stretch}' is not {words}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise InputError(f"{path}: --stretch '{stretch}' needs finite LOW < HIGH, e.g. 0,3000.")
    return low, high


def stretch_limits(
    samples: list[np.ndarray] | None, dtype: np.dtype, stretch: str, path: Path | str = "image"
) -> list[tuple[float, float]]:
    """``(low, high)`` per band: the values mapped to 0 and 255.

    Args:
        samples: per band, the :func:`stretch_sample` of its valid values as float64
            (only read by ``percentile`` and ``minmax``; may be None otherwise).
        dtype: the raster's data type (the fallback range of a band without spread).
        stretch: the rule (see the module docstring).
        path: named in errors.

    Raises:
        InputError: an unknown rule.

    """
    rule = parse_stretch(stretch, path)
    if rule == "none":
        return [_with_spread(0.0, 255.0, dtype)] * 3
    if isinstance(rule, tuple):
        return [_with_spread(*rule, dtype)] * 3
    limits = []
    for sample in samples:
        sample = sample[np.isfinite(sample)]  # inf / NaN values carry no statistics
        if sample.size == 0:
            low, high = 0.0, 1.0
        elif rule == "percentile":
            low, high = (float(v) for v in np.percentile(sample, [2, 98]))
        else:
            low, high = float(sample.min()), float(sample.max())
        limits.append(_with_spread(low, high, dtype))
    return limits


def _with_spread(low: float, high: float, dtype: np.dtype) -> tuple[float, float]:
    """``(low, high)``, or the type's range (0..max for integers, 0..1 for floats) without spread."""
    if high > low:
        return low, high
    return 0.0, float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def apply_stretch(data: np.ndarray, limits: list[tuple[float, float]]) -> np.ndarray:
    """``[3, H, W]`` -> uint8: ``clip(round((x - low) * 255 / (high - low)), 0, 255)``.

    NaN counts as 0, +inf as ``high`` and -inf as ``low``.
    """
    if data.dtype == np.uint8:
        return data
    out = np.empty(data.shape, np.uint8)
    for b, (low, high) in enumerate(limits):
        scale = 255.0 / (high - low)
        band = np.nan_to_num(data[b].astype(np.float64), nan=0.0, posinf=high, neginf=low)
        with np.errstate(over="ignore", invalid="ignore"):  # huge finite values clip to 255
            out[b] = np.clip(np.round((band - low) * scale), 0, 255).astype(np.uint8)
    return out
