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
    verbose: VerboseOption = False,
) -> None:
    """Write one polygon per connected region of each class (class, pixels, area, mean score)."""
    from ..data.vectorize import vectorize as run

    setup_logging(verbose)
    default_out, default_scores = default_paths(labels)
    if scores is None and default_scores.is_file():
        scores = default_scores
    summary = run(labels, output or default_out, scores=scores, min_area=min_area, simplify=simplify)
    err.print(f"wrote {summary.features} features to {summary.path}", highlight=False, soft_wrap=True)
