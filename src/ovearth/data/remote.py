"""Remote scenes: Cloud-Optimized GeoTIFFs over HTTP(S) or S3, and STAC items.

An input given as ``https://host/scene.tif`` or ``s3://bucket/scene.tif`` is read through
GDAL's ``/vsicurl/`` or ``/vsis3/`` (with rasterio), so only the bytes of the header and
of the blocks a run needs travel: a windowed run of a COG reads its windows, never the
whole file. An input ending in ``.json`` (a local file or a URL) is a STAC item: the
asset named by ``--stac-asset`` (default ``visual``) is the raster, its ``href`` taken
relative to the item.

A remote input is a :class:`RemoteRaster`: it names itself by its URL in messages, gives
the output files the stem of the file it points to (``scene_labels.tif``), and opens in
rasterio through :meth:`~RemoteRaster.__fspath__` (the GDAL path). Problems of the network
or the catalogue - a malformed URL, a host that does not answer, a missing file or
asset - are one sentence and exit code 2 (:class:`RemoteError`); a remote file that
answers but is not a readable raster is a bad input like a local one (exit code 1).

S3 credentials and endpoints are GDAL's (``AWS_*`` environment variables); HTTP timeouts
default to :data:`HTTP_TIMEOUT` seconds (``GDAL_HTTP_TIMEOUT`` overrides).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError, OvearthError

#: URL schemes read remotely
SCHEMES = ("http", "https", "s3")
#: seconds GDAL and the STAC reader wait for a host
HTTP_TIMEOUT = 30
#: the largest STAC item read (bytes)
MAX_ITEM_BYTES = 16 * 2**20
#: the asset read from a STAC item when ``--stac-asset`` is not given
DEFAULT_ASSET = "visual"


class RemoteError(OvearthError):
    """A remote input cannot be reached or found: a bad URL, host, file or STAC asset."""

    exit_code = 2


def is_remote(spec: object) -> bool:
    """True for ``http://``, ``https://`` and ``s3://`` strings (and :class:`RemoteRaster`)."""
    if isinstance(spec, RemoteRaster):
        return True
    return isinstance(spec, str) and urllib.parse.urlsplit(spec).scheme.lower() in SCHEMES


@dataclass(frozen=True)
class RemoteRaster(os.PathLike):
    """A raster read over the network; stands where a local ``Path`` of an input stands.

    Attributes:
        url: ``https://...`` or ``s3://...`` of the raster itself.
        label: how messages and ``run.json`` name it: the URL, or ``ITEM#asset`` for a STAC asset.

    """

    url: str
    label: str

    def __fspath__(self) -> str:
        """The GDAL path rasterio opens: ``/vsicurl/URL`` or ``/vsis3/bucket/key``."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme.lower() == "s3":
            return f"/vsis3/{parts.netloc}{parts.path}"
        return f"/vsicurl/{self.url}"

    def __str__(self) -> str:
        return self.label

    @property
    def name(self) -> str:
        """The file name at the end of the URL's path (``scene.tif``)."""
        return PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(self.url).path)).name

    @property
    def stem(self) -> str:
        """The name without its suffix: the outputs' stem."""
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        """The name's suffix (``.tif``)."""
        return PurePosixPath(self.name).suffix

    def resolve(self) -> RemoteRaster:
        """Itself (a URL is already absolute)."""
        return self


def remote_input(spec: str, asset: str | None = None) -> RemoteRaster:
    """The :class:`RemoteRaster` of a URL, or of a STAC item's asset (``spec`` ending in ``.json``).

    Raises:
        RemoteError: a malformed URL, an unreachable item, a missing asset.
        InputError: an item that is not a STAC item, or an asset that is not a GeoTIFF.

    """
    if spec.lower().endswith(".json"):
        return stac_asset(spec, asset)
    if asset is not None:
        raise InputError(f"--stac-asset applies to STAC items (.json); {spec} is a raster.")
    return RemoteRaster(check_url(spec), spec)


def check_url(url: str) -> str:
    """``url`` when it is a well-formed remote URL of a GeoTIFF.

    Raises:
        RemoteError: no host, or another scheme.
        InputError: not a GeoTIFF (remote rasters are read by windows: ``.tif`` / ``.tiff``).

    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.netloc or not parts.path.strip("/"):
        raise RemoteError(
            f"{url}: not a URL ovearth can read; give https://HOST/PATH.tif or s3://BUCKET/KEY.tif."
        )
    suffix = PurePosixPath(parts.path).suffix.lower()
    if suffix not in (".tif", ".tiff"):
        raise InputError(
            f"{url}: remote inputs are GeoTIFFs (ideally Cloud-Optimized), not '{suffix or 'no suffix'}'."
        )
    return url


def stac_asset(item: str, asset: str | None = None) -> RemoteRaster:
    """The raster of ``item``'s asset ``asset`` (default :data:`DEFAULT_ASSET`).

    ``item`` is a STAC item JSON file or URL; the asset's ``href`` may be relative to it.

    Raises:
        RemoteError: the item cannot be fetched, or has no such asset (the message lists
            the assets it has).
        InputError: the file is not a STAC item (no ``assets``), or too large.

    """
    document = _read_item(item)
    assets = document.get("assets") if isinstance(document, dict) else None
    if not isinstance(assets, dict) or not assets:
        raise InputError(f"{item}: not a STAC item (no 'assets').")
    key = asset or DEFAULT_ASSET
    chosen = assets.get(key)
    if not isinstance(chosen, dict) or not isinstance(chosen.get("href"), str):
        have = ", ".join(sorted(str(k) for k in assets))
        raise RemoteError(
            f"{item}: the STAC item has no asset '{key}'; it has: {have} (choose with --stac-asset)."
        )
    href = chosen["href"]
    if is_remote(item):
        href = urllib.parse.urljoin(item, href)
    elif not is_remote(href):
        local = Path(href) if Path(href).is_absolute() else Path(item).parent / href
        raise InputError(f"{item}: asset '{key}' is the local file {local}; give that file itself.")
    return RemoteRaster(check_url(href), f"{item}#{key}")


def _read_item(item: str) -> object:
    """The parsed JSON of a STAC item file or URL (bounded in size and time)."""
    try:
        if is_remote(item):
            if urllib.parse.urlsplit(item).scheme.lower() == "s3":
                raise RemoteError(f"{item}: STAC items are read over https://; s3:// is for the rasters.")
            with urllib.request.urlopen(item, timeout=HTTP_TIMEOUT) as answer:  # noqa: S310 (http/https only)
                data = answer.read(MAX_ITEM_BYTES + 1)
        else:
            path = Path(item)
            if not path.is_file():
                raise InputError(f"{item}: no such file.")
            with path.open("rb") as file:
                data = file.read(MAX_ITEM_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise RemoteError(f"{item}: the server answered HTTP {error.code} ({error.reason}).") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise RemoteError(f"{item}: cannot be reached ({reason}).") from None
    if len(data) > MAX_ITEM_BYTES:
        raise InputError(f"{item}: larger than {MAX_ITEM_BYTES // 2**20} MB; not a STAC item.")
    try:
        return json.loads(data)
    except ValueError as error:
        raise InputError(f"{item}: not JSON ({error}).") from None


def remote_problem(source: RemoteRaster, error: Exception) -> OvearthError:
    """The sentence for a remote raster GDAL could not open or read.

    The network's answer (an HTTP status, a host that cannot be reached) is a
    :class:`RemoteError`; a file that arrives but is not a readable raster an :class:`InputError`.
    """
    text = (str(error).splitlines() or [""])[0]
    status = re.search(r"HTTP response code: (\d+)", text)
    if status:
        return RemoteError(f"{source}: the server answered HTTP {status.group(1)}.")
    if "CURL error" in text or "Could not resolve" in text:
        return RemoteError(f"{source}: cannot be reached ({text.split(':', 1)[-1].strip()}).")
    return InputError(f"{source}: not a readable raster ({text or type(error).__name__}).")


def gdal_options(source: object) -> contextlib.AbstractContextManager[object]:
    """GDAL's settings while a remote raster is open (nothing for a local file).

    No directory listing (each sidecar GDAL looks for would be a request), only GeoTIFF
    names fetched, bounded waits and retries; what the user set in the environment wins.
    """
    if not isinstance(source, RemoteRaster):
        return contextlib.nullcontext()
    import rasterio

    defaults = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_TIMEOUT": str(HTTP_TIMEOUT),
        "GDAL_HTTP_MAX_RETRY": "2",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    }
    return rasterio.Env(**{k: v for k, v in defaults.items() if k not in os.environ})
