"""The class table of a labels raster: which value means which class, and its colour.

A labels raster holds class indices ``0..K-1``, :data:`UNCLASSIFIED_LABEL` (254) for valid
pixels below ``prob_thd`` when the run has no background class of its own (free-form
classes), and :data:`NODATA_LABEL` (255) where the input has no data. The table travels
with the file: as the GeoTIFF colour table, as a dataset tag ``OVEARTH_CLASSES`` (JSON,
read back by :func:`read_class_table`), and as GDAL category names / raster attribute
table and a QGIS style beside it (see :mod:`ovearth.data.describe`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from ..constants import MAX_CLASSES, NODATA_LABEL, UNCLASSIFIED_LABEL
from ..errors import InputError
from ..viz import UNCLASSIFIED_COLOR

#: Dataset tag holding the class table as JSON.
TABLE_TAG = "OVEARTH_CLASSES"

RGBA = tuple[int, int, int, int]


@dataclass(frozen=True)
class ClassTable:
    """Class names and colours of a labels raster.

    Attributes:
        names: name of class ``k`` at index ``k``.
        colors: ``(r, g, b)`` of class ``k`` at index ``k``.
        unclassified: whether :data:`UNCLASSIFIED_LABEL` can occur (free-form classes);
            False when low-score pixels get a class index (benchmark presets, ``bg_idx``).

    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    unclassified: bool = False

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError(f"{len(self.names)} names but {len(self.colors)} colours")
        if len(self.names) > MAX_CLASSES:
            raise InputError(
                f"At most {MAX_CLASSES} classes (254 and 255 are reserved), got {len(self.names)}."
            )

    @classmethod
    def build(cls, names: list[str] | tuple[str, ...], colors: np.ndarray, unclassified: bool) -> ClassTable:
        """From names and a ``[K, 3]`` colour array."""
        return cls(tuple(names), tuple(tuple(int(c) for c in row) for row in colors), unclassified)

    def rows(self) -> list[tuple[int, str, RGBA]]:
        """``(value, name, rgba)`` of every value that can occur, classes first, nodata last."""
        rows = [
            (k, name, (*color, 255))
            for k, (name, color) in enumerate(zip(self.names, self.colors, strict=True))
        ]
        if self.unclassified:
            rows.append((UNCLASSIFIED_LABEL, "unclassified", (*UNCLASSIFIED_COLOR, 255)))
        rows.append((NODATA_LABEL, "nodata", (0, 0, 0, 0)))
        return rows

    def colormap(self) -> dict[int, RGBA]:
        """GeoTIFF colour table: every value of :meth:`rows` (nodata transparent)."""
        return {value: rgba for value, _, rgba in self.rows()}

    def name_of(self, value: int) -> str:
        """Name of a raster value (class, ``unclassified`` or ``nodata``)."""
        for row_value, name, _ in self.rows():
            if row_value == value:
                return name
        raise KeyError(value)

    def to_tags(self) -> dict[str, str]:
        """Dataset tags that carry the table (see :func:`read_class_table`)."""
        table = {
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "unclassified": UNCLASSIFIED_LABEL if self.unclassified else None,
            "nodata": NODATA_LABEL,
        }
        return {TABLE_TAG: json.dumps(table)}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ClassTable | None:
        """The table in ``tags`` (from :meth:`to_tags`), or None when there is none."""
        if TABLE_TAG not in tags:
            return None
        table = json.loads(tags[TABLE_TAG])
        return cls(
            tuple(table["names"]),
            tuple(tuple(int(v) for v in c) for c in table["colors"]),
            table.get("unclassified") is not None,
        )


def read_class_table(path: str | Path) -> ClassTable:
    """The class table of a labels GeoTIFF written by ``ovearth``.

    Raises:
        InputError: unreadable file, or one that carries no class table.

    """
    try:
        with rasterio.open(path) as src:
            table = ClassTable.from_tags(src.tags())
    except (RasterioError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a readable labels GeoTIFF ({error}).") from None
    if table is None:
        raise InputError(
            f"{path}: carries no ovearth class table (tag {TABLE_TAG}); pass the class names "
            "(vectorize --classes 'building;road;...')."
        )
    return table
