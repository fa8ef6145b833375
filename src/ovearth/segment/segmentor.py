"""The public ``Segmentor``: an image in, SegEarth-OV3 labels out.

```python
from ovearth import Segmentor, load_model
seg = Segmentor(load_model("facebook/sam3"), "building,roof;road;tree", prob_thd=0.1)
pred = seg.predict(rgb)            # rgb: [H, W, 3] uint8 numpy array
pred.labels, pred.class_logits, pred.presence
```

The ``fast`` mode runs the backbone once per view, encodes every prompt name once per
``Segmentor`` (cached), runs fusion encoder, decoder and mask decoder for all names of a
view in batches of ``prompt_batch``, and computes instance masks only for kept queries.
The ``reference`` mode runs :func:`reference_view_logits`. Both share preprocessing,
window placement and the fusion rules, and agree to 1e-5 in float32 (tested).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..model.load import LoadedModel, load_model
from ..model.precision import precision_region
from ..model.preprocess import preprocess, to_chw_uint8
from ..model.stages import Sam3Stages, TextFeatures, VisionFeatures
from ..model.tokenizer import tokenize
from ..refine import RefineContext, RefinePipeline, Refiner, as_grid, as_tokens
from ..refine.first_pass import first_pass
from .fusion import (
    finish,
    instance_max,
    instance_max_batched,
    kept_padded,
    names_to_classes,
    resize,
    semantic_probs,
)
from .instances import Instance, deduplicate, restricted, shifted, view_instances
from .reference import reference_view_logits
from .settings import ACCELERATOR_PROMPT_BATCH, ACCELERATOR_VIEW_BATCH, CUSTOM_REFINER, SegmentSettings
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
        self.settings = (settings or SegmentSettings()).replace(**overrides)
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
        #: instance masks of all prompts of a batch at once, padded to the largest kept count
        #: (no per-prompt host syncs; accelerators). On CPU the per-prompt loop computes
        #: no padding, which measured faster.
        self.batched_instances = self.stages.device.type != "cpu"
        self._text: TextFeatures | None = None
        self._held: HeldImage | None = None

    @property
    def prompt_batch(self) -> int:
        """Prompts per batch: the setting, else 1 on CPU and a larger batch on accelerators."""
        if self.settings.prompt_batch is not None:
            return self.settings.prompt_batch
        return 1 if self.stages.device.type == "cpu" else ACCELERATOR_PROMPT_BATCH

    @property
    def view_batch(self) -> int:
        """Views per backbone batch: the setting, else 1 on CPU and a larger batch on accelerators."""
        if self.settings.view_batch is not None:
            return self.settings.view_batch
        return 1 if self.stages.device.type == "cpu" else ACCELERATOR_VIEW_BATCH

    @property
    def text_features(self) -> TextFeatures:
        """Projected text features of every prompt name, encoded once (under :meth:`autocast`) and cached."""
        if self._text is None:
            tokens = tokenize(self.loaded.tokenizer, self.vocabulary.names)
            device = self.stages.device
            with torch.inference_mode(), self.autocast():
                self._text = self.stages.encode_text(
                    tokens.input_ids.to(device), tokens.attention_mask.to(device)
                )
        return self._text

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
        """The precision region (:func:`~ovearth.model.precision.precision_region`).

        ``"float32"``: strict float32 (no TF32 on CUDA). ``"bfloat16"``: autocast over what
        SegEarth-OV3's ``torch.autocast("cuda", bfloat16)`` covers: backbone, text encoder,
        geometry encoder, fusion encoder, decoder, mask decoder, and the resize, sigmoid and
        score product of masks and semantic maps, which stay in the model's output dtype; the
        per-name maps accumulate in float32.
        """
        return precision_region(self.stages.device, self.settings.precision)

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
        self, image: np.ndarray | Tensor, valid: np.ndarray | None = None, instances: bool = False
    ) -> Prediction:
        """Segment one image.

        Args:
            image: ``[H, W, 3]`` uint8 RGB array (or a ``[3, H, W]`` uint8 tensor).
            valid: optional ``[H, W]`` bool mask, False on nodata pixels; they get label
                255. An image without any valid pixel is not run through the model.
            instances: also return SAM 3's kept objects (``Prediction.instances``); labels
                and scores are the same either way.

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
            name_logits, name_presence = self.name_logits(view, found)
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
        self, view: Tensor, found: list[Instance] | None = None, confidences: Sequence[float] | None = None
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
        total = torch.zeros(*grid, num_names, height, width, device=device)
        count = torch.zeros(height, width, device=device)
        presence = torch.zeros(num_names, device=device)
        zoom = s.parsed_zoom
        skip = self.can_skip(windows, height, width)
        held = self._held if self._held is not None and self._held.key == image_digest(view) else None
        self._add_views(view, windows, total, count, presence, skip, held, found, confidences)
        if zoom is not None:  # second pass: the least certain regions as extra views
            first = names_to_classes(total / count, self.vocabulary.name_class, len(self.vocabulary))
            self._add_views(view, choose_regions(first, zoom), total, count, presence, held=held, found=found)
        return total / count, presence

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

    def _add_views(
        self,
        view: Tensor,
        windows: list[Window],
        total: Tensor,
        count: Tensor,
        presence: Tensor,
        skip: bool = False,
        held: HeldImage | None = None,
        found: list[Instance] | None = None,
        confidences: Sequence[float] | None = None,
    ) -> None:
        """Accumulate the per-name logits of ``windows`` into ``total`` / ``count`` (in place)."""
        for start in range(0, len(windows), self.view_batch):
            batch = windows[start : start + self.view_batch]
            crops = [view[:, w.y1 : w.y2, w.x1 : w.x2] for w in batch]
            keys = None if held is None else [(w.y1, w.y2, w.x1, w.x2) for w in batch]
            sinks = None if found is None else [[] for _ in batch]
            results = self.crop_logits(crops, skip, keys, held, sinks, confidences)
            for i, (window, (logits, pres)) in enumerate(zip(batch, results, strict=True)):
                total[..., window.y1 : window.y2, window.x1 : window.x2] += logits
                count[window.y1 : window.y2, window.x1 : window.x2] += 1
                torch.maximum(presence, pres, out=presence)
                if sinks is not None:
                    found.extend(shifted(one, window.y1, window.x1) for one in sinks[i])

    @torch.inference_mode()
    def crop_logits(
        self,
        crops: list[Tensor],
        skip: bool = False,
        keys: list[tuple] | None = None,
        held: HeldImage | None = None,
        sinks: list[list[Instance]] | None = None,
        confidences: Sequence[float] | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Per-name logits of views run through the backbone together (no averaging).

        Args:
            crops: ``V`` views, each ``[3, h, w]`` uint8 (sizes may differ).
            skip: apply the provable skip (see :class:`SegmentSettings`); only valid
                when no pixel is covered by two views.
            keys: with ``held``, one key per crop (its window): features found in
                ``held`` are reused, the others computed and added (fast mode).
            held: the features kept by :meth:`set_image`.
            sinks: one list per crop; each view's instances (view coordinates) are added.
            confidences: see :meth:`name_logits` (fast mode only).

        Returns:
            Per view ``([P, h, w] logits, [P] presence)`` (``[G, P, h, w]`` with ``confidences``).

        """
        size = self.stages.image_size
        dtype = self.stages.dtype
        device = self.stages.device
        crops = [crop.to(device) for crop in crops]
        sinks = sinks if sinks is not None else [None] * len(crops)
        with self.autocast():
            if self.settings.mode == "reference":
                names = self.vocabulary.names
                return [
                    reference_view_logits(
                        self.loaded,
                        preprocess(crop, size, dtype)[None],
                        crop,
                        names,
                        self.settings,
                        self.pipeline,
                        sink,
                        self.vocabulary.name_class,
                    )
                    for crop, sink in zip(crops, sinks, strict=True)
                ]
            use_held = held is not None and keys is not None
            todo = [i for i in range(len(crops)) if not (use_held and keys[i] in held.views)]
            computed: dict[int, VisionFeatures] = {}
            if todo:
                vision = self.stages.encode_images(
                    torch.stack([preprocess(crops[i], size, dtype) for i in todo])
                )
                computed = {i: vision.view(j) for j, i in enumerate(todo)}
                if use_held:
                    held.views.update({keys[i]: features for i, features in computed.items()})
            views = [computed[i] if i in computed else held.views[keys[i]] for i in range(len(crops))]
            return [
                self._view_logits_fast(v, crop, skip, sink, confidences)
                for v, crop, sink in zip(views, crops, sinks, strict=True)
            ]

    def _view_logits_fast(
        self,
        vision: VisionFeatures,
        crop: Tensor,
        skip: bool = False,
        sink: list[Instance] | None = None,
        confidences: Sequence[float] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """All names of one view, in prompt batches: ``([P, h, w], [P])``.

        With ``confidences`` (``G`` values), the logits for each of them as the confidence
        threshold: ``([G, P, h, w], [P])``, from one run of the decoders; each map equals the
        one a segmentor with that ``confidence_threshold`` computes (same calls).
        """
        s = self.settings
        stages = self.stages
        size = (int(crop.shape[-2]), int(crop.shape[-1]))
        names = self.vocabulary.names
        grid = (s.confidence_threshold,) if confidences is None else tuple(confidences)
        cache: dict = {}  # per-view scratch space shared by the refiners
        if self.pipeline and s.refine_at == "backbone":
            vision = refine_backbone(stages, vision, self.pipeline, RefineContext(view=crop, cache=cache))
        text = self.text_features
        shared = stages.first_self_attention(vision)  # the prompt-free first block, once per view
        num_names = text.features.shape[0]
        batch = self.prompt_batch
        logits = torch.zeros(len(grid), num_names, *size, device=stages.device)
        presence_all = torch.zeros(num_names, device=stages.device)
        for start in range(0, num_names, batch):
            chunk = slice(start, min(start + batch, num_names))
            fused = stages.fuse(vision, text.select(chunk), shared)
            for_decoder = for_mask = fused.tokens
            if self.pipeline and s.refine_at == "fusion":
                context = RefineContext(prompts=names[chunk], view=crop, cache=cache)
                if self.pipeline.first_pass:
                    first_pass(stages.model, self.pipeline, context, lambda fused=fused: stages.decode(fused))
                refined = self.pipeline(fused.tokens, fused.grid, context)
                for_decoder = refined if s.refine_for in ("both", "decoder") else fused.tokens
                for_mask = refined if s.refine_for in ("both", "mask") else fused.tokens
            decoded = stages.decode(fused, for_decoder)
            scores, presence = decoded.scores()
            presence_all[chunk] = presence
            # prompts whose mask decoder can matter (all, unless a provable skip applies)
            rows = (
                (presence >= s.lowest_prob_thd).nonzero()[:, 0]
                if skip
                else torch.arange(len(presence), device=presence.device)
            )
            keeps = [self._kept(scores, presence, c, skip) for c in grid]
            if len(rows) == 0 or not (s.use_semantic or any(keep.any() for keep in keeps)):
                continue
            every = len(rows) == len(presence)
            pixel_embed = stages.pixel_embed(
                vision, fused if every else fused.select(rows), for_mask if every else for_mask[rows]
            )
            semantic = semantic_probs(stages.semantic_logits(pixel_embed), size) if s.use_semantic else None
            for g, keep in enumerate(keeps):
                term = torch.zeros(len(presence), *size, device=stages.device)
                self._instance_term(term, pixel_embed, decoded, scores, keep, rows, start, size, sink)
                if semantic is not None:
                    term[rows] = torch.maximum(term[rows], semantic)
                if s.use_presence:
                    term = term * presence[:, None, None].float()
                logits[g, chunk] = term
        return (logits[0] if confidences is None else logits), presence_all

    def _kept(self, scores: Tensor, presence: Tensor, confidence: float, skip: bool) -> Tensor:
        """``[B, Q]`` bool: the queries kept at ``confidence`` (none without the instance term)."""
        s = self.settings
        keep = scores > confidence if s.use_instances else torch.zeros_like(scores, dtype=bool)
        if skip:
            keep[presence < s.lowest_prob_thd] = False
        return keep

    def _instance_term(
        self,
        term: Tensor,
        pixel_embed: Tensor,
        decoded: Any,
        scores: Tensor,
        keep: Tensor,
        rows: Tensor,
        start: int,
        size: tuple[int, int],
        sink: list[Instance] | None,
    ) -> None:
        """Write the instance term of the ``keep`` queries of each prompt into ``term [B, h, w]``."""
        stages = self.stages
        kept_any = keep.any(dim=1).tolist()
        if not any(kept_any):
            return
        if self.batched_instances:  # padded to the largest count: few syncs
            index, weight = kept_padded(scores[rows], keep[rows])
            selected = decoded.queries[rows]
            queries = selected.gather(1, index[..., None].expand(-1, -1, selected.shape[-1]))
            masks = stages.instance_logits(pixel_embed, queries)
            term[rows] = instance_max_batched(masks, weight, size)
            if sink is not None:
                for j, b in enumerate(rows.tolist()):
                    n = int((weight[j] > 0).sum())
                    sink.extend(self._instances(resize(masks[j, :n], size), weight[j, :n], start + b))
            return
        for j, b in enumerate(rows.tolist()):  # a loop over prompts, not instances
            if kept_any[b]:
                masks = stages.instance_logits(pixel_embed[j], decoded.queries[b][keep[b]])
                term[b] = instance_max(masks, scores[b][keep[b]], size)
                if sink is not None:
                    sink.extend(self._instances(resize(masks, size), scores[b][keep[b]], start + b))

    def _instances(self, mask_logits: Tensor, scores: Tensor, name_index: int) -> list[Instance]:
        """Instances of name ``name_index`` in a view from its kept masks ``[K, h, w]`` and scores."""
        vocabulary = self.vocabulary
        return view_instances(
            mask_logits, scores, None, vocabulary.name_class[name_index], vocabulary.names[name_index]
        )


@dataclass
class HeldImage:
    """Features kept for one image by :meth:`Segmentor.set_image`.

    Attributes:
        key: :func:`image_digest` of the image.
        views: window ``(y1, y2, x1, x2)`` -> that view's :class:`VisionFeatures`.

    """

    key: str
    views: dict[tuple, VisionFeatures] = field(default_factory=dict)


def image_digest(view: Tensor) -> str:
    """BLAKE2b of a ``[3, H, W]`` uint8 image's shape and bytes."""
    data = view.detach().cpu().contiguous().numpy()
    return hashlib.blake2b(repr(data.shape).encode() + data.tobytes(), digest_size=16).hexdigest()


def refine_backbone(
    stages: Sam3Stages, vision: VisionFeatures, pipeline: RefinePipeline, context: RefineContext
) -> VisionFeatures:
    """Refine the coarsest backbone level ``[V, C, h, w]``.

    Its readers (the fusion encoder and, in Meta's prompt form, the geometry encoder)
    all see the refined tokens.
    """
    level = vision.levels[-1]
    refined = as_grid(pipeline(as_tokens(level), tuple(level.shape[-2:]), context), tuple(level.shape[-2:]))
    return stages.with_coarsest(vision, refined)


def _spec(pipeline: RefinePipeline) -> str:
    """Canonical spec; plain callables are named ``custom.<qualified name>``."""
    parts = []
    for refiner in pipeline.refiners:
        if isinstance(refiner, Refiner):
            parts.append(refiner.spec())
        else:
            parts.append(CUSTOM_REFINER + getattr(refiner, "__qualname__", type(refiner).__qualname__))
    return "+".join(parts)
