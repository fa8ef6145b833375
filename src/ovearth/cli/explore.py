"""``ovearth explore``: a local web page to try classes, thresholds and refiners on an image."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MODEL
from ..errors import InputError
from ..explore.budget import CACHE_MEMORY_BYTES, RUN_MEMORY_BYTES
from .app import (
    AdapterOption,
    BandsOption,
    DeviceOption,
    ModelOption,
    PrecisionOption,
    VerboseOption,
    app,
    load_on,
    setup_logging,
    warn,
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
        str,
        typer.Option(
            help="Address to listen on; any address other than loopback (e.g. 0.0.0.0) lets other "
            "machines in, with no login (a warning is printed). Requests must still name this "
            "machine as their Host: loopback names, the address listened on, and for a non-loopback "
            "address this machine's host name (0.0.0.0 and :: also accept any IP address); see "
            "--allow-host."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    bands: BandsOption = None,
    stretch: Annotated[
        str, typer.Option(help="8-bit scaling of non-uint8 rasters: percentile, minmax, none, or LOW,HIGH.")
    ] = "percentile",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted, in MB.")] = 64.0,
    run_memory_gb: Annotated[
        float,
        typer.Option(
            help="Memory all runs in progress may hold together, in GB (backbone features of every "
            "window, per-name maps, working memory), estimated from each request before it starts; "
            "a run over it is refused."
        ),
    ] = RUN_MEMORY_BYTES / 1e9,
    cache_memory_gb: Annotated[
        float,
        typer.Option(
            help="Memory kept between runs, in GB: half for backbone features, 3/8 for per-name "
            "maps, 1/8 for results."
        ),
    ] = CACHE_MEMORY_BYTES / 1e9,
    allow_model: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODEL",
            help="A model folder or hub id that a refiner parameter naming a model (clip:model=...) "
            "may take on the page, besides the refiner's default; repeat for more. The page cannot "
            "name any other path or model.",
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="Another Host name the page may be opened by (e.g. a DNS alias of this machine); "
            "repeat for more. Loopback names are always accepted.",
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Start a local web page to try classes, thresholds and refiners on an image, and look inside SAM 3.

    Prints the page's address and serves it until Ctrl-C. Only the images given, those
    under --root and uploads can be opened. Large GeoTIFFs are shown and segmented as a
    quick-look (same bands and stretch as `segment`); export the settings as a preset and
    run `segment --preset` for full resolution. Only the page itself may use the server:
    requests from other sites or origins, and requests naming another host, are refused.
    """
    setup_logging(verbose)
    import uvicorn

    from ..data.raster import parse_bands, parse_stretch
    from ..explore.catalog import ImageCatalog
    from ..explore.guard import WILDCARD_HOSTS, HostRule, is_loopback
    from ..explore.server import create_app
    from ..explore.session import ExploreSession
    from ..segment.settings import SegmentSettings

    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a port number (0..65535).")
    for option, value in (
        ("--max-upload-mb", max_upload_mb),
        ("--run-memory-gb", run_memory_gb),
        ("--cache-memory-gb", cache_memory_gb),
    ):
        if not 0 < value < 1e6:  # NaN and inf fail too
            raise InputError(f"{option} must be a positive number, got {value}.")
    parse_stretch(stretch)
    catalog = ImageCatalog(list(images or []), root)  # bad files: one sentence before the model loads
    base = SegmentSettings(precision=precision)
    listener = _listen(host, port)
    loaded = load_on(model, device, adapter)
    session = ExploreSession(
        loaded,
        catalog,
        base,
        bands=parse_bands(bands),
        stretch=stretch,
        run_memory=int(run_memory_gb * 1e9),
        cache_memory=int(cache_memory_gb * 1e9),
        allowed_models=tuple(allow_model or ()),
    )
    open_hosts = host in WILDCARD_HOSTS
    hosts = HostRule.for_bind(host, allow_host or ())
    application = create_app(session, hosts=hosts, max_upload_bytes=int(max_upload_mb * 2**20))
    bound = listener.getsockname()[1]
    shown = "127.0.0.1" if open_hosts else (f"[{host}]" if ":" in host else host)
    typer.echo(f"ovearth explore: http://{shown}:{bound}/", err=False)
    if not is_loopback(host):
        warn(f"listening on {host or 'every address'}: the page is open to other machines and has no login.")
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
