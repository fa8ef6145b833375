"""Settings of a segmentation run: SegEarth-OV3's switches and thresholds."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..constants import MAX_CLASSES, NODATA_LABEL, PROMPT_FORMS, UNCLASSIFIED_LABEL
from ..errors import InputError
from ..refine.registry import RefinePipeline, parse_refine
from .windows import check_slide
from .zoom import Zoom

MODES = ("fast", "reference")
PRECISIONS = ("float32", "bfloat16")
REFINE_AT = ("fusion", "backbone")
REFINE_FOR = ("both", "decoder", "mask")

#: Default prompt batch on GPUs and other accelerators.
ACCELERATOR_PROMPT_BATCH = 16

#: Default view batch (views through the backbone at once) on accelerators.
ACCELERATOR_VIEW_BATCH = 4

#: Prefix of a refine spec part that records a refiner given as a Python object.
CUSTOM_REFINER = "custom."


@dataclass(frozen=True)
class SegmentSettings:
    """How per-name SAM 3 outputs become labels (defaults: the reference segmentor's).

    Attributes:
        confidence_threshold: keep instance ``j`` when ``s_j > confidence_threshold``.
        prob_thd: pixels whose best class score is below this get :attr:`low_score_label`
            (the threshold of every class not in ``class_prob_thd``).
        class_prob_thd: per-class thresholds ``((class name, threshold), ...)`` (a dict is
            accepted); the rule: argmax over classes, then the winning class's threshold
            decides whether the pixel is kept (see :meth:`class_thresholds`).
        bg_idx: the class index low-score pixels get (a benchmark protocol's background
            class), or None (free-form classes): they get :data:`UNCLASSIFIED_LABEL` (254),
            which is never a class index nor nodata (255).
        slide_crop: sliding-window side in pixels (0: one view of the whole image).
        slide_stride: sliding-window step in pixels.
        use_instances: use the instance (transformer decoder) term.
        use_semantic: use the semantic head term.
        use_presence: multiply by the presence score.
        mode: ``"fast"`` (staged, batched) or ``"reference"`` (plain per-name loop).
        prompt_batch: prompts run through fusion / decoder / mask decoder at once
            (bounds memory; does not change results). None: 1 on CPU, where one prompt
            at a time measured 20 % faster in the heads than 11 at once (cache), and
            :data:`ACCELERATOR_PROMPT_BATCH` on accelerators.
        view_batch: views run through the backbone at once (bounds memory; does not
            change results). None: 1 on CPU, :data:`ACCELERATOR_VIEW_BATCH` on accelerators.
        precision: ``"float32"``, or ``"bfloat16"``: the model runs under
            ``torch.autocast`` in bfloat16 over the regions SegEarth-OV3's segmentor puts
            under it (every SAM 3 module, and the resize / sigmoid / score product of the
            masks; per-name maps accumulate in float32). On CUDA this reproduces the
            published pipeline's numerics; results differ from float32 by rounding.
        compile: run the backbone through ``torch.compile`` (the first view pays the
            compilation; results equal up to float rounding).
        prompt_form: ``"meta"`` (default): each name's text tokens plus the geometry
            encoder's token for an empty box prompt, as Meta's ``sam3`` and SegEarth-OV3
            run SAM 3; ``"transformers"``: text tokens only, as ``transformers``'
            ``Sam3Model.forward`` without boxes (for comparison).

    """

    confidence_threshold: float = 0.5
    prob_thd: float = 0.0
    class_prob_thd: tuple[tuple[str, float], ...] = ()
    bg_idx: int | None = None
    slide_crop: int = 0
    slide_stride: int = 0
    use_instances: bool = True
    use_semantic: bool = True
    use_presence: bool = True
    mode: str = "fast"
    prompt_batch: int | None = None
    view_batch: int | None = None
    refine: str = ""
    refine_at: str = "fusion"
    refine_for: str = "both"
    zoom: str = ""
    skip_absent: bool = False
    precision: str = "float32"
    compile: bool = False
    prompt_form: str = "meta"

    def __post_init__(self) -> None:
        for name in ("confidence_threshold", "prob_thd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be a number in [0, 1] (logits lie there), got {value!r}.")
        object.__setattr__(self, "class_prob_thd", _class_thresholds(self.class_prob_thd))
        for name in ("bg_idx", "slide_crop", "slide_stride"):
            value = getattr(self, name)
            if name == "bg_idx" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be an integer, got {value!r}.")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'.")
        if any(b is not None and b < 1 for b in (self.prompt_batch, self.view_batch)):
            raise InputError(
                f"prompt_batch and view_batch must be >= 1, got {self.prompt_batch} and {self.view_batch}."
            )
        if self.prompt_form not in PROMPT_FORMS:
            raise InputError(
                f"prompt_form must be one of {', '.join(PROMPT_FORMS)}, got '{self.prompt_form}'."
            )
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'.")
        if self.bg_idx is not None and not 0 <= self.bg_idx < MAX_CLASSES:
            raise InputError(
                f"bg_idx must be a class index in 0..{MAX_CLASSES - 1} ({UNCLASSIFIED_LABEL} is "
                f"unclassified, {NODATA_LABEL} nodata), got {self.bg_idx}."
            )
        check_slide(self.slide_crop, self.slide_stride)
        if self.refine_at not in REFINE_AT:
            raise InputError(f"refine_at must be one of {', '.join(REFINE_AT)}, got '{self.refine_at}'.")
        if self.refine_for not in REFINE_FOR:
            raise InputError(f"refine_for must be one of {', '.join(REFINE_FOR)}, got '{self.refine_for}'.")
        # parsed once, here: the settings hold the Zoom and the refine pipeline
        object.__setattr__(self, "_zoom", Zoom.parse(self.zoom))
        if CUSTOM_REFINER in self.refine:
            object.__setattr__(self, "_pipeline", None)
        else:
            pipeline = parse_refine(self.refine)
            object.__setattr__(self, "_pipeline", pipeline)
            object.__setattr__(self, "refine", pipeline.spec())  # canonical: every parameter written out
        if self.refine_at == "backbone" and self.refine_for != "both":
            raise InputError(
                "refine_for applies at the fusion stage; a refined backbone level feeds the fusion encoder "
                "and so both consumers (use refine_for=both)."
            )

    def class_thresholds(self, class_names: Sequence[str]) -> list[float]:
        """The threshold of each class: its ``class_prob_thd`` entry, else ``prob_thd``.

        Raises:
            InputError: a ``class_prob_thd`` name that is not one of ``class_names``.

        """
        given = dict(self.class_prob_thd)
        unknown = sorted(set(given) - set(class_names))
        if unknown:
            raise InputError(
                f"class_prob_thd names '{unknown[0]}', which is not a class; the classes are "
                f"{', '.join(class_names)}."
            )
        return [float(given.get(name, self.prob_thd)) for name in class_names]

    @property
    def lowest_prob_thd(self) -> float:
        """The smallest threshold of any class (what the provable skip may rely on)."""
        return min([self.prob_thd, *(value for _, value in self.class_prob_thd)])

    @property
    def low_score_label(self) -> int:
        """Label of valid pixels below ``prob_thd``: ``bg_idx``, or :data:`UNCLASSIFIED_LABEL` when None."""
        return UNCLASSIFIED_LABEL if self.bg_idx is None else self.bg_idx

    @property
    def parsed_zoom(self) -> Zoom | None:
        """``zoom`` as parsed at construction: a :class:`Zoom`, or None for no zoom."""
        return self._zoom

    @property
    def refine_pipeline(self) -> RefinePipeline:
        """``refine`` as parsed at construction (``refine`` itself is its canonical spec).

        Raises:
            InputError: the spec records a refiner given as a Python object (``custom.*``),
                which cannot be rebuilt from text: pass the object to ``Segmentor(refiner=...)``.

        """
        if self._pipeline is None:
            raise InputError(
                f"refine '{self.refine}' records a refiner given as a Python object; pass it again "
                "as Segmentor(refiner=...)."
            )
        return self._pipeline

    def check_run(self, num_classes: int) -> None:
        """Everything that can be checked before the model loads, for ``num_classes`` classes.

        Raises:
            InputError: ``bg_idx`` is not a class index (the refine spec and the zoom were
                checked at construction).

        """
        self.check_classes(num_classes)

    def check_classes(self, num_classes: int) -> None:
        """Raise InputError unless ``bg_idx`` (when set) is one of ``num_classes`` class indices."""
        if num_classes > MAX_CLASSES:
            raise InputError(
                f"{num_classes} classes is too many: labels are uint8 and {UNCLASSIFIED_LABEL} / "
                f"{NODATA_LABEL} are reserved, so at most {MAX_CLASSES}."
            )
        if self.bg_idx is not None and self.bg_idx >= num_classes:
            raise InputError(
                f"bg_idx {self.bg_idx} is not a class index: with {num_classes} classes use "
                f"0..{num_classes - 1} (pixels below prob_thd get this label)."
            )

    def replace(self, **changes: Any) -> SegmentSettings:
        """A copy with some fields changed (unknown names raise InputError)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InputError(f"Unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for results files (``class_prob_thd`` as ``{name: threshold}``)."""
        data = dataclasses.asdict(self)
        data["class_prob_thd"] = dict(self.class_prob_thd)
        return data

    def semantic_dict(self) -> dict[str, Any]:
        """The fields that change outputs (batch sizes excluded), for cache keys."""
        data = self.to_dict()
        for key in ("prompt_batch", "view_batch", "compile"):
            data.pop(key)
        if not self.class_prob_thd:  # keys of runs from before per-class thresholds stay valid
            data.pop("class_prob_thd")
        return data


def _class_thresholds(value: Any) -> tuple[tuple[str, float], ...]:
    """``class_prob_thd`` as a tuple of ``(name, threshold)``, each checked (InputError)."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple((name, threshold) for name, threshold in items)
    except (TypeError, ValueError):
        raise InputError(f"class_prob_thd must map class names to thresholds, got {value!r}.") from None
    for name, threshold in pairs:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"class_prob_thd: a class name must be text, got {name!r}.")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise InputError(f"class_prob_thd: '{name}' must have a number in [0, 1], got {threshold!r}.")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise InputError(f"class_prob_thd names a class twice: {', '.join(names)}.")
    return tuple((name.strip(), float(threshold)) for name, threshold in pairs)
