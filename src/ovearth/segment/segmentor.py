"""The public ``Segmentor``: an image in, SegEarth-OV3 labels out.

```python
from ovearth import Segmentor, load_model
seg = Segmentor(load_model("facebook/sam3"), "building,roof;road;tree", prob_thd=0.1)
pred = seg.predict(rgb)            # rgb: [H, W, 3] uint8 numpy array
pred.labels, pred.class_logits, pred.presence
```

The segmentor is the predictor: it holds the model, the vocabulary, the settings and an
image's kept features (``set_image``), places the views (sliding windows, zoom regions),
runs them through its :class:`~.views.ViewEngine` with :func:`~.accumulate.run_windows`
(the one view loop) and applies SegEarth-OV3's class rules (:mod:`.fusion`). The ``fast``
and ``reference`` modes share preprocessing, window placement and the fusion rules, and
agree to 1e-5 in float32 (tested).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..model.features import TextFeatures
from ..model.load import LoadedModel, load_model
from ..model.preprocess import to_chw_uint8
from ..model.stages import Sam3Stages
from ..refine import RefinePipeline, Refiner
from .accumulate import ImageSum, run_windows
from .fusion import finish, names_to_classes
from .instances import Instance, deduplicate, restricted
from .settings import CUSTOM_REFINER, SegmentSettings
from .views import HeldImage, ViewEngine, image_digest, refine_backbone  # noqa: F401 (re-exported)
from .vocabulary import Vocabulary
from .windows import Window, tiles_without_overlap, views_for
from .zoom import choose_regions

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Segmentation of one image.

    Attributes:
        labels: ``[H, W]`` uint8 class index per pixel; 255 where the input had no data.
        class_logits: ``[K, H, W]`` float32 class logits (max over each class's names).
        presence: ``[K]`` presence score per class (max over its names and the views).
        class_names: the ``K`` display names.
        valid: ``[H, W]`` bool, False where the input had no data.
        instances: with ``predict(..., instances=True)``, SAM 3's kept objects (see
            :mod:`ovearth.segment.instances`), deduplicated; else None.

    """

    labels: np.ndarray
    class_logits: Tensor
    presence: Tensor
    class_names: list[str]
    valid: np.ndarray
    instances: list[Instance] | None = None


class Segmentor:
    """Open-vocabulary segmentation with SAM 3 and SegEarth-OV3's rules.

    Args:
        model: a :class:`LoadedModel`, or anything :func:`load_model` accepts.
        classes: the vocabulary (``"a,b;c"``, a list, or a :class:`Vocabulary`).
        settings: base settings; keyword ``overrides`` replace single fields.
        refiner: a refiner object (``refine(tokens, grid, context)``, see
            :mod:`ovearth.refine`) used instead of ``settings.refine``, e.g. your own.
        **overrides: fields of :class:`SegmentSettings`.

    Raises:
        InputError: bad vocabulary or settings.

    """

    def __init__(
        self,
        model: LoadedModel | str | Path,
        classes: str | Sequence[str | Sequence[str]] | Vocabulary,
        settings: SegmentSettings | None = None,
        refiner: Refiner | RefinePipeline | None = None,
        **overrides: Any,
    ) -> None:
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        self.vocabulary = classes if isinstance(classes, Vocabulary) else Vocabulary.parse(classes)
        settings = settings or SegmentSettings()  # validated and parsed once, where it was made
        self.settings = settings.replace(**overrides) if overrides else settings
        self.settings.check_classes(len(self.vocabulary))
        #: ``[K]`` threshold of each class (``prob_thd`` unless ``class_prob_thd`` names it)
        self.thresholds = self.settings.class_thresholds(self.vocabulary.labels)
        if refiner is None:
            self.pipeline = self.settings.refine_pipeline
        else:
            self.pipeline = refiner if isinstance(refiner, RefinePipeline) else RefinePipeline((refiner,))
            # canonical spec (every parameter written out): recorded in results and cache keys
            self.settings = self.settings.replace(refine=_spec(self.pipeline))
        if self.pipeline.first_pass and self.settings.refine_at != "fusion":
            raise InputError(
                f"Refiners reading a first decoder pass ({', '.join(sorted(self.pipeline.first_pass))}) work "
                "per prompt: use refine_at=fusion."
            )
        self.stages = Sam3Stages(
            self.loaded.model, compile_backbone=self.settings.compile, prompt_form=self.settings.prompt_form
        )
        #: the per-view forward (text cache, batches, instance term)
        self.engine = ViewEngine(self.loaded, self.vocabulary, self.settings, self.pipeline, self.stages)
        self._held: HeldImage | None = None

    @property
    def prompt_batch(self) -> int:
        """Prompts per batch (:attr:`ViewEngine.prompt_batch`)."""
        return self.engine.prompt_batch

    @property
    def view_batch(self) -> int:
        """Views per backbone batch (:attr:`ViewEngine.view_batch`)."""
        return self.engine.view_batch

    @property
    def batched_instances(self) -> bool:
        """Instance masks of a whole prompt batch at once (accelerators; see :class:`ViewEngine`)."""
        return self.engine.batched_instances

    @batched_instances.setter
    def batched_instances(self, value: bool) -> None:
        self.engine.batched_instances = value

    @property
    def text_features(self) -> TextFeatures:
        """Projected text features of every prompt name, encoded once and cached."""
        return self.engine.text_features

    def record(self) -> dict[str, Any]:
        """What a results file says about this segmentor: version, model, device, classes, settings."""
        from .. import __version__  # the package's __init__ imports this module

        return {
            "ovearth": __version__,
            "model": {"source": self.loaded.source, "fingerprint": self.loaded.fingerprint},
            "device": str(self.stages.device),
            "classes": str(self.vocabulary),
            "settings": self.settings.to_dict(),
        }

    def autocast(self) -> AbstractContextManager[None]:
        """The precision region of the model calls (:meth:`ViewEngine.autocast`)."""
        return self.engine.autocast()

    def set_image(self, image: np.ndarray | Tensor) -> None:
        """Keep the backbone features of ``image``'s views for later calls (SAM's predictor pattern).

        From now on, :meth:`predict` on this same image (compared by its bytes) reuses the
        features of every view it has computed once (backbone, FPN levels and the
        geometry prompt token), and so does every segmentor made by
        :meth:`with_classes`: a new class list costs only the per-name stages. The
        results are those of a fresh :meth:`predict` (tested). ``reference`` mode does
        not use them. Memory: about 0.2 GB per 1008 x 1008 view.

        Args:
            image: ``[H, W, 3]`` uint8 RGB array (or a ``[3, H, W]`` uint8 tensor).

        """
        self._held = HeldImage(key=image_digest(to_chw_uint8(image)))

    def release_image(self) -> None:
        """Drop the features kept by :meth:`set_image` (segmentors made by :meth:`with_classes` keep them)."""
        self._held = None

    def with_classes(self, classes: str | Sequence[str | Sequence[str]] | Vocabulary) -> Segmentor:
        """A segmentor for another vocabulary with the same model, settings, refiner and held image."""
        other = Segmentor(self.loaded, classes, settings=self.settings, refiner=self.pipeline)
        other._held = self._held
        return other

    def predict(
        self,
        image: np.ndarray | Tensor,
        valid: np.ndarray | None = None,
        instances: bool = False,
        on_view: Callable[[int, int], None] | None = None,
    ) -> Prediction:
        """Segment one image.

        Args:
            image: ``[H, W, 3]`` uint8 RGB array (or a ``[3, H, W]`` uint8 tensor).
            valid: optional ``[H, W]`` bool mask, False on nodata pixels; they get label
                255. An image without any valid pixel is not run through the model.
            instances: also return SAM 3's kept objects (``Prediction.instances``); labels
                and scores are the same either way.
            on_view: called as ``on_view(done, total)`` after each batch of views (progress).

        Returns:
            The :class:`Prediction`.

        Raises:
            InputError: wrong shape or dtype.

        """
        view = to_chw_uint8(image)
        height, width = view.shape[-2:]
        valid_np = np.ones((height, width), bool) if valid is None else np.asarray(valid, bool)
        if valid_np.shape != (height, width):
            raise InputError(f"The valid mask has shape {valid_np.shape}, the image {(height, width)}.")
        num_classes = len(self.vocabulary)
        if not valid_np.any():
            logger.info("The image has no valid pixel; every label is nodata (255).")
            return Prediction(
                labels=np.full((height, width), 255, np.uint8),
                class_logits=torch.zeros(num_classes, height, width),
                presence=torch.zeros(num_classes),
                class_names=self.vocabulary.labels,
                valid=valid_np,
                instances=[] if instances else None,
            )
        s, vocabulary = self.settings, self.vocabulary
        found: list[Instance] | None = [] if instances else None
        with torch.inference_mode():
            name_logits, name_presence = self.name_logits(view, found, on_view=on_view)
            presence = names_to_classes(name_presence[:, None, None], vocabulary.name_class, num_classes)
            class_logits, labels = finish(
                name_logits, valid_np, vocabulary.name_class, num_classes, self.thresholds, s.low_score_label
            )
        return Prediction(
            labels=labels,
            class_logits=class_logits,
            presence=presence[:, 0, 0].float().cpu(),
            class_names=self.vocabulary.labels,
            valid=valid_np,
            instances=None if found is None else deduplicate(restricted(found, valid_np)),
        )

    @torch.inference_mode()
    def name_logits(
        self,
        view: Tensor,
        found: list[Instance] | None = None,
        confidences: Sequence[float] | None = None,
        on_view: Callable[[int, int], None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-name logits of a whole image, averaged over its views (sliding windows, zoom regions).

        Args:
            view: ``[3, H, W]`` uint8 image.
            found: when a list, the instances of every view are added to it (image
                coordinates, not deduplicated).
            confidences: ``G`` confidence thresholds: the logits for each, from one run of
                the model (fast mode, no zoom, no ``found``); what ``ovearth calibrate``
                searches. Each equals the logits of a segmentor with that
                ``confidence_threshold`` (tested).
            on_view: called as ``on_view(done, total)`` after each batch of views; zoom's
                regions add to ``total`` once the first pass is done.

        Returns:
            ``([P, H, W] logits, [P] presence)`` (``[G, P, H, W]`` with ``confidences``);
            presence is the max over views.

        Raises:
            InputError: ``confidences`` with reference mode, zoom, or ``found``.

        """
        device = self.stages.device
        view = view.to(device)
        height, width = view.shape[-2:]
        s = self.settings
        windows = views_for(height, width, s.slide_crop, s.slide_stride)
        num_names = len(self.vocabulary.names)
        if confidences is not None and (
            s.mode == "reference" or s.parsed_zoom is not None or found is not None
        ):
            raise InputError(
                "Logits for several confidence thresholds come from the fast mode without zoom or instances."
            )
        grid = () if confidences is None else (len(confidences),)
        sums = ImageSum(grid, num_names, height, width, device, found is not None)
        held = self._held if self._held is not None and self._held.key == image_digest(view) else None

        def read(window: Window) -> Tensor:
            return view[:, window.y1 : window.y2, window.x1 : window.x2]

        done, total = 0, len(windows)

        def progress(count: int) -> None:
            nonlocal done
            done += count
            if on_view is not None:
                on_view(done, total)

        options = {"held": held, "instances": found is not None, "on_batch": progress}
        skip = self.can_skip(windows, height, width)
        run_windows(self.engine, windows, read, sums.add, skip=skip, confidences=confidences, **options)
        zoom = s.parsed_zoom
        if zoom is not None:  # second pass: the least certain regions as extra views
            first = names_to_classes(sums.mean(), self.vocabulary.name_class, len(self.vocabulary))
            regions = choose_regions(first, zoom)
            total += len(regions)
            run_windows(self.engine, regions, read, sums.add, **options)
        if found is not None:
            found.extend(sums.found)
        return sums.mean(), sums.presence

    def can_skip(self, windows: list[Window], height: int, width: int) -> bool:
        """Whether the provable skip applies to ``windows`` of a ``height x width`` image.

        It does when asked for, with presence gating and every class threshold ``> 0``
        (a name is skipped when its presence is below the lowest one), without zoom,
        and when the windows tile the image without overlap.
        """
        s = self.settings
        if not (s.skip_absent and s.use_presence and s.lowest_prob_thd > 0) or s.parsed_zoom is not None:
            return False
        return tiles_without_overlap(windows, height, width)


def _spec(pipeline: RefinePipeline) -> str:
    """Canonical spec; plain callables are named ``custom.<qualified name>``."""
    parts = []
    for refiner in pipeline.refiners:
        if isinstance(refiner, Refiner):
            parts.append(refiner.spec())
        else:
            parts.append(CUSTOM_REFINER + getattr(refiner, "__qualname__", type(refiner).__qualname__))
    return "+".join(parts)
