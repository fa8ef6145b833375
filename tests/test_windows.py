"""Sliding-window placement against hand-computed cases (mmseg slide_inference)."""

import pytest

from ovearth.errors import InputError
from ovearth.segment.windows import Window, tiles_without_overlap, views_for


def test_exact_tiling():
    assert views_for(1024, 1024, 512, 512) == [
        Window(0, 512, 0, 512),
        Window(0, 512, 512, 1024),
        Window(512, 1024, 0, 512),
        Window(512, 1024, 512, 1024),
    ]


def test_last_window_is_pulled_back_inside_the_image():
    # rows = (1000 - 512 + 341 - 1) // 341 + 1 = 3; last: y2 = min(682 + 512, 1000), y1 = 1000 - 512
    rows = sorted({(w.y1, w.y2) for w in views_for(1000, 600, 512, 341)})
    assert rows == [(0, 512), (341, 853), (488, 1000)]


def test_small_image_is_one_view_and_thin_image_slides_along_its_long_side():
    assert views_for(300, 400, 512, 512) == [Window(0, 300, 0, 400)]
    assert views_for(300, 1000, 512, 512) == [Window(0, 300, 0, 512), Window(0, 300, 488, 1000)]
    assert views_for(2000, 2000, 0, 0) == [Window(0, 2000, 0, 2000)]


@pytest.mark.parametrize(
    ("crop", "stride", "message"),
    [
        (512, 0, "needs a stride"),
        (256, 512, "larger than the crop"),
        (-1, 4, ">= 0"),
    ],
)
def test_bad_slide_settings(crop, stride, message):
    with pytest.raises(InputError, match=message):
        views_for(1000, 1000, crop, stride)


def test_tiles_without_overlap():
    assert tiles_without_overlap(views_for(300, 200, 100, 100), 300, 200)  # exact tiling
    assert not tiles_without_overlap(views_for(300, 250, 100, 100), 300, 250)  # last column shifted back
    assert not tiles_without_overlap(views_for(300, 200, 100, 50), 300, 200)  # stride < crop
    assert tiles_without_overlap(views_for(90, 80, 0, 0), 90, 80)  # one view
