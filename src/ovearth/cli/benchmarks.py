"""Commands on benchmark datasets: ``eval`` and ``ablate``."""

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
    ProbThdOption,
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
    parse_prob_thd,
    progress_bar,
    protocol_from,
    setup_logging,
)
from .settings_options import given_settings


def with_split(protocol, split: Path):
    """The protocol reading only the images listed in ``split`` (its ``layout.split``)."""
    import dataclasses

    if protocol.layout is None:
        return protocol  # the dataset reader says what is missing
    if not split.is_file():
        raise InputError(f"{split}: no such split file.")
    return dataclasses.replace(
        protocol, layout=dataclasses.replace(protocol.layout, split=str(split.resolve()))
    )


@app.command("eval")
def eval_(
    output: OutputOption,
    data_root: Annotated[
        Path, typer.Option(help="Root folder of the dataset, laid out as the protocol says.")
    ],
    dataset: Annotated[
        str | None, typer.Option(help="Built-in protocol, e.g. loveda (see `ovearth datasets`).")
    ] = None,
    dataset_config: Annotated[Path | None, typer.Option(help="Your own protocol YAML, same schema.")] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    adapter: AdapterOption = None,
    mode: ModeOption = "fast",
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    split: Annotated[
        Path | None,
        typer.Option(
            help="Only the images this file lists (names relative to the images folder, no suffix)."
        ),
    ] = None,
    skip_bad: SkipBadOption = False,
    save_predictions: SavePredictionsOption = False,
    confidence_threshold: Annotated[float | None, typer.Option(help="Override the protocol's value.")] = None,
    prob_thd: ProbThdOption = None,
    prompt_batch: PromptBatchOption = None,
    refine: Annotated[
        str | None, typer.Option(help="Token refinement, e.g. 'smooth:a=0.2' (see `ovearth refiners`).")
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
    """Evaluate on a benchmark with SegEarth-OV3's protocol; resumes where a killed run stopped."""
    setup_logging(verbose)
    from ..data.datasets import SegmentationDataset

    protocol = protocol_from(dataset, dataset_config)
    if split is not None:
        protocol = with_split(protocol, split)
    data = SegmentationDataset(protocol, data_root, limit=limit)
    prob_thd, class_prob_thd = parse_prob_thd(prob_thd)  # noqa: F841 (read by given_settings)
    settings = protocol.settings.replace(**given_settings("eval", locals()))

    settings.check_run(len(protocol.vocabulary))
    from ..run.evaluate import EvalOptions, evaluate
    from ..segment.segmentor import Segmentor

    loaded = load_on(model, device, adapter)
    segmentor = Segmentor(loaded, protocol.vocabulary, settings=settings)
    options = EvalOptions(skip_bad=skip_bad, save_predictions=save_predictions)
    with progress_bar("mIoU {task.fields[miou]}") as bar:
        task = bar.add_task(protocol.name, total=None, miou="-")
        plain = PlainProgress(f"eval {protocol.name}")

        def progress(done: int, total: int, miou: float) -> None:
            bar.update(task, completed=done, total=total, miou=f"{miou:.2f}")
            plain(done, total, f", running mIoU {miou:.2f}")

        run = evaluate(segmentor, data, output, options, progress)
    if is_main_process():
        skipped = f", {len(run.skipped)} skipped" if run.skipped else ""
        scores = f"mIoU {run.miou:.2f}  mAcc {run.macc:.2f}  aAcc {run.aacc:.2f}"
        count = f"{run.num_images} images{skipped}"
        err.print(f"{protocol.title}: {scores}  ({count}) -> {output}/metrics.json")


@app.command()
def ablate(
    datasets: Annotated[str, typer.Option(help="Comma-separated protocols, e.g. loveda,potsdam.")],
    data_root_map: Annotated[Path, typer.Option(help="YAML mapping each dataset name to its data root.")],
    output: OutputOption,
    grid: Annotated[str | None, typer.Option(help="'paper' (MISSION.md part 3) or a grid YAML.")] = None,
    refine: Annotated[
        list[str] | None, typer.Option(help="A refinement to compare (repeatable), instead of --grid.")
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    adapter: Annotated[
        Path | None,
        typer.Option(help="Also evaluate the baseline with this trained adapter (a row named 'adapter')."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images of each dataset.")] = None,
    prompt_form: PromptFormOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Compare token refinements with the unrefined baseline on benchmark datasets."""
    setup_logging(verbose)
    from ..run.ablate import AblationSetting, load_grid, load_roots, run_ablation, settings_from_specs

    if (grid is None) == (not refine):
        raise InputError("Give exactly one of --grid (paper or a YAML file) or one or more --refine SPEC.")
    settings = load_grid(grid) if grid is not None else settings_from_specs(refine or [])
    if adapter is not None:
        from ..train.adapter import read_adapter

        read_adapter(adapter)  # a bad adapter stops the run before anything is evaluated
        settings.append(AblationSetting(name="adapter", adapter=str(adapter)))
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names:
        raise InputError("--datasets is empty; give protocol names like loveda,potsdam.")
    roots = load_roots(data_root_map, names)

    loaded = load_on(model, device)
    with progress_bar() as bar:
        task = bar.add_task("ablation", total=len(names) * len(settings))
        plain = PlainProgress("ablate")

        def progress(dataset: str, setting: str, done: int, total: int) -> None:
            bar.update(task, completed=done, description=f"{dataset}: {setting}")
            plain(done, total, f" evaluations, last {dataset}: {setting}")

        results = run_ablation(
            loaded, roots, settings, output, limit=limit, progress=progress, prompt_form=prompt_form
        )
    if is_main_process():
        for dataset, rows in results.items():
            base = rows["baseline"]["mIoU"]
            best = max(rows, key=lambda s, rows=rows: rows[s]["mIoU"])
            err.print(f"{dataset}: baseline mIoU {base:.2f}; best {best} {rows[best]['mIoU']:.2f}")
        err.print(f"wrote {output}/ablation.md, ablation.csv, ablation.png")
