"""ovearth: open-vocabulary segmentation of remote-sensing images with SAM 3.

Python API::

    from ovearth import Segmentor, load_model
    segmentor = Segmentor(load_model("facebook/sam3"), "building,roof;road;tree")
    prediction = segmentor.predict(rgb_uint8_hw3)

The names below are imported on first use (PEP 562), so ``import ovearth`` and
``import ovearth.errors`` do not load torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, InputError, ModelNotFoundError, OvearthError

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY = {
    "EvalRun": "ovearth.run.evaluate",
    "FileOptions": "ovearth.run.files",
    "LoadedModel": "ovearth.model.load",
    "load_model": "ovearth.model.load",
    "Prediction": "ovearth.segment.segmentor",
    "Segmentor": "ovearth.segment.segmentor",
    "SegmentSettings": "ovearth.segment.settings",
    "Vocabulary": "ovearth.segment.vocabulary",
    "SegmentRun": "ovearth.run.segment_files",
    "evaluate": "ovearth.run.evaluate",
    "segment_images": "ovearth.run.segment_files",
}

__all__ = [
    "CheckpointError",
    "EvalRun",
    "FileOptions",
    "InputError",
    "LoadedModel",
    "ModelNotFoundError",
    "OvearthError",
    "Prediction",
    "SegmentRun",
    "SegmentSettings",
    "Segmentor",
    "Vocabulary",
    "evaluate",
    "load_model",
    "segment_images",
]

if TYPE_CHECKING:
    from .model.load import LoadedModel, load_model
    from .run.evaluate import EvalRun, evaluate
    from .run.files import FileOptions
    from .run.segment_files import SegmentRun, segment_images
    from .segment.segmentor import Prediction, Segmentor
    from .segment.settings import SegmentSettings
    from .segment.vocabulary import Vocabulary


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ovearth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
