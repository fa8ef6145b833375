"""What an explorer run leaves: its :class:`Result`, a class's :class:`AttentionMaps`, and their bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..constants import NODATA_LABEL, UNCLASSIFIED_LABEL
from ..errors import InputError
from ..segment.views import HeldImage
from ..viz import palette
from .picture import Picture
from .request import RunRequest

#: The attention aggregations shown (see :mod:`ovearth.model.attention`).
ATTENTION_KINDS = ("queries", "scored", "presence")


@dataclass
class Result:
    """One run's outcome, kept for the pictures, the pixel readout and the exports.

    Attributes:
        id: the page's handle.
        picture: the working image.
        request: what was asked (classes, enabled ones, settings).
        class_logits: ``[K, H, W]`` float32 scores of the enabled classes.
        labels: ``[H, W]`` uint8: class index (into the enabled classes), 254 unclassified,
            255 nodata.
        presence: ``[K]`` presence of each enabled class (max over its names).
        name_presence: ``[P]`` presence of each prompt name of the enabled classes.
        computed: the names this run sent through the model (the others were cached).
        seconds: wall time of the run.

    """

    id: str
    picture: Picture
    request: RunRequest
    class_logits: Tensor
    labels: np.ndarray
    presence: Tensor
    name_presence: Tensor
    computed: tuple[str, ...]
    seconds: float

    @property
    def colors(self) -> np.ndarray:
        """``[K, 3]`` uint8: each enabled class keeps the colour of its place in the full list."""
        return palette(len(self.request.classes))[list(self.request.enabled)]


@dataclass
class AttentionMaps:
    """Decoder attention of one class's first name (see :mod:`ovearth.model.attention`).

    Attributes:
        prompt: the name that was prompted.
        weights: kind (:data:`ATTENTION_KINDS`) -> ``[N]`` patch weights summing to 1.
        grid: ``(h, w)`` token grid, ``h * w = N``.
        presence: the prompt's presence score.
        kept: queries whose score exceeds ``confidence_threshold``.

    """

    prompt: str
    weights: dict[str, Tensor]
    grid: tuple[int, int]
    presence: float
    kept: int


def held_bytes(held: HeldImage) -> int:
    """Bytes of the backbone features a :class:`HeldImage` keeps."""
    total = 0
    for features in held.views.values():
        tensors = [*features.levels, *features.pos]
        if features.prompt_token is not None:
            tensors.append(features.prompt_token)
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def result_bytes(result: Result) -> int:
    """Bytes a :class:`Result` keeps besides its picture (class scores and labels)."""
    return result.class_logits.numel() * result.class_logits.element_size() + result.labels.nbytes


def pixel_readout(result: Result, x: int, y: int) -> dict:
    """The label and every class score at pixel ``(x, y)`` of the working picture.

    Raises:
        InputError: a pixel outside the picture.

    """
    height, width = result.labels.shape
    if not (0 <= x < width and 0 <= y < height):
        raise InputError(f"Pixel ({x}, {y}) is outside the {width} x {height} image.")
    value = int(result.labels[y, x])
    names = result.request.vocabulary.labels
    label = {NODATA_LABEL: "nodata", UNCLASSIFIED_LABEL: "unclassified"}.get(value)
    scores = result.class_logits[:, y, x].tolist()
    return {
        "x": x,
        "y": y,
        "label": label if label is not None else names[value],
        "scores": [{"class": name, "score": score} for name, score in zip(names, scores, strict=True)],
    }
