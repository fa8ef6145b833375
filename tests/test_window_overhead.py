"""What the per-window overhead cuts rely on: the same polygons in bulk, the benchmark's wrappers undone."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from ovearth.data.pixel_polygons import region_polygons


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_polygons_are_shapes_geometries_byte_for_byte(seed):
    """Rings, holes, their order and orientation as ``shapely.geometry.shape`` builds them."""
    rng = np.random.default_rng(seed)
    values = (rng.random((90, 120)) * 4).astype(np.uint8)
    values[20:60, 30:90] = 7  # a large region ...
    values[30:40, 40:50] = 1  # ... with holes
    values[45:50, 70:80] = 2
    ids = np.zeros(values.shape, np.int32)
    count = 0
    for v in np.unique(values).tolist():
        lab, n = ndimage.label(values == v)
        ids[values == v] = lab[values == v] + count
        count += n
    mask = values != 3
    offset = rasterio.Affine.translation(5, 512)
    expected = [(int(v), shape(g)) for g, v in shapes(ids, mask=mask, connectivity=4, transform=offset)]
    got_values, got = region_polygons(ids, mask, offset)
    assert got_values == [v for v, _ in expected]
    assert any(len(p.interiors) for _, p in expected)  # holes were made
    assert shapely.to_wkb(got).tolist() == [shapely.to_wkb(p) for _, p in expected]
    empty_values, empty = region_polygons(ids, np.zeros_like(mask), offset)
    assert empty_values == [] and empty.shape == (0,)


def test_the_benchmark_puts_every_library_function_back():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import window_overhead
    finally:
        sys.path.pop(0)
    import rasterio.io

    import ovearth.run.scene as scene_run
    from ovearth.segment.accumulate import RowBuffer

    before = (scene_run.finish, RowBuffer.add, vars(rasterio.io.DatasetWriter).get("write"))
    clock = window_overhead.Clock()
    with window_overhead.instrumented(clock):
        assert scene_run.finish is not before[0] and RowBuffer.add is not before[1]
        buffer = RowBuffer(2, 4, 5)
        from ovearth.segment.windows import Window

        buffer.add(Window(0, 2, 0, 3), torch.ones(2, 2, 3))
    assert (scene_run.finish, RowBuffer.add, vars(rasterio.io.DatasetWriter).get("write")) == before
    assert clock.calls["accumulate"] == 1 and clock.seconds["accumulate"] > 0
