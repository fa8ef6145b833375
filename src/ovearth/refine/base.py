"""The refiner protocol: tokens in, tokens of the same shape out.

A refiner is a frozen dataclass whose fields are its parameters (the names used in the
``--refine`` grammar) and whose ``__call__`` maps

    refine(tokens [B, N, C], grid (H, W), context) -> tokens [B, N, C],   N = H * W

where row ``n`` of the token axis is grid cell ``(n // W, n % W)``. Refiners are pure
functions of their inputs and parameters; at strength zero they return their input
unchanged (the same tensor), so a zero-strength setting reproduces the baseline bit for
bit. ``context`` carries what some refiners need: the prompt names of the batch, the
view's pixels, results of a first pass, and a per-view cache.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor


@dataclass
class RefineContext:
    """What a refiner may read besides the tokens.

    Attributes:
        prompts: the ``B`` prompt names of the batch (None on the backbone level, where
            the batch axis is views).
        view: ``[3, h, w]`` uint8 RGB of the view being segmented (for image models
            such as CLIP).
        presence_logits: ``[B]`` presence logits of a first pass (two-pass refiners).
        patch_weights: ``{kind: [B, N]}`` patch importance from a first pass's decoder
            attention (``"queries"``, ``"presence"``), each summing to 1 over ``N``.
        cache: per-view scratch space (e.g. CLIP features computed once per view).

    """

    prompts: list[str] | None = None
    view: Tensor | None = None
    presence_logits: Tensor | None = None
    patch_weights: dict[str, Tensor] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)


class Refiner:
    """Base class of the refiners (subclasses are frozen dataclasses).

    Class attributes:
        name: the registry name used in ``--refine``.
        first_pass: what the refiner needs from a first, unrefined pass: ``""`` (nothing),
            ``"presence"`` or ``"attention"``.
    """

    name: ClassVar[str] = ""
    first_pass: ClassVar[str] = ""
    #: closed ranges of the numeric parameters, ``{field: (low, high)}`` (see :func:`check_params`)
    limits: ClassVar[dict[str, tuple[float, float]]] = {}

    def __call__(self, tokens: Tensor, grid: tuple[int, int], context: RefineContext) -> Tensor:
        """Refine ``[B, N, C]`` tokens laid out on ``grid``; return the same shape."""
        raise NotImplementedError

    def spec(self) -> str:
        """The refiner in the ``--refine`` grammar, with every parameter written out.

        Refiners outside the registry are named ``custom.<ClassName>``: results and caches
        are keyed by this string, so give a custom refiner's parameters as fields.
        """
        params = ",".join(f"{k}={v}" for k, v in vars(self).items())
        name = self.name or f"custom.{type(self).__qualname__}"
        return f"{name}:{params}" if params else name


def check_params(refiner: Refiner) -> None:
    """The typed parameter spec: each field has its annotated type and lies in ``limits``.

    ``bool`` fields take booleans; ``int`` fields integers; ``float`` fields finite
    numbers; ``str`` fields text; numeric fields listed in the class's ``limits`` lie in
    the closed range given there.

    Raises:
        ValueError: the first parameter that does not (its name, value and what it takes).

    """
    hints = typing.get_type_hints(type(refiner))
    for f in dataclasses.fields(refiner):
        value, kind = getattr(refiner, f.name), hints.get(f.name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{f.name} must be true or false, got {value!r}.")
        if kind is int and not (number and isinstance(value, int)):
            raise ValueError(f"{f.name} must be an integer, got {value!r}.")
        if kind is float and not (number and math.isfinite(value)):
            raise ValueError(f"{f.name} must be a finite number, got {value!r}.")
        if kind is str and not isinstance(value, str):
            raise ValueError(f"{f.name} must be text, got {value!r}.")
        if f.name in refiner.limits:
            low, high = refiner.limits[f.name]
            if not low <= value <= high:
                raise ValueError(f"{f.name} must lie in [{low:g}, {high:g}], got {value!r}.")


def as_grid(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, N, C] -> [B, C, H, W]`` (a view when possible)."""
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h} x {w} grid.")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def as_tokens(grid_tensor: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, N, C]``."""
    b, c, h, w = grid_tensor.shape
    return grid_tensor.reshape(b, c, h * w).transpose(1, 2)
