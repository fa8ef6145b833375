"""``ovearth calibrate``: prompt names, per-class thresholds and confidence from a few labelled tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..calibrate.search import MAX_CUTS
from ..constants import DEFAULT_MODEL
from ..errors import InputError
from .app import (
    AdapterOption,
    DeviceOption,
    ModelOption,
    OutputOption,
    PlainProgress,
    PrecisionOption,
    PromptFormOption,
    RefineAtOption,
    RefineForOption,
    SkipBadOption,
    VerboseOption,
    app,
    err,
    is_main_process,
    labelled,
    load_on,
    progress_bar,
    protocol_from,
    setup_logging,
    warn,
)
from .settings_options import given_settings


def parse_grid(text: str | None, option: str) -> tuple[float, ...] | None:
    """``"0.3,0.5"`` or ``"0.05:0.95:0.05"`` (start:stop:step, stop included) -> the values.

    Raises:
        InputError: not numbers, or a bad range.

    """
    if text is None:
        return None
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return tuple(round(start + i * step, 6) for i in range(count) if start + i * step <= stop + 1e-9)
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise InputError(
            f"{option} '{text}': give numbers like 0.3,0.5 or a range START:STOP:STEP."
        ) from None


@app.command()
def calibrate(
    output: OutputOption,
    data_root: Annotated[
        Path, typer.Option(help="Root folder of the labelled images, in the protocol's layout.")
    ],
    dataset: Annotated[str | None, typer.Option(help="Built-in protocol, e.g. loveda.")] = None,
    dataset_config: Annotated[Path | None, typer.Option(help="Your own protocol YAML, same schema.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    candidates: Annotated[
        Path | None,
        typer.Option(help="YAML of your candidate names per class, e.g. 'building: [house, roof]'."),
    ] = None,
    builtin_pool: Annotated[
        bool,
        typer.Option("--builtin-pool/--no-builtin-pool", help="Add the shipped remote-sensing synonym pool."),
    ] = True,
    max_names: Annotated[int | None, typer.Option(help="At most this many candidates per class.")] = None,
    confidences: Annotated[
        str | None,
        typer.Option(help="Confidence thresholds tried (default 0.3,0.4,0.5,0.6,0.7 + the protocol's)."),
    ] = None,
    thresholds: Annotated[
        str | None,
        typer.Option(
            help="A fixed grid of per-class thresholds, e.g. 0.05:0.95:0.05 (+ the protocol's); "
            "default: every cut point of the data (the exact optimum on the sampled pixels)."
        ),
    ] = None,
    max_cuts: Annotated[
        int,
        typer.Option(
            help="Without --thresholds: at most N cut points of a class scored per pass "
            "(quantiles of its distinct scores beyond that, then refined around the best)."
        ),
    ] = MAX_CUTS,
    holdout: Annotated[
        float, typer.Option(help="Share of images held out (0: fit on all, report folds).")
    ] = 0.3,
    folds: Annotated[int, typer.Option(help="k of the k-fold report (0: none).")] = 5,
    sample_stride: Annotated[
        int, typer.Option(help="Score one pixel in S x S (1: every pixel; the report then equals eval).")
    ] = 4,
    objective: Annotated[str, typer.Option(help="miou, or class-iou (each class's own IoU).")] = "miou",
    name_batch: Annotated[int, typer.Option(help="Names per pass of the per-name stages (memory).")] = 8,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    adapter: AdapterOption = None,
    refine: Annotated[str | None, typer.Option(help="Token refinement kept fixed while calibrating.")] = None,
    refine_at: RefineAtOption = None,
    refine_for: RefineForOption = None,
    precision: PrecisionOption = "float32",
    prompt_form: PromptFormOption = None,
    skip_bad: SkipBadOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Choose prompt names, per-class thresholds and the confidence threshold from labelled images.

    Runs SAM 3 once per (image, candidate name), searches on a calibration split, reports
    protocol vs calibrated on held-out images (fixed split and k folds) and writes a
    protocol YAML for `eval --dataset-config` and `segment --preset`.
    """
    setup_logging(verbose)
    from ..calibrate.pool import build_pool, read_candidates
    from ..data.datasets import SegmentationDataset
    from ..run.calibrate import CalibrateOptions
    from ..run.calibrate import calibrate as run_calibrate

    protocol = protocol_from(dataset, dataset_config)
    data = SegmentationDataset(protocol, data_root, limit=limit)
    settings = protocol.settings.replace(**given_settings("calibrate", locals()))
    settings.check_run(len(protocol.vocabulary))
    user = read_candidates(candidates) if candidates is not None else None
    pool = build_pool(protocol.vocabulary, user, builtin_pool, max_names, str(candidates))
    options = CalibrateOptions(
        confidences=parse_grid(confidences, "--confidences"),
        thresholds=parse_grid(thresholds, "--thresholds"),
        max_cuts=max_cuts,
        holdout=holdout,
        folds=folds,
        stride=sample_stride,
        objective=objective,
        name_batch=name_batch,
        skip_bad=skip_bad,
    )
    options.check()
    from ..segment.segmentor import Segmentor

    loaded = load_on(model, device, adapter)
    segmentor = Segmentor(loaded, protocol.vocabulary, settings=settings)
    with progress_bar() as bar:
        task = bar.add_task("model pass", total=None)
        plain = PlainProgress(f"calibrate {protocol.name}")

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)
            plain(done, total, f" ({stage})")

        result = run_calibrate(segmentor, data, pool, output, options, progress)
    if is_main_process() and result:
        headline = result["headline"]
        parts = []
        if "baseline_mIoU" in headline:
            parts.append(
                f"held-out mIoU {headline['baseline_mIoU']:.2f} -> {headline['calibrated_mIoU']:.2f}"
            )
        if "kfold_gain_mean" in headline:
            used = headline["kfold_folds_used"]
            parts.append(
                f"{folds}-fold gain {headline['kfold_gain_mean']:+.2f} ± {headline['kfold_gain_std']:.2f}"
                + (f" (over the {used} folds with valid pixels)" if used < folds else "")
            )
        err.print(
            f"{protocol.title}: {'; '.join(parts) or 'no held-out numbers (no valid pixels)'} -> "
            f"{output}/calibration.md, {protocol.name}_calibrated.yaml"
        )
        if "warning" in result["summary"]:
            warn(result["summary"]["warning"])
        for note in result["summary"]["notes"]:
            labelled("note:", "yellow", note)
