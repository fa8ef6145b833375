"""The ``reproduce`` command: SegEarth-OV3's table, every dataset found, beside the published figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MODEL
from ..errors import InputError
from .app import (
    AdapterOption,
    CompileOption,
    DeviceOption,
    ModelOption,
    ModeOption,
    OutputOption,
    PlainProgress,
    PrecisionOption,
    PromptBatchOption,
    PromptFormOption,
    RefineAtOption,
    RefineForOption,
    SavePredictionsOption,
    SkipAbsentOption,
    SkipBadOption,
    VerboseOption,
    ViewBatchOption,
    ZoomOption,
    app,
    err,
    is_main_process,
    load_on,
    progress_bar,
    setup_logging,
    warn,
)
from .settings_options import given_settings


@app.command()
def reproduce(
    output: OutputOption,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder holding one folder per dataset: DIR/loveda, DIR/potsdam, ...")
    ] = None,
    data_root_map: Annotated[
        Path | None, typer.Option(help="YAML mapping dataset names to their roots (overrides DIR/<dataset>).")
    ] = None,
    datasets: Annotated[
        str,
        typer.Option(
            help="paper (the 8 of SegEarth-OV3's table), all (every protocol), or e.g. loveda,potsdam."
        ),
    ] = "paper",
    grid: Annotated[
        str | None,
        typer.Option(
            help="An ablation grid ('paper' or a YAML, as `ovearth ablate`): one row per setting and dataset."
        ),
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    adapter: AdapterOption = None,
    mode: ModeOption = "fast",
    limit: Annotated[int | None, typer.Option(help="Only the first N images of each dataset.")] = None,
    skip_bad: SkipBadOption = False,
    save_predictions: SavePredictionsOption = False,
    prompt_batch: PromptBatchOption = None,
    refine: Annotated[
        str | None, typer.Option(help="Token refinement for every dataset, e.g. 'smooth:a=0.2'.")
    ] = None,
    refine_at: RefineAtOption = None,
    refine_for: RefineForOption = None,
    zoom: ZoomOption = "",
    skip_absent: SkipAbsentOption = False,
    precision: PrecisionOption = "float32",
    prompt_form: PromptFormOption = None,
    view_batch: ViewBatchOption = None,
    compile_backbone: CompileOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Evaluate every benchmark found under --data-root and tabulate it beside the published figures."""
    setup_logging(verbose)
    from ..run.ablate import load_grid
    from ..run.evaluate import EvalOptions
    from ..run.reproduce import dataset_names, locate, plan, read_root_map, run_reproduce

    names = dataset_names(datasets)
    settings = load_grid(grid) if grid is not None else None
    if adapter is not None and settings is not None and any(s.adapter for s in settings):
        raise InputError("--adapter and a grid with adapter rows both set the adapter; keep one.")
    overrides = given_settings("reproduce", {**locals(), "zoom": zoom or None})
    roots = read_root_map(data_root_map) if data_root_map is not None else None
    located = locate(names, data_root, roots, limit)
    main = is_main_process()
    for item in located:
        if item.dataset is None and main:
            warn(f"skipped {item.name}: {item.reason}")
    jobs = plan(located, output, overrides, settings)
    if not jobs:
        raise InputError(
            f"none of the {len(names)} dataset(s) was found; the lines above say where each was looked for."
        )

    loaded = load_on(model, device, adapter)
    options = EvalOptions(skip_bad=skip_bad, save_predictions=save_predictions)
    record = {
        "command": "reproduce",
        "datasets": names,
        "data_root": str(data_root) if data_root else None,
        "data_root_map": str(data_root_map) if data_root_map else None,
        "grid": grid,
        "settings": overrides,
        "adapter": str(adapter) if adapter else None,
        "limit": limit,
        "model": {"source": loaded.source, "fingerprint": loaded.fingerprint},
    }
    with progress_bar("mIoU {task.fields[miou]}") as bar:
        task = bar.add_task("reproduce", total=None, miou="-")
        plain = {"current": PlainProgress("reproduce"), "label": ""}

        def progress(dataset: str, setting: str, done: int, total: int, miou: float) -> None:
            label = dataset if grid is None else f"{dataset} / {setting}"
            if label != plain["label"]:
                plain["current"], plain["label"] = PlainProgress(f"reproduce {label}"), label
            bar.update(task, description=label, completed=done, total=total, miou=f"{miou:.2f}")
            plain["current"](done, total, f", running mIoU {miou:.2f}")

        result = run_reproduce(loaded, located, jobs, output, options, progress, record)
    if main:
        for row in result.rows:
            paper = row["published"].get("segearth_ov3_paper", {})
            versus = (
                "" if paper.get("delta") is None else f" (paper {paper['value']:.2f}, {paper['delta']:+.2f})"
            )
            where = row["title"] if grid is None else f"{row['title']} / {row['setting']}"
            computed = f"{row['computed_images']} of {row['num_images']} images computed"
            err.print(f"{where}: {row['metric']} {row['score']:.2f}{versus}  ({computed})")
        if result.skipped:
            names = ", ".join(item["dataset"] for item in result.skipped)
            err.print(f"skipped {len(result.skipped)} dataset(s), not found (see table.md): {names}")
        err.print(f"wrote {output}/table.md, table.csv, table.json, table.png")
