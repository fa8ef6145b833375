"""Vector output: ``vectorize`` (one polygon per region of a labels GeoTIFF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import VerboseOption, app, err, setup_logging


def default_paths(labels: Path) -> tuple[Path, Path]:
    """``<stem>.gpkg`` and ``<stem>_scores.tif`` beside ``<stem>_labels.tif`` (or ``<stem>.tif``)."""
    stem = labels.stem.removesuffix("_labels")
    return labels.with_name(f"{stem}.gpkg"), labels.with_name(f"{stem}_scores.tif")


@app.command()
def vectorize(
    labels: Annotated[Path, typer.Argument(help="Labels GeoTIFF written by `ovearth segment`.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help=".gpkg, .geojson or .parquet file (default: <stem>.gpkg beside LABELS)."
        ),
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option(help="Scores GeoTIFF for mean_score (default: <stem>_scores.tif beside LABELS)."),
    ] = None,
    min_area: Annotated[
        float, typer.Option(help="Drop regions smaller than this (m^2 when projected, else pixels).")
    ] = 0.0,
    simplify: Annotated[
        float,
        typer.Option(help="Coverage simplification tolerance (m when projected, else pixels); 0 = exact."),
    ] = 0.0,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Class names of the label values 0, 1, ... as 'building;road;tree' (the first name of "
            "each class is kept); default: the names the labels GeoTIFF carries."
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Write one polygon per connected region of each class (class, pixels, area, mean score)."""
    from ..data.legend import ClassTable
    from ..data.vectorize import vectorize as run
    from ..segment.vocabulary import Vocabulary
    from ..viz import palette

    setup_logging(verbose)
    table = None
    if classes is not None:
        names = Vocabulary.parse(classes).labels
        table = ClassTable.build(names, palette(len(names)), unclassified=True)
    default_out, default_scores = default_paths(labels)
    if scores is None and default_scores.is_file():
        scores = default_scores
    out = output or default_out
    summary = run(labels, out, scores=scores, table=table, min_area=min_area, simplify=simplify)
    err.print(f"wrote {summary.features} features to {summary.path}", soft_wrap=True)
