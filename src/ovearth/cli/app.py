"""The ``ovearth`` Typer app, and what every command shares.

Every user mistake becomes one line on stderr and a non-zero exit code (1 for bad
input, 2 for missing or unloadable weights); an error no check foresaw is one line too
(exit code 3; ``-v`` shows its traceback). Commands write only inside their ``-o``
folder and record the settings they ran with there.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from ..environment import progress_seconds, torchrun
from ..errors import InputError, OvearthError

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain text: "ovearth[parquet]" keeps its brackets
    no_args_is_help=True,
    help="Open-vocabulary segmentation of remote-sensing images with SAM 3 (SegEarth-OV3, exact and fast).",
)
#: stderr. Markup is off: paths, class names and messages are printed as they are (a
#: bracketed word in a file name, such as a style name, is text); styles come from
#: :func:`labelled` (:func:`warn`, :func:`fail`).
#: Long lines are not wrapped (soft_wrap): a path in a log stays on one line.
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def labelled(label: str, style: str, message: str) -> None:
    """Print ``<label> <message>``: the label in ``style``, the message literally (no markup)."""
    err.print(Text.assemble((label, style), " ", message), soft_wrap=True)


def warn(message: str) -> None:
    """Print ``warning: <message>`` (the word in yellow)."""
    labelled("warning:", "yellow", message)


def fail(message: str) -> None:
    """Print ``error: <message>`` (the word in bold red, the message literally, at most ~1,000 characters)."""
    if len(message) > MAX_MESSAGE:
        message = f"{message[:MAX_MESSAGE]}... ({len(message) - MAX_MESSAGE} characters more)"
    labelled("error:", "bold red", message)


#: Longest error sentence printed whole (a value quoted in it is cut where it is made).
MAX_MESSAGE = 1000


# Options shared by several commands (one definition, one help text).
def _checked_output(path: Path) -> Path:
    """Refuse an unusable ``-o`` while the options are parsed, before any model loads."""
    from ..data.output import check_output_dir

    return check_output_dir(path)


OutputOption = Annotated[
    Path, typer.Option("-o", "--output", help="Output folder.", callback=_checked_output)
]
ModelOption = Annotated[str, typer.Option(help="Hub id, save_pretrained folder, or Meta sam3.pt.")]
DeviceOption = Annotated[
    str, typer.Option(help="auto, cpu, cuda or cuda:N (auto: cuda:LOCAL_RANK under torchrun).")
]
ClassesOption = Annotated[str | None, typer.Option(help="Classes, e.g. 'building,house;road;tree'.")]
PresetOption = Annotated[
    str | None,
    typer.Option(help="Dataset protocol (classes and thresholds), e.g. loveda; see `ovearth datasets`."),
]
BandsOption = Annotated[str | None, typer.Option(help="GeoTIFF bands for R,G,B, e.g. 3,2,1.")]
RefineAtOption = Annotated[str | None, typer.Option(help="fusion (per prompt) or backbone (once per view).")]
RefineForOption = Annotated[str | None, typer.Option(help="At fusion: decoder, mask or both.")]
ZoomOption = Annotated[
    str, typer.Option(help="Two-pass zoom on the least certain regions, e.g. k=4,scale=2.")
]
SkipAbsentOption = Annotated[
    bool,
    typer.Option(
        "--skip-absent/--no-skip-absent",
        help="Skip the mask decoder of names whose presence is below --prob-thd when no label can change.",
    ),
]
PrecisionOption = Annotated[
    str,
    typer.Option(help="float32, or bfloat16 (autocast: GPU speed, results differ by rounding)."),
]
ViewBatchOption = Annotated[
    int | None, typer.Option(help="Views through the backbone at once; default 1 on CPU, 4 on GPU.")
]
CompileOption = Annotated[
    bool, typer.Option("--compile", help="torch.compile the backbone (the first view pays compilation).")
]
AdapterOption = Annotated[
    Path | None, typer.Option(help="A trained adapter: the -o folder of `ovearth train` or its adapter/.")
]
PromptFormOption = Annotated[
    str | None,
    typer.Option(
        help="meta (default: text + the geometry encoder's token, as Meta's sam3 and SegEarth-OV3) "
        "or transformers (text only, for comparison)."
    ),
]
ModeOption = Annotated[str, typer.Option(help="fast, or reference (the plain per-name loop).")]
PromptBatchOption = Annotated[
    int | None, typer.Option(help="Prompts per batch (memory bound); default 1 on CPU, 16 on GPU.")
]
SavePredictionsOption = Annotated[bool, typer.Option("--save-predictions", help="Keep colour label maps.")]
SkipBadOption = Annotated[
    bool, typer.Option("--skip-bad", help="Skip bad images (listed with the reason) instead of stopping.")
]
VerboseOption = Annotated[bool, typer.Option("-v", "--verbose")]


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` when available (``cuda:LOCAL_RANK`` under torchrun) else ``cpu``.

    Raises:
        InputError: an unknown device, or CUDA asked for but absent.

    """
    import torch

    if spec == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        local_rank = torchrun().local_rank
        return f"cuda:{local_rank}" if local_rank is not None else "cuda"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device '{spec}' is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {spec} was asked for but no CUDA device is available; use --device cpu.")
    return spec


def setup_logging(verbose: bool) -> None:
    """Library logs to stderr through rich (INFO with -v, else WARNING).

    Third-party noise is kept out of the user's terminal unless ``-v``: GDAL's messages
    through rasterio's loggers below ERROR, and rasterio's ``NotGeoreferencedWarning``
    (an image without georeferencing gets PNG outputs, which says so). Any other Python
    warning is printed as one line of ours.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
        force=True,
    )
    warnings.showwarning = _one_line_warning
    if not verbose:
        from rasterio.errors import NotGeoreferencedWarning

        logging.getLogger("rasterio").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` replacement: ``warning: <first line>``."""
    text = str(message).strip().splitlines()
    first = text[0] if text else category.__name__
    warn(first)


def vocabulary_and_settings(classes: str | None, preset: str | None):
    """The vocabulary and base settings from ``--classes`` or ``--preset``.

    Raises:
        InputError: both or neither given, a bad class list, an unknown preset.

    """
    from ..data.protocols import load_protocol
    from ..segment.settings import SegmentSettings
    from ..segment.vocabulary import Vocabulary

    if (classes is None) == (preset is None):
        raise InputError("Give exactly one of --classes 'a,b;c' or --preset NAME.")
    if preset is not None:
        protocol = load_protocol(preset)
        return protocol.vocabulary, protocol.settings
    return Vocabulary.parse(classes or ""), SegmentSettings()


def protocol_from(dataset: str | None, dataset_config: Path | None):
    """The protocol named by ``--dataset`` or read from ``--dataset-config`` (exactly one).

    Raises:
        InputError: both or neither given, or an unknown / invalid protocol.

    """
    from ..data.protocols import load_protocol

    if (dataset is None) == (dataset_config is None):
        raise InputError("Give exactly one of --dataset NAME or --dataset-config FILE.")
    return load_protocol(dataset if dataset is not None else dataset_config)


ProbThdOption = Annotated[
    str | None,
    typer.Option(
        help="Pixels whose best class score is below the winning class's threshold are unclassified "
        "(or --bg-idx): one number for every class, or per class, e.g. 0.2,building=0.4,road=0.3."
    ),
]


def parse_prob_thd(text: str | None) -> tuple[float | None, dict[str, float] | None]:
    """Parse ``--prob-thd``: one number, or ``class=number`` parts with an optional default.

    ``"0.3"`` is every class's threshold; ``"0.2,building=0.4,road=0.3"`` gives building and
    road their own and the other classes 0.2 (without the bare number, the preset's value).

    Returns:
        ``(prob_thd or None, {class: threshold} or None)``; None means not given.

    Raises:
        InputError: a part that is neither a number nor ``class=number``.

    """
    if text is None:
        return None, None
    default, per_class = None, {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.rpartition("=") if "=" in part else ("", "", part)
        try:
            number = float(value)
        except ValueError:
            raise InputError(
                f"--prob-thd '{text}': '{part}' is not a number or class=number (e.g. 0.2,building=0.4)."
            ) from None
        if eq:
            per_class[name.strip()] = number
        else:
            default = number
    return default, (per_class or None)


def load_on(model: str, device: str, adapter: Path | None = None):
    """Load the model (see :func:`ovearth.load_model`) onto a resolved device, with an adapter if given."""
    from ..model.load import load_model

    loaded = load_model(model)
    loaded.model.to(resolve_device(device))
    if adapter is not None:
        from ..train.adapter import apply_adapter

        loaded = apply_adapter(loaded, adapter)
    return loaded


def progress_bar(field: str | None = None) -> Progress:
    """The terminal progress bar of the long commands (description, bar, count, ``field``, ETA).

    Shown only on a terminal and by the main process; logs get :class:`PlainProgress`.
    """
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn()]
    if field is not None:
        columns.append(TextColumn(field, markup=False))
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=err, disable=not (err.is_terminal and is_main_process()))


class PlainProgress:
    """Progress lines for logs (nohup, SLURM): count, share, rate and ETA, every ~30 s.

    Printed only when stderr is not a terminal (a terminal shows the progress bar) and by
    the main process; the period is ``$OVEARTH_PROGRESS_SECONDS`` (default 30).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.every = progress_seconds()
        self.on = not err.is_terminal and is_main_process()
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, total: int | None, extra: str = "") -> None:
        """Report ``done`` of ``total`` items (at most once per period, always at the end)."""
        now = time.monotonic()
        if not self.on or (now - self.last < self.every and done != total) or done == 0:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        share = f" ({100 * done / total:.0f} %)" if total else ""
        eta = f", ETA {_duration((total - done) / rate)}" if total else ""
        err.print(f"{self.label}: {done}/{total or '?'}{share}, {rate:.3g}/s{eta}{extra}", highlight=False)

    def restart(self) -> None:
        """Count rate and period from now (a new series, e.g. the windows of the next image)."""
        self.start = self.last = time.monotonic()

    def finish(self, done: int) -> None:
        """The closing line: how many in how long."""
        if self.on:
            err.print(
                f"{self.label}: done, {done} in {_duration(time.monotonic() - self.start)}", highlight=False
            )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def is_main_process() -> bool:
    """True unless this is a torchrun worker of rank > 0."""
    return torchrun().rank == 0


def check_environment() -> None:
    """Check the environment variables ``ovearth`` reads before any work (one sentence each)."""
    torchrun()
    progress_seconds()


def main() -> None:
    """Entry point: run the app, turning user errors into one line and an exit code."""
    try:
        check_environment()
        # without standalone mode click returns the code of ``typer.Exit`` and of an interrupt (130)
        code = app(standalone_mode=False)
        if isinstance(code, int) and code != 0:
            if code == 130:
                err.print("interrupted")
            sys.exit(code)
    except OvearthError as error:
        fail(str(error))
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except (typer.Exit, SystemExit) as done:
        code = getattr(done, "exit_code", getattr(done, "code", 0))
        sys.exit(code)
    except Exception as error:  # click usage errors, then anything unexpected
        import click

        # typer >= 0.20 raises its own copy of click's exceptions (``typer._click``): both are shown
        if isinstance(error, click.ClickException) or _is_click_exception(error):
            error.show()
            sys.exit(error.exit_code)
        if "-v" in sys.argv or "--verbose" in sys.argv:
            raise
        fail(_unexpected(error))
        sys.exit(3)


def _is_click_exception(error: BaseException) -> bool:
    """A usage error of click or of typer's copy of it (a ``ClickException`` by name, with ``show``)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return "ClickException" in names and callable(getattr(error, "show", None))


def _unexpected(error: BaseException) -> str:
    """One sentence for an error no check of ours foresaw (exit code 3)."""
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        where = "device" if isinstance(error, torch.OutOfMemoryError) else "host"
        return (
            f"out of {where} memory; lower --prompt-batch and --view-batch, or read large scenes by "
            "windows (--slide-crop 1008 --slide-stride 1008 --windowed)."
        )
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    detail = f": {lines[0]}" if lines else ""
    return f"unexpected {type(error).__name__}{detail} (run again with -v for the traceback)."
