"""One scene on many processes: the cuts, and why each band's sums equal one process's bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from ovearth.run.scene_split import row_bounds, touching_rows
from ovearth.segment.accumulate import window_rows
from ovearth.segment.windows import views_for


def sums(windows, height, width, seed=0) -> np.ndarray:
    """float32 sums of a fixed random value per window, added in the given order."""
    total = np.zeros((height, width), np.float32)
    for w in windows:
        rng = np.random.default_rng((w.y1, w.x1, seed))
        total[w.y1 : w.y2, w.x1 : w.x2] += rng.random((w.y2 - w.y1, w.x2 - w.x1), dtype=np.float32)
    return total


@pytest.mark.parametrize(
    ("height", "width", "crop", "stride", "parts"),
    [(1300, 400, 512, 341, 2), (2100, 300, 256, 100, 3), (1100, 500, 300, 300, 4), (700, 600, 256, 192, 2)],
)
def test_each_band_sums_the_same_windows_in_the_same_order(height, width, crop, stride, parts):
    rows = window_rows(views_for(height, width, crop, stride))
    cuts = row_bounds(rows, height, parts)
    assert cuts[0] == 0 and cuts[-1] == height and cuts == sorted(cuts)
    assert all(c % 256 == 0 for c in cuts[1:-1])  # whole GeoTIFF blocks per band
    whole = sums([w for row in rows for w in row], height, width)
    for top, bottom in zip(cuts, cuts[1:], strict=False):
        mine = [w for row in touching_rows(rows, top, bottom) for w in row]
        band = sums(mine, height, width)
        np.testing.assert_array_equal(band[top:bottom], whole[top:bottom])  # bit for bit
    # another order of the same windows gives other bits: the order is what the bands keep
    shuffled = [w for row in reversed(rows) for w in row]
    if stride < crop:
        assert not np.array_equal(sums(shuffled, height, width), whole)


def test_the_bands_share_the_rows_of_windows_evenly():
    rows = window_rows(views_for(10_000, 512, 512, 512))  # 20 rows of windows, no overlap
    cuts = row_bounds(rows, 10_000, 4)
    assert cuts == [0, 2560, 5120, 7680, 10_000]
    counts = [len(touching_rows(rows, a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert counts == [5, 5, 5, 5]  # disjoint windows: no window is run twice
    overlapping = window_rows(views_for(10_000, 512, 512, 256))
    cuts = row_bounds(overlapping, 10_000, 4)
    runs = sum(len(touching_rows(overlapping, a, b)) for a, b in zip(cuts, cuts[1:], strict=False))
    assert runs - len(overlapping) <= 3 * 2  # at most crop / stride rows again per cut


def test_more_processes_than_rows_of_windows_leave_empty_bands():
    rows = window_rows(views_for(300, 300, 256, 256))  # 2 rows of windows
    cuts = row_bounds(rows, 300, 4)
    assert cuts[0] == 0 and cuts[-1] == 300 and cuts == sorted(cuts)
    bands = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    assert sum(b - a for a, b in bands) == 300
