"""The README's picture of a polygon layer over the overlay.

The model is the tiny random one: the point is the layer's fit to the labels, not the classes.

    python docs/make_polygon_picture.py ../shared/samples/RGB.byte.tif docs/images/polygons_over_overlay.png

Segments the GeoTIFF with ``--vector gpkg --simplify 60 --min-area 20000 --objects`` (as
``ovearth segment`` would), then draws the polygons (class colours, outlines) and the
objects (dashed) over the labels overlay, in the raster's CRS.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyogrio  # noqa: E402
import rasterio  # noqa: E402
import shapely  # noqa: E402

from ovearth import Segmentor, load_model  # noqa: E402
from ovearth.model.testing import save_tiny_model  # noqa: E402
from ovearth.run.files import FileOptions, segment_file  # noqa: E402
from ovearth.viz import palette  # noqa: E402

CLASSES = "water;vegetation,forest;bare soil;urban"


def draw(ax, path: Path, colors: np.ndarray, **style) -> int:
    """Outline every feature of a layer in its class colour; return the feature count."""
    meta, _, wkb, fields = pyogrio.raw.read(path)
    index = fields[list(meta["fields"]).index("class_index")]
    for geometry, k in zip(shapely.from_wkb(wkb), index, strict=True):
        for polygon in getattr(geometry, "geoms", [geometry]):
            x, y = polygon.exterior.xy
            ax.plot(x, y, color=np.array(colors[k]) / 255, **style)
    return len(index)


def main(image: Path, picture: Path) -> None:
    """Segment ``image`` with polygons and objects, and save the picture."""
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(save_tiny_model(Path(tmp) / "tiny", seed=0, image_size=336))
        seg = Segmentor(model, CLASSES, confidence_threshold=0.05)
        options = FileOptions(vector="gpkg", simplify=60, min_area=20000, objects=True)
        _, paths = segment_file(seg, image, Path(tmp) / "out", options)
        with rasterio.open(paths["labels"]) as src:
            labels, bounds = src.read(1), src.bounds
        colors = palette(4)
        shown = np.full((*labels.shape, 4), 0, np.uint8)
        for k in range(4):
            shown[labels == k] = (*colors[k], 90)
        fig, ax = plt.subplots(figsize=(8, 7.5), dpi=100)
        with rasterio.open(image) as src:
            rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
        ax.imshow(rgb, extent=extent)
        ax.imshow(shown, extent=extent)
        regions = draw(ax, paths["polygons"], colors * 0.6, linewidth=0.8)
        objects = draw(ax, paths["objects"], np.full_like(colors, 255), linewidth=0.9, linestyle="--")
        ax.set_title(f"{regions} polygons (simplified 60 m, >= 2 ha), {objects} objects (white, dashed)")
        ax.set_xlabel("easting (m), EPSG:32618")
        ax.set_ylabel("northing (m)")
        fig.tight_layout()
        fig.savefig(picture)
        print(f"wrote {picture}: {regions} polygons, {objects} objects")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
