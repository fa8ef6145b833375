"""The page's run request (JSON) parsed once into value objects.

```json
{"image": "root:a.tif",
 "classes": ["building,roof", "road", "tree"],      (or "building,roof;road;tree")
 "enabled": [true, false, true],                    (optional: all)
 "settings": {"prob_thd": 0.3, "class_prob_thd": {"road": 0.5}, "refine": "smooth:a=0.2", ...}}
```

``settings`` takes the :class:`SegmentSettings` fields a protocol file takes (see
:data:`SETTING_FIELDS`); run options (precision, batches) come from the command line.
Per-class thresholds of disabled classes are dropped with them.

**Refiner parameters that name a file, a folder or a hub model** (:data:`RESOURCE_PARAMS`,
e.g. ``clip:model=...``) are not the page's to choose: such a value must be the
refiner's own default (``clip``'s ``openai/clip-vit-base-patch16``, loaded from the
Hugging Face cache, or downloaded once, as ``segment --refine clip`` does) or one of the
values given on the command line with ``ovearth explore --allow-model VALUE``, as text
equal to it. Any other value is refused with one sentence that names neither the value's
existence nor its contents, before anything is opened or loaded. Refiners given as Python
objects (``custom.*`` specs) are refused too.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..refine import RefinePipeline
from ..segment.settings import SegmentSettings
from ..segment.vocabulary import Vocabulary

#: settings the page may change, with their JSON types
SETTING_FIELDS: dict[str, tuple[type, ...]] = {
    "confidence_threshold": (int, float),
    "prob_thd": (int, float),
    "class_prob_thd": (dict,),
    "bg_idx": (int, type(None)),
    "slide_crop": (int,),
    "slide_stride": (int,),
    "use_instances": (bool,),
    "use_semantic": (bool,),
    "use_presence": (bool,),
    "refine": (str,),
    "refine_at": (str,),
    "refine_for": (str,),
    "prompt_form": (str,),
}

#: settings that only decide labels from the scores (a change runs no model)
LABEL_FIELDS = ("prob_thd", "class_prob_thd", "bg_idx")

#: longest class list accepted, in characters
MAX_CLASSES_TEXT = 20_000

#: refiner parameters that name a file, a folder or a model (the page may not choose them)
RESOURCE_PARAMS = frozenset({"model", "path", "file", "folder", "dir", "directory", "checkpoint", "weights"})


@dataclass(frozen=True)
class RunRequest:
    """What to segment and how.

    Attributes:
        image: the catalog id of the image.
        classes: every class of the page, in its order (colours follow this order).
        enabled: the indices into ``classes`` that are segmented (at least one).
        vocabulary: the enabled classes, in order.
        settings: the settings of the run (per-class thresholds of enabled classes only).

    """

    image: str
    classes: Vocabulary
    enabled: tuple[int, ...]
    vocabulary: Vocabulary
    settings: SegmentSettings

    @property
    def model_settings(self) -> SegmentSettings:
        """The settings with every label-only field at its default: what the scores depend on."""
        defaults = SegmentSettings()
        return self.settings.replace(**{name: getattr(defaults, name) for name in LABEL_FIELDS})

    @property
    def model_key(self) -> str:
        """A text key of :attr:`model_settings` (for the per-name score caches)."""
        return json.dumps(self.model_settings.semantic_dict(), sort_keys=True, default=str)


def parse_run(body: Any, base: SegmentSettings, allowed_models: Collection[str] = ()) -> RunRequest:
    """Check a run request and build its vocabulary and settings.

    Args:
        body: the decoded JSON.
        base: the command line's settings (precision and batches kept; the page's
            ``settings`` replace the other fields).
        allowed_models: values a refiner's resource parameter may take besides its
            default (``--allow-model``; see the module docstring).

    Raises:
        InputError: anything missing, of the wrong type or out of range, or a refiner
            parameter naming a file or model not allowed, in one sentence.

    """
    if not isinstance(body, dict):
        raise InputError("The request must be a JSON object with 'image' and 'classes'.")
    unknown = sorted(set(body) - {"image", "classes", "enabled", "settings"})
    if unknown:
        raise InputError(f"Unknown field '{unknown[0]}'; allowed: classes, enabled, image, settings.")
    image = body.get("image")
    if not isinstance(image, str) or not image:
        raise InputError("Pick an image first ('image' must be the id of a listed image).")
    classes = _classes(body.get("classes"))
    enabled = _enabled(body.get("enabled"), len(classes))
    vocabulary = Vocabulary(tuple(classes.classes[i] for i in enabled))
    settings = _settings(body.get("settings", {}), base, [classes.labels[i] for i in enabled], classes.labels)
    settings.check_classes(len(vocabulary))
    check_resources(settings.refine_pipeline, allowed_models)
    return RunRequest(image=image, classes=classes, enabled=enabled, vocabulary=vocabulary, settings=settings)


def _classes(value: Any) -> Vocabulary:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = [item for item in value if item.strip()]  # blank lines of the text box
    elif not isinstance(value, str):
        raise InputError("'classes' must be text like 'building,roof;road' or a list of such classes.")
    if sum(map(len, value)) > MAX_CLASSES_TEXT:
        raise InputError(f"The class list is longer than {MAX_CLASSES_TEXT} characters.")
    return Vocabulary.parse(value)


def _enabled(value: Any, count: int) -> tuple[int, ...]:
    if value is None:
        return tuple(range(count))
    if not isinstance(value, list) or len(value) != count or not all(isinstance(v, bool) for v in value):
        raise InputError(f"'enabled' must be a list of {count} true/false values, one per class.")
    if not any(value):
        raise InputError("Every class is switched off; switch at least one on.")
    return tuple(i for i, on in enumerate(value) if on)


def _settings(value: Any, base: SegmentSettings, enabled: list[str], every: list[str]) -> SegmentSettings:
    if not isinstance(value, dict):
        raise InputError("'settings' must be a JSON object.")
    unknown = sorted(set(value) - set(SETTING_FIELDS))
    if unknown:
        raise InputError(f"Unknown setting '{unknown[0]}'; allowed: {', '.join(sorted(SETTING_FIELDS))}.")
    for name, given in value.items():
        kinds = SETTING_FIELDS[name]
        if not isinstance(given, kinds) or (isinstance(given, bool) and bool not in kinds):
            raise InputError(f"Setting '{name}' has the wrong type: {json.dumps(given)[:60]}.")
    fields = dict(value)
    per_class = fields.get("class_prob_thd", {})
    missing = sorted(set(per_class) - set(every))
    if missing:
        raise InputError(
            f"class_prob_thd names '{missing[0]}', which is not a class; the classes are {', '.join(every)}."
        )
    fields["class_prob_thd"] = {name: per_class[name] for name in enabled if name in per_class}
    known = {f.name for f in dataclasses.fields(SegmentSettings)}
    try:
        return base.replace(**{k: v for k, v in fields.items() if k in known})
    except TypeError as error:
        raise InputError(f"A setting has a bad value ({error}).") from None


def check_resources(pipeline: RefinePipeline, allowed: Collection[str] = ()) -> None:
    """Refuse refiner parameters that name a file or model the command line did not allow.

    A parameter in :data:`RESOURCE_PARAMS` must equal its field's default or one of
    ``allowed``. The sentence does not repeat the value, and nothing is opened.

    Raises:
        InputError: the first parameter that does not.

    """
    for refiner in pipeline.refiners:
        for field in dataclasses.fields(refiner):
            if field.name not in RESOURCE_PARAMS:
                continue
            value = getattr(refiner, field.name)
            if value == field.default or value in allowed:
                continue
            offered = ", ".join(sorted({str(field.default), *allowed}))
            raise InputError(
                f"Refiner parameter '{refiner.name}:{field.name}' names a file or model, which the page may "
                f"only choose from those the explorer was started with ({offered}); add others with "
                f"ovearth explore --allow-model."
            )
