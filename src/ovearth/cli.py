"""The ``ovearth`` command: a thin layer over the Python API.

Every user mistake becomes one line on stderr and a non-zero exit code (1 for bad
input, 2 for missing or unloadable weights); commands write only inside their ``-o``
folder and record the settings they ran with there.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import __version__
from .constants import DEFAULT_MODEL
from .data.atomic import write_text_atomic
from .errors import InputError, OvearthError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Open-vocabulary segmentation of remote-sensing images with SAM 3 (SegEarth-OV3, exact and fast).",
)
err = Console(stderr=True)
logger = logging.getLogger("ovearth")


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; validate anything else.

    Raises:
        InputError: an unknown device, or CUDA asked for but absent.

    """
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device '{spec}' is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {spec} was asked for but no CUDA device is available; use --device cpu.")
    return spec


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
        force=True,
    )


@app.command()
def segment(
    images: Annotated[
        list[Path], typer.Argument(help="Image files (GeoTIFF, PNG, JPEG) or folders of them.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    classes: Annotated[str | None, typer.Option(help="Classes, e.g. 'building,house;road;tree'.")] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Dataset protocol (classes and thresholds), e.g. loveda; see `ovearth datasets`."),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Hub id, save_pretrained folder, or Meta sam3.pt.")
    ] = DEFAULT_MODEL,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    mode: Annotated[str, typer.Option(help="fast, or reference (the plain per-name loop).")] = "fast",
    confidence_threshold: Annotated[
        float | None, typer.Option(help="Keep instances scoring above this.")
    ] = None,
    prob_thd: Annotated[
        float | None, typer.Option(help="Pixels with max logit below this get --bg-idx.")
    ] = None,
    bg_idx: Annotated[int | None, typer.Option(help="Label of low-confidence pixels.")] = None,
    slide_crop: Annotated[int | None, typer.Option(help="Sliding-window size (0: whole image).")] = None,
    slide_stride: Annotated[int | None, typer.Option(help="Sliding-window step.")] = None,
    instances: Annotated[
        bool | None, typer.Option("--instances/--no-instances", help="Instance term.")
    ] = None,
    semantic: Annotated[bool | None, typer.Option("--semantic/--no-semantic", help="Semantic term.")] = None,
    presence: Annotated[
        bool | None, typer.Option("--presence/--no-presence", help="Presence factor.")
    ] = None,
    prompt_batch: Annotated[
        int | None, typer.Option(help="Prompts per batch (memory bound); default 1 on CPU, 16 on GPU.")
    ] = None,
    refine: Annotated[
        str,
        typer.Option(
            help="Token refinement, e.g. 'smooth:a=0.2+lowpass:r=12,b=0.2' (see `ovearth refiners`)."
        ),
    ] = "",
    refine_at: Annotated[
        str, typer.Option(help="fusion (per prompt) or backbone (once per view).")
    ] = "fusion",
    refine_for: Annotated[str, typer.Option(help="At fusion: decoder, mask or both.")] = "both",
    bands: Annotated[str | None, typer.Option(help="GeoTIFF bands for R,G,B, e.g. 3,2,1.")] = None,
    stretch: Annotated[
        str, typer.Option(help="8-bit scaling of non-uint8 rasters: percentile, minmax, none, or LOW,HIGH.")
    ] = "percentile",
    probs: Annotated[
        bool, typer.Option("--probs", help="Also write per-class logits (<stem>_probs.tif).")
    ] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Segment images; write labels, overlays and (with --probs) class logits into -o."""
    _setup_logging(verbose)
    from .data.protocols import load_protocol
    from .data.raster import check_image, parse_bands
    from .segment.files import collect_images, segment_file
    from .segment.settings import SegmentSettings
    from .segment.vocabulary import Vocabulary

    if (classes is None) == (preset is None):
        raise InputError("Give exactly one of --classes 'a,b;c' or --preset NAME.")
    if preset is not None:
        protocol = load_protocol(preset)
        vocabulary, base = protocol.vocabulary, protocol.settings
    else:
        vocabulary, base = Vocabulary.parse(classes or ""), SegmentSettings()
    overrides = dict(
        confidence_threshold=confidence_threshold,
        prob_thd=prob_thd,
        bg_idx=bg_idx,
        slide_crop=slide_crop,
        slide_stride=slide_stride,
        use_instances=instances,
        use_semantic=semantic,
        use_presence=presence,
    )
    settings = base.replace(
        mode=mode,
        prompt_batch=prompt_batch,
        refine=refine,
        refine_at=refine_at,
        refine_for=refine_for,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    band_choice = parse_bands(bands)
    files = collect_images(images)
    for file in files:  # fail on any bad input before the model loads or anything is written
        check_image(file, band_choice)
    device_name = resolve_device(device)

    from .model.load import load_model
    from .segment.segmentor import Segmentor

    loaded = load_model(model)
    loaded.model.to(device_name)
    segmentor = Segmentor(loaded, vocabulary, settings=settings)
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("segmenting", total=len(files))
        for file in files:
            progress.update(task, description=file.name)
            prediction, written = segment_file(segmentor, file, output, band_choice, stretch, probs)
            names, presence = prediction.class_names, [round(p, 4) for p in prediction.presence.tolist()]
            results.append(
                {
                    "image": str(file),
                    "outputs": {k: str(v) for k, v in written.items()},
                    "presence": dict(zip(names, presence, strict=True)),
                }
            )
            progress.advance(task)
    record = {
        "ovearth": __version__,
        "command": "segment",
        "model": {"source": loaded.source, "fingerprint": loaded.fingerprint},
        "device": device_name,
        "classes": str(vocabulary),
        "preset": preset,
        "settings": settings.to_dict(),
        "bands": band_choice,
        "stretch": stretch,
        "images": results,
    }
    write_text_atomic(Path(output) / "run.json", json.dumps(record, indent=2) + "\n")
    err.print(f"wrote {len(results)} result(s) to {output}")


@app.command("eval")
def eval_(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output folder (reports and resumable cache).")
    ],
    data_root: Annotated[
        Path, typer.Option(help="Root folder of the dataset, laid out as the protocol says.")
    ],
    dataset: Annotated[
        str | None, typer.Option(help="Built-in protocol, e.g. loveda (see `ovearth datasets`).")
    ] = None,
    dataset_config: Annotated[Path | None, typer.Option(help="Your own protocol YAML, same schema.")] = None,
    model: Annotated[
        str, typer.Option(help="Hub id, save_pretrained folder, or Meta sam3.pt.")
    ] = DEFAULT_MODEL,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK).")
    ] = "auto",
    mode: Annotated[str, typer.Option(help="fast, or reference.")] = "fast",
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip (and list) bad images instead of stopping.")
    ] = False,
    save_predictions: Annotated[
        bool, typer.Option("--save-predictions", help="Keep colour label maps.")
    ] = False,
    confidence_threshold: Annotated[float | None, typer.Option(help="Override the protocol's value.")] = None,
    prob_thd: Annotated[float | None, typer.Option(help="Override the protocol's value.")] = None,
    prompt_batch: Annotated[
        int | None, typer.Option(help="Prompts per batch; default 1 on CPU, 16 on GPU.")
    ] = None,
    refine: Annotated[
        str, typer.Option(help="Token refinement, e.g. 'smooth:a=0.2' (see `ovearth refiners`).")
    ] = "",
    refine_at: Annotated[
        str, typer.Option(help="fusion (per prompt) or backbone (once per view).")
    ] = "fusion",
    refine_for: Annotated[str, typer.Option(help="At fusion: decoder, mask or both.")] = "both",
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Evaluate on a benchmark with SegEarth-OV3's protocol; resumes where a killed run stopped."""
    _setup_logging(verbose)
    from .data.datasets import SegmentationDataset
    from .data.protocols import load_protocol

    if (dataset is None) == (dataset_config is None):
        raise InputError("Give exactly one of --dataset NAME or --dataset-config FILE.")
    protocol = load_protocol(dataset if dataset is not None else dataset_config)
    data = SegmentationDataset(protocol, data_root, limit=limit)
    overrides = dict(confidence_threshold=confidence_threshold, prob_thd=prob_thd)
    settings = protocol.settings.replace(
        mode=mode,
        prompt_batch=prompt_batch,
        refine=refine,
        refine_at=refine_at,
        refine_for=refine_for,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    device_name = resolve_device(device)
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and device == "auto" and device_name == "cuda":
        device_name = f"cuda:{local_rank}"

    from .evaluate import EvalOptions, evaluate
    from .model.load import load_model
    from .segment.segmentor import Segmentor

    loaded = load_model(model)
    loaded.model.to(device_name)
    segmentor = Segmentor(loaded, protocol.vocabulary, settings=settings)
    options = EvalOptions(skip_bad=skip_bad, save_predictions=save_predictions)
    show = err.is_terminal and os.environ.get("RANK", "0") == "0"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("mIoU {task.fields[miou]}"),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
    ) as bar:
        task = bar.add_task(protocol.name, total=None, miou="-")

        def progress(done: int, total: int, miou: float) -> None:
            bar.update(task, completed=done, total=total, miou=f"{miou:.2f}")

        result = evaluate(segmentor, data, output, options, progress)
    if os.environ.get("RANK", "0") == "0":
        skipped = f", {len(result['skipped'])} skipped" if result["skipped"] else ""
        scores = "  ".join(f"{key} {result[key]:.2f}" for key in ("mIoU", "mAcc", "aAcc"))
        count = f"{result['num_images']} images{skipped}"
        err.print(f"{protocol.title}: {scores}  ({count}) -> {output}/metrics.json")


@app.command()
def ablate(
    datasets: Annotated[str, typer.Option(help="Comma-separated protocols, e.g. loveda,potsdam.")],
    data_root_map: Annotated[Path, typer.Option(help="YAML mapping each dataset name to its data root.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    grid: Annotated[str | None, typer.Option(help="'paper' (MISSION.md part 3) or a grid YAML.")] = None,
    refine: Annotated[
        list[str] | None, typer.Option(help="A refinement to compare (repeatable), instead of --grid.")
    ] = None,
    model: Annotated[
        str, typer.Option(help="Hub id, save_pretrained folder, or Meta sam3.pt.")
    ] = DEFAULT_MODEL,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Only the first N images of each dataset.")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Compare token refinements with the unrefined baseline on benchmark datasets."""
    _setup_logging(verbose)
    from .ablate import load_grid, load_roots, run_ablation, settings_from_specs

    if (grid is None) == (not refine):
        raise InputError("Give exactly one of --grid (paper or a YAML file) or one or more --refine SPEC.")
    settings = load_grid(grid) if grid is not None else settings_from_specs(refine or [])
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names:
        raise InputError("--datasets is empty; give protocol names like loveda,potsdam.")
    roots = load_roots(data_root_map, names)
    device_name = resolve_device(device)
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and device == "auto" and device_name == "cuda":
        device_name = f"cuda:{local_rank}"
    from .model.load import load_model

    loaded = load_model(model)
    loaded.model.to(device_name)
    show = err.is_terminal and os.environ.get("RANK", "0") == "0"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
    ) as bar:
        task = bar.add_task("ablation", total=len(names) * len(settings))

        def progress(dataset: str, setting: str, done: int, total: int) -> None:
            bar.update(task, completed=done, description=f"{dataset}: {setting}")

        results = run_ablation(loaded, roots, settings, output, limit=limit, progress=progress)
    if os.environ.get("RANK", "0") == "0":
        for dataset, rows in results.items():
            base = rows["baseline"]["mIoU"]
            best = max(rows, key=lambda s, rows=rows: rows[s]["mIoU"])
            err.print(f"{dataset}: baseline mIoU {base:.2f}; best {best} {rows[best]['mIoU']:.2f}")
        err.print(f"wrote {output}/ablation.md, ablation.csv, ablation.png")


@app.command()
def tokens(
    image: Annotated[Path, typer.Argument(help="One image (GeoTIFF, PNG, JPEG).")],
    refine: Annotated[str, typer.Option(help="The refinement to inspect, e.g. 'lowpass:r=12,b=0.2'.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    classes: Annotated[str | None, typer.Option(help="Classes, e.g. 'building,house;road;tree'.")] = None,
    preset: Annotated[str | None, typer.Option(help="Dataset protocol for classes and thresholds.")] = None,
    refine_at: Annotated[str, typer.Option(help="fusion or backbone.")] = "fusion",
    refine_for: Annotated[str, typer.Option(help="At fusion: decoder, mask or both.")] = "both",
    model: Annotated[
        str, typer.Option(help="Hub id, save_pretrained folder, or Meta sam3.pt.")
    ] = DEFAULT_MODEL,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bands: Annotated[str | None, typer.Option(help="GeoTIFF bands for R,G,B, e.g. 3,2,1.")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Show what a refinement does: token energy and spectrum before/after, and each class's logit change."""
    _setup_logging(verbose)
    from .data.protocols import load_protocol
    from .data.raster import parse_bands, read_image
    from .segment.settings import SegmentSettings
    from .segment.vocabulary import Vocabulary

    if (classes is None) == (preset is None):
        raise InputError("Give exactly one of --classes 'a,b;c' or --preset NAME.")
    if preset is not None:
        protocol = load_protocol(preset)
        vocabulary, base = protocol.vocabulary, protocol.settings
    else:
        vocabulary, base = Vocabulary.parse(classes or ""), SegmentSettings()
    settings = base.replace(refine=refine, refine_at=refine_at, refine_for=refine_for)
    picture = read_image(image, bands=parse_bands(bands))
    device_name = resolve_device(device)
    from .model.load import load_model
    from .probe.tokens import token_report
    from .segment.segmentor import Segmentor

    loaded = load_model(model)
    loaded.model.to(device_name)
    summary = token_report(Segmentor(loaded, vocabulary, settings=settings), picture.rgb, output)
    err.print(
        f"{summary['refine']}: {100 * summary['label_change']:.2f} % of labels change -> {output}/tokens.png"
    )


@app.command("make-tiny-model")
def make_tiny_model(
    directory: Annotated[Path, typer.Argument(help="Folder to write the model into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    image_size: Annotated[int, typer.Option(help="Input size (1008: the real 72 x 72 token grid).")] = 1008,
) -> None:
    """Write a tiny random SAM 3 (a few MB) to smoke-test an installation without the real weights.

    Its segmentations are meaningless: it only shows that everything runs.
    """
    from .model.testing import TINY_MODEL_NOTE, save_tiny_model

    if image_size % 14 or image_size < 112:
        raise InputError(f"--image-size must be a multiple of 14 and at least 112, got {image_size}.")
    save_tiny_model(directory, seed=seed, image_size=image_size)
    err.print(f"wrote a tiny random SAM 3 to {directory}. {TINY_MODEL_NOTE}")


@app.command()
def datasets() -> None:
    """List the built-in dataset protocols (usable as --preset)."""
    from .data.protocols import list_protocols, load_protocol

    for name in list_protocols():
        p = load_protocol(name)
        s = p.settings
        typer.echo(
            f"{name:14s} {p.title:22s} {len(p.vocabulary):2d} classes  conf={s.confidence_threshold} "
            f"prob_thd={s.prob_thd} bg={s.bg_idx} slide={s.slide_crop}/{s.slide_stride}"
        )


@app.command()
def refiners() -> None:
    """List the token refiners (usable in --refine) with their parameters and defaults."""
    import dataclasses

    from .refine.registry import list_refiners, refiner_class

    for name in list_refiners():
        cls = refiner_class(name)
        params = ",".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls))
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name}:{params}\n    {summary}")


@app.command()
def version() -> None:
    """Print the ovearth version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and an exit code."""
    try:
        app(standalone_mode=False)
    except OvearthError as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except (typer.Exit, SystemExit) as done:
        code = getattr(done, "exit_code", getattr(done, "code", 0))
        sys.exit(code)
    except Exception as error:  # click usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
