"""The explorer's one model, the lock that shares it, and the caches that make a second try cheap.

A run goes: image -> per-name scores -> class scores -> labels (SegEarth-OV3's rules,
:func:`~ovearth.segment.fusion.finish`). What is cached, and so what a change costs:

* the working picture, per file and modification time (:mod:`.picture`);
* the picture's backbone features (a :class:`HeldImage`, one per picture, prompt form
  and precision: what the backbone's output depends on), passed to
  :meth:`Segmentor.crop_logits` with each view's window as its key, so a refiner, a
  term or ``confidence_threshold`` changed does not run the backbone again;
* the ``[H, W]`` scores and the presence of every prompt name, per picture and *model
  settings* (every setting except the label-only ``prob_thd``, ``class_prob_thd`` and
  ``bg_idx``): a name is independent of the other names (its own prompt), so a new class
  list runs only its new names (their text, fusion, decoder and mask decoder), and
  toggling a class or changing a threshold runs no model at all;
* the decoder attention of a class, per picture, model settings and prompt.

Per-name scores average the views as :meth:`Segmentor.name_logits` does (sliding windows;
the explorer offers no zoom and no skip). The model runs under one lock: a request that
needs it while another uses it waits its turn. The result equals
:meth:`Segmentor.predict` on the same picture (tested).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..constants import NODATA_LABEL, UNCLASSIFIED_LABEL
from ..errors import InputError
from ..model.load import LoadedModel
from ..model.preprocess import to_chw_uint8
from ..probe.attention_report import attention_tensors
from ..segment.fusion import finish, names_to_classes
from ..segment.segmentor import HeldImage, Segmentor, image_digest
from ..segment.settings import SegmentSettings
from ..segment.windows import views_for
from ..viz import palette
from .cache import LruCache
from .catalog import ImageCatalog, NotFound
from .picture import Picture, load_picture
from .request import RunRequest

logger = logging.getLogger(__name__)

#: Bytes of per-name score maps kept (least recently used dropped first).
NAME_CACHE_BYTES = 2 * 2**30

#: Pictures, held backbone features (about 0.2 GB per 1008 view), results and attention maps kept.
PICTURES_KEPT, HELD_KEPT, RESULTS_KEPT, ATTENTION_KEPT = 4, 4, 16, 32

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


class ExploreSession:
    """One model shared by every request, with the caches of the module docstring.

    Args:
        loaded: the model (already on its device).
        catalog: the images that may be read.
        base: run options of the command line (precision, batches); the page sets the rest.
        bands: GeoTIFF bands for R, G, B (None: ``segment``'s default rule).
        stretch: 8-bit scaling of non-uint8 rasters (``segment``'s rule).
        name_cache_bytes: budget of the per-name score cache.

    """

    def __init__(
        self,
        loaded: LoadedModel,
        catalog: ImageCatalog,
        base: SegmentSettings | None = None,
        bands: tuple[int, int, int] | None = None,
        stretch: str = "percentile",
        name_cache_bytes: int = NAME_CACHE_BYTES,
    ) -> None:
        self.loaded = loaded
        self.catalog = catalog
        self.base = base or SegmentSettings()
        self.bands = bands
        self.stretch = stretch
        #: held while the model runs: one request at a time uses it, the others wait
        self.model_lock = threading.Lock()
        #: how many times the model ran (per-name stages or attention), for tests and the page
        self.model_runs = 0
        self._pictures: LruCache[Picture] = LruCache(PICTURES_KEPT)
        self._held: LruCache[HeldImage] = LruCache(HELD_KEPT)
        self._names: LruCache[tuple[Tensor, Tensor]] = LruCache(
            name_cache_bytes, lambda item: item[0].numel() * item[0].element_size()
        )
        self._results: LruCache[Result] = LruCache(RESULTS_KEPT)
        self._attention: LruCache[AttentionMaps] = LruCache(ATTENTION_KEPT)
        self._ids = count(1)

    def picture(self, image_id: str) -> Picture:
        """The working picture of a catalog image (read once per modification).

        Raises:
            NotFound: an id the catalog does not know.
            InputError: an unreadable image.

        """
        path = self.catalog.path(image_id)
        try:
            stat = path.stat()
        except OSError:
            raise NotFound(f"No image '{image_id}' here; pick one from the list.") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size, self.bands, self.stretch)
        picture = self._pictures.get(key)
        if picture is None:
            picture = load_picture(path, self.bands, self.stretch)
            self._pictures.put(key, picture)
        return picture

    def run(self, request: RunRequest) -> Result:
        """Segment the request's image with its enabled classes, reusing every cached stage.

        Raises:
            NotFound: an unknown image id.
            InputError: an unreadable image, a bad refiner or threshold.

        """
        start = time.perf_counter()
        picture = self.picture(request.image)
        vocabulary, settings = request.vocabulary, request.settings
        thresholds = settings.class_thresholds(vocabulary.labels)
        names = vocabulary.names
        height, width = picture.valid.shape
        computed: tuple[str, ...] = ()
        if picture.valid.any():
            found = self._cached(picture, request, names)
            missing = [name for name in names if name not in found]
            if missing:
                with self.model_lock:  # a second request waits here for the first one
                    found = self._cached(picture, request, names)
                    missing = [name for name in names if name not in found]
                    if missing:
                        found |= self._compute(picture, request, missing)
                        computed = tuple(missing)
            name_logits = torch.stack([found[name][0] for name in names])
            name_presence = torch.stack([found[name][1] for name in names])
        else:  # like predict: no valid pixel, no model
            name_logits = torch.zeros(len(names), height, width)
            name_presence = torch.zeros(len(names))
        with torch.inference_mode():
            k = len(vocabulary)
            presence = names_to_classes(name_presence[:, None, None], vocabulary.name_class, k)[:, 0, 0]
            class_logits, labels = finish(
                name_logits, picture.valid, vocabulary.name_class, k, thresholds, settings.low_score_label
            )
        result = Result(
            id=f"{next(self._ids)}-{secrets.token_hex(4)}",
            picture=picture,
            request=request,
            class_logits=class_logits,
            labels=labels,
            presence=presence.float(),
            name_presence=name_presence.float(),
            computed=computed,
            seconds=time.perf_counter() - start,
        )
        self._results.put(result.id, result)
        return result

    def result(self, result_id: str) -> Result:
        """A kept result.

        Raises:
            NotFound: an unknown (or no longer kept) result.

        """
        result = self._results.get(result_id)
        if result is None:
            raise NotFound(f"No result '{result_id}' (results are kept for the last {RESULTS_KEPT} runs).")
        return result

    def pixel(self, result: Result, x: int, y: int) -> dict:
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

    def attention(self, result: Result, k: int) -> AttentionMaps:
        """Decoder attention of class ``k``'s first name on the result's picture (cached).

        The model is probed as it is, on the whole picture as one view, without the
        refiner (as ``ovearth attention`` does).

        Raises:
            InputError: ``k`` is not an enabled class index.

        """
        vocabulary = result.request.vocabulary
        if not 0 <= k < len(vocabulary):
            raise InputError(f"Class {k} is not one of the {len(vocabulary)} classes of this result.")
        prompt = vocabulary.classes[k][0]
        key = (result.picture.key, result.request.model_key, prompt)
        maps = self._attention.get(key)
        if maps is not None:
            return maps
        with self.model_lock:
            segmentor = Segmentor(self.loaded, [[prompt]], settings=result.request.model_settings)
            arrays = attention_tensors(segmentor, result.picture.rgb)
            self.model_runs += 1
        threshold = result.request.settings.confidence_threshold
        maps = AttentionMaps(
            prompt=prompt,
            weights={kind: arrays[f"weights_{kind}"][0] for kind in ATTENTION_KINDS},
            grid=(int(arrays["grid"][0]), int(arrays["grid"][1])),
            presence=float(arrays["presence"][0]),
            kept=int((arrays["scores"][0] > threshold).sum()),
        )
        self._attention.put(key, maps)
        return maps

    def close(self) -> None:
        """Remove the uploads."""
        self.catalog.close()

    def _cached(self, picture: Picture, request: RunRequest, names: list[str]) -> dict[str, tuple]:
        """The names whose scores are cached for this picture and model settings."""
        found = {}
        for name in names:
            item = self._names.get((picture.key, request.model_key, name))
            if item is not None:
                found[name] = item
        return found

    def _held_for(self, picture: Picture, settings: SegmentSettings) -> HeldImage:
        """The backbone features kept for ``picture`` under ``settings``' prompt form and precision."""
        key = (picture.key, settings.prompt_form, settings.precision, settings.compile)
        held = self._held.get(key)
        if held is None:
            held = HeldImage(key=image_digest(to_chw_uint8(picture.rgb)))
            self._held.put(key, held)
        return held

    def _compute(self, picture: Picture, request: RunRequest, names: list[str]) -> dict[str, tuple]:
        """Run the per-name stages of ``names`` (the model lock is held) and cache them.

        The views' logits are averaged as :meth:`Segmentor.name_logits` averages them,
        each view's backbone features taken from (or added to) the held ones.
        """
        logger.info("%s: running %d name(s): %s", Path(picture.path).name, len(names), ", ".join(names))
        settings = request.model_settings
        segmentor = Segmentor(self.loaded, [[name] for name in names], settings=settings)
        held = self._held_for(picture, settings)
        view = to_chw_uint8(picture.rgb).to(segmentor.stages.device)
        height, width = view.shape[-2:]
        total = torch.zeros(len(names), height, width, device=view.device)
        count = torch.zeros(height, width, device=view.device)
        presence = torch.zeros(len(names), device=view.device)
        with torch.inference_mode():
            for w in views_for(height, width, settings.slide_crop, settings.slide_stride):
                crop = view[:, w.y1 : w.y2, w.x1 : w.x2]
                [(logits, found)] = segmentor.crop_logits([crop], keys=[(w.y1, w.y2, w.x1, w.x2)], held=held)
                total[:, w.y1 : w.y2, w.x1 : w.x2] += logits
                count[w.y1 : w.y2, w.x1 : w.x2] += 1
                torch.maximum(presence, found, out=presence)
            logits = total / count
        self.model_runs += 1
        out = {}
        for i, name in enumerate(names):
            item = (logits[i].float().cpu(), presence[i].float().cpu())
            self._names.put((picture.key, request.model_key, name), item)
            out[name] = item
        return out
