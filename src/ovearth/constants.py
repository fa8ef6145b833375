"""The few constants that are not read from the model config or the input."""

from __future__ import annotations

#: Hub id of the released SAM 3 checkpoint (``transformers`` format).
DEFAULT_MODEL = "facebook/sam3"

#: Label written for pixels that carry no prediction (nodata, ignored).
NODATA_LABEL = 255

#: Label of valid pixels whose best class score is below ``prob_thd`` when the class list
#: has no background class of its own (free-form classes); never a class index.
UNCLASSIFIED_LABEL = 254

#: Most classes one run can have (indices 0..253; 254 and 255 are reserved above).
MAX_CLASSES = 254

#: Text length the SAM 3 processor pads and truncates prompts to.
TEXT_MAX_LENGTH = 32

#: SAM 3 image normalisation: ``(x / 255 - mean) / std`` per channel.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

#: Prompt forms: ``"meta"``: text tokens + the geometry encoder's CLS token (Meta's ``sam3``,
#: SegEarth-OV3); ``"transformers"``: text tokens only (``transformers``' forward without boxes).
PROMPT_FORMS = ("meta", "transformers")
