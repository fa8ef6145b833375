"""What a run may hold in memory, estimated from the request before any work, and the ledger.

A run's bytes are estimated from what the request says (the picture's size, the windows,
the names and classes) and the model's dimensions, *before* the picture is decoded or the
model runs; a run over the budget is refused with one sentence (HTTP 413), and runs whose
estimates together exceed it wait their turn (:class:`MemoryBudget`). Host and
accelerator memory are counted together.

Notation: ``A = H W`` pixels of the working picture, ``a`` pixels of its largest view,
``V`` views whose backbone features the run computes (all views of the request unless
they are held from an earlier run), ``M`` names it sends through the model, ``N`` names
and ``K`` classes of the request, ``B`` the prompt batch, ``Bv`` the view batch. Model
dimensions (:class:`ModelDims`): input side ``S``, patch grid ``g = S / patch``, FPN
width ``C``, the detector's levels of ``L = sum (g s)^2`` tokens (``s`` = 4, 2, 1: ``21
g^2``), the finest of ``G = (4 g)^2``, ViT width ``D`` and MLP width ``Dm``, ``Q``
queries and ``Hd`` decoder heads. Everything is float32 (4 bytes), an upper bound in
bfloat16.

* held features, per view: ``F = 4 (2 C L + C)`` (levels and their position encodings,
  and the geometry token; 223 MB for SAM 3 at 1008, 3.1 MB for the tests' tiny model);
* backbone working memory, per view of a batch: ``4 (g^2 (4 D + 2 Dm) + 4 C G + 6 S^2)``
  (one ViT block's activations, the FPN's up-sampling, the resized input);
* heads at model resolution, per prompt of a batch: ``4 (G (4 C + Q + 2) + 2 Hd Q g^2)``
  (pixel decoder, mask and semantic logits, decoder attention bias);
* heads at view resolution, per prompt batch: ``4 a (R + 8 B)`` with ``R = 19`` when
  instance masks are resized 16 at a time per prompt (CPU) and ``R = 11 B`` when they
  are resized 4 per prompt for the whole batch (accelerators), plus the view's output
  ``4 a M``;
* per-name maps: while views run ``4 A (M + 1)`` (sums and counts); after them ``8 A M +
  4 A`` (sums and the averaged maps); when labels are made ``4 A (2 N + 2 K) + 13 A``
  (the stacked names, the per-class maxima and their stack, labels);
* the picture: ``12 A`` (its tensor copy and digest) and, when not decoded yet, ``16``
  bytes per pixel of a PNG or JPEG file's full size (decoding, RGB conversion, array
  copies) or ``80`` per working pixel of a GeoTIFF (bands up to 8 bytes, mask, stretch).

Then ``run = picture + V F + [M > 0] (Bv backbone + B heads + view heads) + max(while
views run, after them, labels)``, and the estimate is ``1.25 run + 64 MiB`` (allocator
slack). A run whose names are all cached computes no view and runs no model (``V = M =
0``). Before refusing, the explorer halves the prompt batch ``B`` (which changes no
result) until the estimate fits or ``B = 1``. The attention of a class is one view of the
whole picture with one prompt, plus the decoder's full attention maps ``6 L_d Hd (Q + 1)
g^2`` (float32 and a float16 copy).

Checked (``tests/test_explore_memory.py``): on the tiny model the peak growth of resident
memory of runs from 0.2 to 0.9 GB stays below the estimate (by 1.5 to 3.8 times). With
SAM 3's real dimensions (random weights): on CPU one view through the backbone peaked at
612 MB (estimate 828 MB with its features) and two names' heads on a 2048 view at 676 MB
(estimate 938 MB); on an H200 in float32 with 16 prompts a batch, the heads peaked at 5.6
GB on a 1008 view and 6.5 GB on a 2048 view (estimates 8.5 and 12.3 GB), and one view's
held features took 247 MiB of allocator blocks (``F`` = 213 MiB, within the slack).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: Default run budget (``--run-memory-gb``): bytes all runs in progress may hold together.
RUN_MEMORY_BYTES = 6 * 10**9

#: Default cache budget (``--cache-memory-gb``): bytes kept between runs (see :mod:`.session`).
CACHE_MEMORY_BYTES = 4 * 10**9

#: Bytes of a float32.
FLOAT = 4

#: Allocator slack: the estimate is ``SLACK_FACTOR * bytes + SLACK_BYTES``.
SLACK_FACTOR, SLACK_BYTES = 1.25, 64 * 2**20

#: Bytes per full-size pixel to decode a PNG or JPEG, and per working pixel of a GeoTIFF.
PICTURE_FILE_BYTES, RASTER_PIXEL_BYTES = 16, 80

GB = 1e9


class OverBudget(Exception):
    """A run whose estimated memory exceeds the run budget (HTTP 413)."""


@dataclass(frozen=True)
class ModelDims:
    """The SAM 3 dimensions a run's memory depends on (see the module docstring).

    Attributes:
        image_size: ``S``, the backbone's square input side.
        patch: the ViT patch side.
        width: ``C``, the FPN and detector width.
        level_scales: the detector's FPN levels as multiples of the patch grid (4, 2, 1).
        backbone_width: ``D``.
        backbone_mlp: ``Dm``.
        queries: ``Q``.
        decoder_heads: ``Hd``.
        decoder_layers: DETR decoder layers (the attention maps keep one per layer).

    """

    image_size: int
    patch: int
    width: int
    level_scales: tuple[float, ...]
    backbone_width: int
    backbone_mlp: int
    queries: int
    decoder_heads: int
    decoder_layers: int

    @classmethod
    def of(cls, config) -> ModelDims:
        """The dimensions of a ``transformers`` ``Sam3Config``."""
        vision = config.vision_config
        backbone = vision.backbone_config
        size = backbone.image_size
        decoder = config.detr_decoder_config
        return cls(
            image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
            patch=int(backbone.patch_size),
            width=int(vision.fpn_hidden_size),
            level_scales=tuple(float(s) for s in vision.scale_factors[:-1]),  # the 0.5x level is unused
            backbone_width=int(backbone.hidden_size),
            backbone_mlp=int(backbone.intermediate_size),
            queries=int(decoder.num_queries),
            decoder_heads=int(decoder.num_attention_heads),
            decoder_layers=int(decoder.num_layers),
        )

    @property
    def grid(self) -> int:
        """``g``: patch tokens per side."""
        return self.image_size // self.patch

    @property
    def level_tokens(self) -> int:
        """``L``: tokens of the detector's FPN levels together."""
        return sum(round(self.grid * s) ** 2 for s in self.level_scales)

    @property
    def finest_tokens(self) -> int:
        """``G``: tokens of the finest level (the pixel decoder's resolution)."""
        return round(self.grid * max(self.level_scales)) ** 2

    @property
    def view_bytes(self) -> int:
        """``F``: the backbone features held per view (float32)."""
        return FLOAT * (2 * self.width * self.level_tokens + self.width)

    @property
    def backbone_bytes(self) -> int:
        """Working memory of one view through the backbone."""
        g2, d, dm = self.grid**2, self.backbone_width, self.backbone_mlp
        return FLOAT * (g2 * (4 * d + 2 * dm) + 4 * self.width * self.finest_tokens + 6 * self.image_size**2)

    @property
    def head_bytes(self) -> int:
        """Working memory of one prompt through the heads, at model resolution."""
        finest = self.finest_tokens
        bias = 2 * self.decoder_heads * self.queries * self.grid**2
        return FLOAT * (finest * (4 * self.width + self.queries + 2) + bias)

    @property
    def attention_map_bytes(self) -> int:
        """The decoder's full attention maps of one prompt (float32 and a float16 copy)."""
        return 6 * self.decoder_layers * self.decoder_heads * (self.queries + 1) * self.grid**2


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, known from the request before any work (see the module docstring).

    Attributes:
        height: ``H`` of the working picture.
        width: ``W``.
        view_pixels: ``a``, pixels of the largest view.
        views: ``V``, views whose backbone features the run computes.
        names: ``N``.
        computed: ``M``, names sent through the model.
        classes: ``K``.
        prompt_batch: ``B``.
        view_batch: ``Bv``.
        batched_instances: instance masks resized for a whole prompt batch (accelerators).
        picture_bytes: decoding the picture (0 when it is decoded already).

    """

    height: int
    width: int
    view_pixels: int
    views: int
    names: int
    computed: int
    classes: int
    prompt_batch: int = 1
    view_batch: int = 1
    batched_instances: bool = False
    picture_bytes: int = 0

    def describe(self) -> str:
        """The start of a refusal's sentence: what the run would do."""
        views = f"{self.views} new view{'s' * (self.views != 1)}, " if self.views else ""
        return (
            f"This run ({views}{self.computed} of {self.names} name{'s' * (self.names != 1)} through the "
            f"model on a {self.width} x {self.height} picture)"
        )


def run_bytes(dims: ModelDims, plan: RunPlan) -> int:
    """The memory estimate of a run (the module docstring's formula), in bytes."""
    area, a = plan.height * plan.width, plan.view_pixels
    m, n, k, b = plan.computed, plan.names, plan.classes, plan.prompt_batch
    model = 0
    if m > 0:
        rows = 11 * b if plan.batched_instances else 19
        view_heads = FLOAT * a * (rows + 8 * b) + FLOAT * a * m
        backbone = min(plan.view_batch, plan.views) * dims.backbone_bytes
        model = backbone + b * dims.head_bytes + view_heads
    maps = max(
        FLOAT * area * (m + 1),
        FLOAT * area * 2 * m + FLOAT * area,
        FLOAT * area * (2 * n + 2 * k) + 13 * area,
    )
    total = plan.picture_bytes + 12 * area + plan.views * dims.view_bytes + model + maps
    return _slack(total)


def attention_bytes(dims: ModelDims, height: int, width: int, picture_bytes: int = 0) -> int:
    """The memory estimate of one class's attention (one whole-picture view, one prompt)."""
    area = height * width
    total = (
        picture_bytes
        + 12 * area
        + dims.view_bytes
        + dims.backbone_bytes
        + dims.head_bytes
        + dims.attention_map_bytes
    )
    return _slack(total)


def picture_bytes(decode: int, height: int, width: int) -> int:
    """The memory estimate of decoding a picture (``decode`` bytes) to a ``height x width`` working one."""
    return _slack(decode + 12 * height * width)


def _slack(nbytes: int) -> int:
    return math.ceil(SLACK_FACTOR * nbytes) + SLACK_BYTES


def count_views(height: int, width: int, crop: int, stride: int) -> tuple[int, int]:
    """``(number of views, pixels of the largest)`` of :func:`~ovearth.segment.windows.views_for`.

    Computed from the window rule without listing the windows (a 1-pixel stride lists
    millions). ``crop`` and ``stride`` are checked settings (``crop > 0`` has ``0 < stride <= crop``).
    """
    if crop == 0 or (height <= crop and width <= crop):
        return 1, height * width
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    return rows * cols, min(crop, height) * min(crop, width)


def gigabytes(nbytes: int) -> str:
    """``nbytes`` in GB rounded up to a tenth (``"0.5"``, ``"9.4"``, ``"153.4"``): an option's value."""
    return f"{max(math.ceil(nbytes / GB * 10), 1) / 10:g}"


class MemoryBudget:
    """Bytes that runs may hold at once: each run reserves its estimate first.

    Args:
        limit: the budget in bytes.
        option: the command-line option that sets it (named in refusals).

    """

    def __init__(self, limit: int, option: str = "--run-memory-gb") -> None:
        if limit <= 0:
            raise ValueError(f"A memory budget must be above 0 bytes, got {limit}.")
        self.limit = limit
        self.option = option
        self._held = 0
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        """Bytes reserved now."""
        with self._changed:
            return self._held

    def check(self, nbytes: int, what: str, instead: str = "use fewer views or names") -> None:
        """Raise :class:`OverBudget` when ``nbytes`` alone exceeds the budget.

        Args:
            nbytes: the estimate.
            what: what needs it, for the sentence ("This run (3072 new views, 2 of 2
                names through the model on a 64 x 48 picture)").
            instead: what the user may do instead of raising the limit ("" for nothing).

        """
        if nbytes > self.limit:
            advice = f"{instead}, or " if instead else ""
            raise OverBudget(
                f"{what} needs about {gigabytes(nbytes)} GB of memory, over the explorer's limit of "
                f"{self.limit / GB:g} GB per run; {advice}restart it with {self.option} {gigabytes(nbytes)}."
            )

    @contextmanager
    def reserve(self, nbytes: int, what: str, instead: str = "use fewer views or names") -> Iterator[None]:
        """Hold ``nbytes`` for the block, waiting while other runs hold too much.

        Raises:
            OverBudget: ``nbytes`` alone exceeds the budget (before any wait; see :meth:`check`).

        """
        self.check(nbytes, what, instead)
        with self._changed:
            self._changed.wait_for(lambda: self._held + nbytes <= self.limit)
            self._held += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._held -= nbytes
                self._changed.notify_all()
