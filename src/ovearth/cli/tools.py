"""Small commands: ``make-tiny-model``, ``datasets``, ``refiners``, ``version``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..constants import DEFAULT_MODEL
from ..errors import InputError
from .app import DeviceOption, ModelOption, OutputOption, PromptFormOption, app, err, load_on


@app.command("make-tiny-model")
def make_tiny_model(
    directory: Annotated[Path, typer.Argument(help="Folder to write the model into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    image_size: Annotated[int, typer.Option(help="Input size (1008: the real 72 x 72 token grid).")] = 1008,
) -> None:
    """Write a tiny random SAM 3 (a few MB) to smoke-test an installation without the real weights.

    Its segmentations are meaningless: it only shows that everything runs.
    """
    from ..model.testing import TINY_MODEL_NOTE, save_tiny_model

    if image_size % 14 or image_size < 112:
        raise InputError(f"--image-size must be a multiple of 14 and at least 112, got {image_size}.")
    save_tiny_model(directory, seed=seed, image_size=image_size)
    err.print(f"wrote a tiny random SAM 3 to {directory}. {TINY_MODEL_NOTE}")


@app.command()
def datasets() -> None:
    """List the built-in dataset protocols (usable as --preset)."""
    from ..data.protocols import list_protocols, load_protocol

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

    from ..refine.registry import list_refiners, refiner_class

    for name in list_refiners():
        cls = refiner_class(name)
        params = ",".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls))
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name}:{params}\n    {summary}")


@app.command()
def audit(
    output: OutputOption,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    prompt_form: PromptFormOption = None,
) -> None:
    """Trace the fused patch tokens through every module that reads them; write audit.md and audit.json."""
    from ..probe.audit import run_audit
    from ..probe.audit_report import write_audit

    loaded = load_on(model, device)
    result = run_audit(loaded.model, prompt_form=prompt_form or "meta")
    write_audit(result, output)
    err.print(f"wrote {output}/audit.md and audit.json")


@app.command()
def version() -> None:
    """Print the ovearth version."""
    typer.echo(__version__)
