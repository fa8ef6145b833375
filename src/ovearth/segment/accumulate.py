"""The one view loop: windows of an image through a :class:`~.views.ViewEngine`, outputs summed.

:func:`run_windows` is the only loop over views in ``ovearth``: :meth:`Segmentor.predict`
(via :class:`ImageSum`), scenes read by windows (:class:`RowBuffer`, rows of windows at a
time) and the explorer all call it. Views are averaged as mmseg's ``slide_inference``
averages them: ``logits = sum over covering windows / count of covering windows``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .instances import Instance, shifted
from .views import HeldImage, ViewEngine, ViewOutput
from .windows import Window


def window_key(window: Window) -> tuple[int, int, int, int]:
    """The key of a window's features in a :class:`HeldImage`: ``(y1, y2, x1, x2)``."""
    return (window.y1, window.y2, window.x1, window.x2)


def run_windows(
    engine: ViewEngine,
    windows: Sequence[Window],
    read_crop: Callable[[Window], Tensor | None],
    add: Callable[[Window, ViewOutput], None],
    *,
    skip: bool = False,
    held: HeldImage | None = None,
    instances: bool = False,
    confidences: Sequence[float] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Run ``windows`` in batches of ``engine.view_batch`` and hand each output to ``add``.

    Args:
        engine: the per-view forward.
        windows: in the order they are batched (row-major as placed by :func:`views_for`).
        read_crop: ``window -> [3, h, w] uint8`` crop, or None to leave the window out (a
            window without valid pixels of disjoint tiles); a batch is formed before reading,
            so the windows left out do not change the others' batches.
        add: called once per window that ran, in order, with its :class:`ViewOutput`.
        skip: the provable skip (:meth:`ViewEngine.run`).
        held: kept features, keyed by :func:`window_key`.
        instances: each output carries its view's objects (view coordinates).
        confidences: logits for several confidence thresholds (:meth:`ViewEngine.run`).
        on_batch: called with the number of windows of each batch done (run or left out).

    Returns:
        The number of windows left out.

    """
    left_out = 0
    for start in range(0, len(windows), engine.view_batch):
        batch = windows[start : start + engine.view_batch]
        run, crops = [], []
        for window in batch:
            crop = read_crop(window)
            if crop is None:
                left_out += 1
                continue
            run.append(window)
            crops.append(crop)
        if crops:
            keys = None if held is None else [window_key(w) for w in run]
            outputs = engine.run(
                crops, skip=skip, keys=keys, held=held, instances=instances, confidences=confidences
            )
            for window, output in zip(run, outputs, strict=True):
                add(window, output)
        if on_batch is not None:
            on_batch(len(batch))
    return left_out


class ImageSum:
    """Sums of per-name logits over a whole image in memory (what :meth:`Segmentor.predict` needs).

    Attributes:
        total: ``[P, H, W]`` sum of the covering views' logits (``[G, P, H, W]`` with ``G`` confidences).
        count: ``[H, W]`` number of covering views.
        presence: ``[P]`` max over the views.
        found: when a list, every view's instances in image coordinates (not deduplicated).

    """

    def __init__(
        self, grid: tuple[int, ...], names: int, height: int, width: int, device: torch.device, found: bool
    ) -> None:
        self.total = torch.zeros(*grid, names, height, width, device=device)
        self.count = torch.zeros(height, width, device=device)
        self.presence = torch.zeros(names, device=device)
        self.found: list[Instance] | None = [] if found else None

    def add(self, window: Window, output: ViewOutput) -> None:
        """``total[window] += logits``, ``count[window] += 1``, presence max, instances shifted."""
        self.total[..., window.y1 : window.y2, window.x1 : window.x2] += output.logits
        self.count[window.y1 : window.y2, window.x1 : window.x2] += 1
        torch.maximum(self.presence, output.presence, out=self.presence)
        if self.found is not None and output.instances is not None:
            self.found.extend(shifted(one, window.y1, window.x1) for one in output.instances)

    def mean(self) -> Tensor:
        """``total / count``: the averaged per-name logits."""
        return self.total / self.count


class RowBuffer:
    """Sums and counts of per-name logits for the scene rows ``[top, top + capacity)``.

    Allocated once; finished rows are dropped by moving the rest up in place, one name
    at a time, so no temporary larger than ``capacity x width`` floats is made.
    """

    def __init__(self, names: int, capacity: int, width: int) -> None:
        self.total = torch.zeros(names, capacity, width)
        self.count = torch.zeros(capacity, width)
        self.top = 0

    def add(self, window: Window, logits: Tensor) -> None:
        """``total[window] += logits`` (``[P, h, w]``), ``count[window] += 1``."""
        rows = slice(window.y1 - self.top, window.y2 - self.top)
        if rows.start < 0 or rows.stop > self.count.shape[0]:
            raise RuntimeError(f"window {window} is outside the buffered rows from {self.top}")
        self.total[:, rows, window.x1 : window.x2] += logits
        self.count[rows, window.x1 : window.x2] += 1

    def mean(self, y1: int, y2: int) -> Tensor:
        """``[P, y2 - y1, W]`` averaged logits of scene rows ``y1 .. y2``."""
        rows = slice(y1 - self.top, y2 - self.top)
        return self.total[:, rows] / self.count[rows]

    def drop(self, upto: int) -> None:
        """Forget the rows above ``upto``; the buffer then starts there."""
        n = upto - self.top
        kept = self.count.shape[0] - n
        for plane in (*self.total, self.count):
            plane[:kept] = plane[n:].clone()
            plane[kept:] = 0
        self.top = upto


def window_rows(windows: list[Window]) -> list[list[Window]]:
    """Group row-major windows into rows of equal ``y1`` (the order is kept)."""
    rows: list[list[Window]] = []
    for window in windows:
        if rows and rows[-1][0].y1 == window.y1:
            rows[-1].append(window)
        else:
            rows.append([window])
    return rows
