"""ovearth: open-vocabulary segmentation of remote-sensing images with SAM 3.

Python API::

    from ovearth import Segmentor, load_model
    segmentor = Segmentor(load_model("facebook/sam3"), "building,roof;road;tree")
    prediction = segmentor.predict(rgb_uint8_hw3)
"""

from .errors import CheckpointError, InputError, ModelNotFoundError, OvearthError
from .model.load import LoadedModel, load_model
from .segment.segmentor import Prediction, Segmentor
from .segment.settings import SegmentSettings
from .segment.vocabulary import Vocabulary

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "InputError",
    "LoadedModel",
    "ModelNotFoundError",
    "OvearthError",
    "Prediction",
    "SegmentSettings",
    "Segmentor",
    "Vocabulary",
    "load_model",
]
