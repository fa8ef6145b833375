"""Commands on images: ``segment`` and ``tokens``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MODEL
from ..errors import InputError
from .app import (
    AdapterOption,
    BandsOption,
    ClassesOption,
    CompileOption,
    DeviceOption,
    ModelOption,
    ModeOption,
    OutputOption,
    PlainProgress,
    PrecisionOption,
    PresetOption,
    ProbThdOption,
    PromptBatchOption,
    PromptFormOption,
    RefineAtOption,
    RefineForOption,
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
    setup_logging,
    vocabulary_and_settings,
)
from .settings_options import given, given_settings


@app.command()
def segment(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files (GeoTIFF, PNG, JPEG), folders of them, https:// or s3:// GeoTIFFs (read by "
            "ranges), or STAC items (.json file or URL)."
        ),
    ],
    output: OutputOption,
    classes: ClassesOption = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Dataset protocol (classes and thresholds), e.g. loveda; see `ovearth datasets`."),
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    adapter: AdapterOption = None,
    mode: ModeOption = "fast",
    confidence_threshold: Annotated[
        float | None, typer.Option(help="Keep instances scoring above this.")
    ] = None,
    prob_thd: ProbThdOption = None,
    bg_idx: Annotated[
        int | None,
        typer.Option(
            help="Class index of low-score pixels (default: a preset's background class; free-form "
            "classes write 254 = unclassified)."
        ),
    ] = None,
    slide_crop: Annotated[int | None, typer.Option(help="Sliding-window size (0: whole image).")] = None,
    slide_stride: Annotated[int | None, typer.Option(help="Sliding-window step.")] = None,
    instances: Annotated[
        bool | None, typer.Option("--instances/--no-instances", help="Instance term.")
    ] = None,
    semantic: Annotated[bool | None, typer.Option("--semantic/--no-semantic", help="Semantic term.")] = None,
    presence: Annotated[
        bool | None, typer.Option("--presence/--no-presence", help="Presence factor.")
    ] = None,
    prompt_batch: PromptBatchOption = None,
    refine: Annotated[
        str | None,
        typer.Option(
            help="Token refinement, e.g. 'smooth:a=0.2+lowpass:r=12,b=0.2' (see `ovearth refiners`)."
        ),
    ] = None,
    refine_at: RefineAtOption = None,
    refine_for: RefineForOption = None,
    zoom: ZoomOption = "",
    skip_absent: SkipAbsentOption = False,
    precision: PrecisionOption = "float32",
    prompt_form: PromptFormOption = None,
    view_batch: ViewBatchOption = None,
    compile_backbone: CompileOption = False,
    bands: BandsOption = None,
    stretch: Annotated[
        str, typer.Option(help="8-bit scaling of non-uint8 rasters: percentile, minmax, none, or LOW,HIGH.")
    ] = "percentile",
    scores: Annotated[
        bool,
        typer.Option(
            "--scores",
            "--probs",
            help="Also write the fused class scores (<stem>_scores.tif: float32 in [0, 1], one band per "
            "class, NaN on nodata; --probs is the old name).",
        ),
    ] = False,
    cog: Annotated[
        bool,
        typer.Option(
            "--cog/--no-cog", help="Cloud-Optimized GeoTIFFs with overviews (default), or plain tiles."
        ),
    ] = True,
    vector: Annotated[
        str | None,
        typer.Option(
            help="Also write the labels as polygons, one per connected region: gpkg, geojson or parquet "
            "(<stem>_labels.<format>; parquet needs ovearth[parquet])."
        ),
    ] = None,
    min_area: Annotated[
        float,
        typer.Option(help="Drop polygons smaller than this (square metres; pixels without a projection)."),
    ] = 0.0,
    simplify: Annotated[
        float,
        typer.Option(
            help="Simplify polygons by this tolerance (metres; pixels without a projection); 0: exact."
        ),
    ] = 0.0,
    objects: Annotated[
        bool,
        typer.Option(
            "--objects",
            help="Also write SAM 3's kept objects as polygons with class, name, score and box "
            "(<stem>_objects.<--vector format, default gpkg>), deduplicated across windows.",
        ),
    ] = False,
    windowed: Annotated[
        bool | None,
        typer.Option(
            "--windowed/--whole",
            help="Read and write GeoTIFFs by windows (bounded memory, same labels); "
            "default: by windows above 64 M pixels when sliding.",
        ),
    ] = None,
    stac_asset: Annotated[
        str | None, typer.Option(help="The asset of STAC item inputs to segment (default: visual).")
    ] = None,
    skip_bad: SkipBadOption = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo images whose outputs exist with the same settings.")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Segment images; write labels, overlays and (as asked) scores, polygons and objects into -o.

    A run into a folder that holds an earlier run's outputs with the same settings reuses
    them (resume); under torchrun the images are shared among the processes.
    """
    setup_logging(verbose)
    from ..data.raster import parse_bands
    from ..run.segment_files import FileOptions, segment_images

    vocabulary, base = vocabulary_and_settings(classes, preset)
    prob_thd, class_prob_thd = parse_prob_thd(prob_thd)  # noqa: F841 (read by given_settings)
    settings = base.replace(**given_settings("segment", locals()))
    settings.check_run(len(vocabulary))
    band_choice = parse_bands(bands)
    options = FileOptions(
        band_choice,
        stretch,
        scores,
        windowed,
        skip_bad=skip_bad,
        overwrite=overwrite,
        cog=cog,
        vector=vector or "",
        min_area=min_area,
        simplify=simplify,
        objects=objects,
    )

    def make_segmentor():  # called once every input's header is checked
        from ..segment.segmentor import Segmentor

        return Segmentor(load_on(model, device, adapter), vocabulary, settings=settings)

    record = {"command": "segment", "preset": preset, "bands": band_choice, "stretch": stretch}
    plain, plain_windows = PlainProgress("segment"), PlainProgress("segment windows")
    with progress_bar() as bar:
        task = bar.add_task("segmenting", total=None)
        views = bar.add_task("windows", total=None, visible=False)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, description=name, completed=done, total=total)
            bar.update(views, completed=0, visible=False)
            plain(done, total)
            plain_windows.restart()  # the windows of the next image

        def on_view(done: int, total: int) -> None:
            bar.update(views, completed=done, total=total, visible=True)
            plain_windows(done, total)

        run = segment_images(images, output, make_segmentor, options, record, progress, on_view, stac_asset)
        bar.update(task, completed=len(run.images))
    plain.finish(len(run.images))
    if is_main_process():
        notes = [
            f"{run.reused} reused" if run.reused else "",
            f"{len(run.skipped)} skipped" if run.skipped else "",
        ]
        extra = ", ".join(n for n in notes if n)
        err.print(f"wrote {len(run.images)} result(s) to {output}" + (f" ({extra})" if extra else ""))


@app.command()
def tokens(
    image: Annotated[Path, typer.Argument(help="One image (GeoTIFF, PNG, JPEG).")],
    refine: Annotated[str, typer.Option(help="The refinement to inspect, e.g. 'lowpass:r=12,b=0.2'.")],
    output: OutputOption,
    classes: ClassesOption = None,
    preset: PresetOption = None,
    refine_at: RefineAtOption = "fusion",
    refine_for: RefineForOption = "both",
    prompt_form: PromptFormOption = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    adapter: AdapterOption = None,
    bands: BandsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Show what a refinement does: token energy and spectrum before/after, and each class's logit change."""
    setup_logging(verbose)
    from ..data.raster import parse_bands, read_image

    vocabulary, base = vocabulary_and_settings(classes, preset)
    settings = base.replace(
        refine=refine, refine_at=refine_at, refine_for=refine_for, **given(prompt_form=prompt_form)
    )
    settings.check_run(len(vocabulary))
    picture = read_image(image, bands=parse_bands(bands))
    from ..probe.tokens import token_report
    from ..segment.segmentor import Segmentor

    loaded = load_on(model, device, adapter)
    summary = token_report(Segmentor(loaded, vocabulary, settings=settings), picture.rgb, output)
    err.print(
        f"{summary['refine']}: {100 * summary['label_change']:.2f} % of labels change -> {output}/tokens.png"
    )


@app.command()
def attention(
    image: Annotated[Path, typer.Argument(help="One image (GeoTIFF, PNG, JPEG).")],
    output: OutputOption,
    classes: ClassesOption = None,
    preset: PresetOption = None,
    confidence_threshold: Annotated[
        float | None, typer.Option(help="Queries kept for the scored map.")
    ] = None,
    top: Annotated[
        int, typer.Option(help="Top-scoring queries shown per class in the layer x head grid.")
    ] = 3,
    prompt_form: PromptFormOption = None,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    adapter: AdapterOption = None,
    bands: BandsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Decoder attention maps per class: overlays, a layer x head grid of the top queries, raw maps."""
    setup_logging(verbose)
    from ..data.raster import parse_bands, read_image

    vocabulary, base = vocabulary_and_settings(classes, preset)
    settings = base.replace(**given(confidence_threshold=confidence_threshold, prompt_form=prompt_form))
    settings.check_run(len(vocabulary))
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}.")
    picture = read_image(image, bands=parse_bands(bands))
    from ..probe.attention_report import attention_report
    from ..segment.segmentor import Segmentor

    loaded = load_on(model, device, adapter)
    attention_report(Segmentor(loaded, vocabulary, settings=settings), picture.rgb, output, top=top)
    err.print(f"wrote attention maps for {len(vocabulary)} classes to {output}")
