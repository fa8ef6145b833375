"""The few constants that are not read from the model config or the input."""

from __future__ import annotations

#: Hub id of the released SAM 3 checkpoint (``transformers`` format).
DEFAULT_MODEL = "facebook/sam3"

#: Label written for pixels that carry no prediction (nodata, ignored).
NODATA_LABEL = 255

#: Text length the SAM 3 processor pads and truncates prompts to.
TEXT_MAX_LENGTH = 32

#: SAM 3 image normalisation: ``(x / 255 - mean) / std`` per channel.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
