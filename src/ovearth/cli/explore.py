"""``ovearth explore``: a local web page to try classes, thresholds and refiners on an image."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MODEL
from ..errors import InputError
from .app import (
    AdapterOption,
    BandsOption,
    DeviceOption,
    ModelOption,
    PrecisionOption,
    VerboseOption,
    app,
    err,
    load_on,
    setup_logging,
)


@app.command()
def explore(
    images: Annotated[
        list[Path] | None, typer.Argument(help="Image files (GeoTIFF, PNG, JPEG) the page may open.")
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="A folder whose images (and sub-folders') the page may open.")
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    adapter: AdapterOption = None,
    precision: PrecisionOption = "float32",
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 lets other machines in (no login!).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    bands: BandsOption = None,
    stretch: Annotated[
        str, typer.Option(help="8-bit scaling of non-uint8 rasters: percentile, minmax, none, or LOW,HIGH.")
    ] = "percentile",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted, in MB.")] = 64.0,
    verbose: VerboseOption = False,
) -> None:
    """Start a local web page to try classes, thresholds and refiners on an image, and look inside SAM 3.

    Prints the page's address and serves it until Ctrl-C. Only the images given, those
    under --root and uploads can be opened. Large GeoTIFFs are shown and segmented as a
    quick-look (same bands and stretch as `segment`); export the settings as a preset and
    run `segment --preset` for full resolution.
    """
    setup_logging(verbose)
    import uvicorn

    from ..data.raster import parse_bands, parse_stretch
    from ..explore.catalog import ImageCatalog
    from ..explore.server import create_app
    from ..explore.session import ExploreSession
    from ..segment.settings import SegmentSettings

    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a port number (0..65535).")
    if not max_upload_mb > 0:
        raise InputError(f"--max-upload-mb must be above 0, got {max_upload_mb}.")
    parse_stretch(stretch)
    catalog = ImageCatalog(list(images or []), root)  # bad files: one sentence before the model loads
    base = SegmentSettings(precision=precision)
    listener = _listen(host, port)
    loaded = load_on(model, device, adapter)
    session = ExploreSession(loaded, catalog, base, bands=parse_bands(bands), stretch=stretch)
    open_hosts = host in ("0.0.0.0", "::", "")
    allowed = ["*"] if open_hosts else [host, "127.0.0.1", "localhost", "[::1]"]
    application = create_app(session, allowed_hosts=allowed, max_upload_bytes=int(max_upload_mb * 2**20))
    bound = listener.getsockname()[1]
    shown = "127.0.0.1" if open_hosts else (f"[{host}]" if ":" in host else host)
    typer.echo(f"ovearth explore: http://{shown}:{bound}/", err=False)
    if open_hosts:
        err.print("[yellow]warning:[/] the page is open to other machines and has no login.", highlight=False)
    server = uvicorn.Server(uvicorn.Config(application, log_level="info" if verbose else "warning"))
    try:
        server.run(sockets=[listener])
    finally:
        session.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one).

    Raises:
        InputError: the address cannot be used (taken, or not this machine's).

    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise InputError(f"Cannot listen on {host}:{port} ({error.strerror}); try another --port.") from None
    listener.listen(128)
    return listener
