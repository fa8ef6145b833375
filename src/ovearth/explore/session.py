"""The explorer's one model, the lock that shares it, and the caches that make a second try cheap.

A run goes: image -> per-name scores -> class scores -> labels (SegEarth-OV3's rules,
:func:`~ovearth.segment.fusion.finish`). What is cached, and so what a change costs:

* the working picture, per file and modification time (:mod:`.picture`);
* the picture's backbone features (a :class:`HeldImage`, one per picture, prompt form
  and precision: what the backbone's output depends on), passed to
  :func:`~ovearth.segment.accumulate.run_windows` with each view's window as its key, so a refiner, a
  term or ``confidence_threshold`` changed does not run the backbone again;
* the ``[H, W]`` scores and the presence of every prompt name, per picture and *model
  settings* (every setting except the label-only ``prob_thd``, ``class_prob_thd`` and
  ``bg_idx``): a name is independent of the other names (its own prompt), so a new class
  list runs only its new names (their text, fusion, decoder and mask decoder), and
  toggling a class or changing a threshold runs no model at all;
* the decoder attention of a class, per picture, model settings and prompt.

Per-name scores average the views as :meth:`Segmentor.name_logits` does (sliding windows;
the explorer offers no zoom and no skip). The result equals :meth:`Segmentor.predict` on
the same picture (tested).

Memory: before a run decodes its picture or touches the model, its bytes are estimated
from the request (:mod:`.budget`) and reserved from the run budget (``--run-memory-gb``):
a run over it is refused (:class:`~.budget.OverBudget`, HTTP 413), and runs that do not
fit beside the ones in progress wait. What outlives a run is kept in caches bounded by
the cache budget (``--cache-memory-gb``): held backbone features :data:`HELD_SHARE` of
it, per-name maps :data:`NAMES_SHARE` and results :data:`RESULTS_SHARE`, by their bytes
(least recently used dropped first; a value larger than its share is not kept); pictures
(at most 2048 pixels a side) and attention maps (a few ``g^2`` vectors) by count. The
latest result is kept besides, whatever its size (the page reads its pictures next; it
was made within the run budget).

The model runs under one lock: a request that needs it while another uses it waits its
turn. The lock covers the model's calls, summing each view's maps, and handing the
per-name maps to the cache (so a request waiting for the same names finds them); decoding
pictures, digests, the labels, results and pictures for the page run outside it.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from itertools import count
from pathlib import Path

import torch
from torch import Tensor

from ..data.raster import ImageHeader
from ..errors import InputError
from ..model.load import LoadedModel
from ..model.preprocess import to_chw_uint8
from ..probe.attention_report import attention_tensors
from ..segment.accumulate import ImageSum, run_windows
from ..segment.fusion import finish, names_to_classes
from ..segment.segmentor import Segmentor
from ..segment.settings import ACCELERATOR_PROMPT_BATCH, SegmentSettings
from ..segment.views import HeldImage, image_digest
from ..segment.windows import Window, views_for
from .budget import (
    CACHE_MEMORY_BYTES,
    RUN_MEMORY_BYTES,
    MemoryBudget,
    ModelDims,
    RunPlan,
    attention_bytes,
    count_views,
    picture_bytes,
    run_bytes,
)
from .cache import LruCache
from .catalog import ImageCatalog, NotFound
from .picture import Picture, decode_bytes, load_picture, picture_header, working_size
from .request import RunRequest
from .results import ATTENTION_KINDS, AttentionMaps, Result, held_bytes, result_bytes

logger = logging.getLogger(__name__)

#: Shares of the cache budget: held backbone features, per-name maps, results.
HELD_SHARE, NAMES_SHARE, RESULTS_SHARE = 0.5, 0.375, 0.125

#: Pictures and attention maps kept (counts: each is small, see the module docstring).
PICTURES_KEPT, ATTENTION_KEPT = 4, 32

#: Views listed to find those already held (beyond this, every view counts as new).
MAX_VIEWS_LISTED = 4096


class ExploreSession:
    """One model shared by every request, with the caches and budgets of the module docstring.

    Args:
        loaded: the model (already on its device).
        catalog: the images that may be read.
        base: run options of the command line (precision, batches); the page sets the rest.
        bands: GeoTIFF bands for R, G, B (None: ``segment``'s default rule).
        stretch: 8-bit scaling of non-uint8 rasters (``segment``'s rule).
        run_memory: the run budget in bytes.
        cache_memory: the cache budget in bytes.
        allowed_models: refiner model values the page may name besides each refiner's
            default (see :mod:`.request`).

    """

    def __init__(
        self,
        loaded: LoadedModel,
        catalog: ImageCatalog,
        base: SegmentSettings | None = None,
        bands: tuple[int, int, int] | None = None,
        stretch: str = "percentile",
        run_memory: int = RUN_MEMORY_BYTES,
        cache_memory: int = CACHE_MEMORY_BYTES,
        allowed_models: tuple[str, ...] = (),
    ) -> None:
        self.loaded = loaded
        self.catalog = catalog
        self.base = base or SegmentSettings()
        self.bands = bands
        self.stretch = stretch
        self.allowed_models = tuple(allowed_models)
        #: the model's dimensions, for the memory estimates
        self.dims = ModelDims.of(loaded.model.config)
        #: what runs in progress hold (each reserves its estimate first)
        self.budget = MemoryBudget(run_memory)
        #: held while the model runs: one request at a time uses it, the others wait
        self.model_lock = threading.Lock()
        #: how many times the model ran (per-name stages or attention), for tests and the page
        self.model_runs = 0
        self._pictures: LruCache[Picture] = LruCache(PICTURES_KEPT)
        self._held: LruCache[HeldImage] = LruCache(int(cache_memory * HELD_SHARE), held_bytes)
        self._names: LruCache[tuple[Tensor, Tensor]] = LruCache(
            int(cache_memory * NAMES_SHARE), lambda item: item[0].numel() * item[0].element_size()
        )
        self._results: LruCache[Result] = LruCache(int(cache_memory * RESULTS_SHARE), result_bytes)
        self._attention: LruCache[AttentionMaps] = LruCache(ATTENTION_KEPT)
        self._latest: Result | None = None
        self._ids = count(1)

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return next(self.loaded.model.parameters()).device

    def picture(self, image_id: str) -> Picture:
        """The working picture of a catalog image (read once per modification).

        Raises:
            NotFound: an id the catalog does not know.
            InputError: an unreadable image.
            OverBudget: decoding it would exceed the run budget.

        """
        path, key = self._locate(image_id)
        picture = self._pictures.get(key)
        if picture is not None:
            return picture
        header = picture_header(path, self.bands)
        height, width, _ = working_size(header.height, header.width)
        needed = picture_bytes(decode_bytes(header), height, width)
        what = f"Opening this {header.width} x {header.height} picture"
        with self.budget.reserve(needed, what, instead="use a smaller picture"):
            return self._load(path, key, header)

    def run(self, request: RunRequest) -> Result:
        """Segment the request's image with its enabled classes, reusing every cached stage.

        The run's memory is estimated and reserved first (see the module docstring).

        Raises:
            NotFound: an unknown image id.
            InputError: an unreadable image, a bad refiner or threshold.
            OverBudget: the run's estimate exceeds the run budget (nothing was done).

        """
        start = time.perf_counter()
        path, key = self._locate(request.image)
        picture = self._pictures.get(key)
        header = None if picture is not None else picture_header(path, self.bands)
        plan, found, held = self._plan(request, picture, header)
        with self.budget.reserve(run_bytes(self.dims, plan), plan.describe()):
            if picture is None:
                picture = self._load(path, key, header)
                found = self._cached(picture, request, request.vocabulary.names)
            return self._run(request, picture, found, held, plan.prompt_batch, start)

    def _run(
        self,
        request: RunRequest,
        picture: Picture,
        found: dict[str, tuple],
        held: HeldImage | None,
        prompt_batch: int,
        start: float,
    ) -> Result:
        """:meth:`run` once its memory is reserved and its picture decoded."""
        vocabulary, settings = request.vocabulary, request.settings
        thresholds = settings.class_thresholds(vocabulary.labels)
        names = vocabulary.names
        height, width = picture.valid.shape
        computed: tuple[str, ...] = ()
        if picture.valid.any():
            missing = [name for name in names if name not in found]
            if missing:
                if held is None:
                    held = self._held_for(picture, request.model_settings)
                view = to_chw_uint8(picture.rgb)
                with self.model_lock:  # a second request waits here for the first one
                    found |= self._cached(picture, request, missing)
                    missing = [name for name in names if name not in found]
                    if missing:
                        found |= self._compute(picture, view, request, missing, held, prompt_batch)
                        computed = tuple(missing)
                self._held.put(self._held_key(picture, request.model_settings), held)  # its new size
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
        self._latest = result  # kept even when larger than the results' share: the page reads it next
        return result

    def plan(self, request: RunRequest) -> RunPlan:
        """What :meth:`run` would do for ``request`` now (for its memory estimate; nothing is run).

        Raises:
            NotFound: an unknown image id.
            InputError: an unreadable image header.

        """
        path, key = self._locate(request.image)
        picture = self._pictures.get(key)
        header = None if picture is not None else picture_header(path, self.bands)
        return self._plan(request, picture, header)[0]

    def _plan(
        self, request: RunRequest, picture: Picture | None, header: ImageHeader | None
    ) -> tuple[RunPlan, dict[str, tuple], HeldImage | None]:
        """The run's plan, the cached names it will use (kept alive) and the held features.

        Without a decoded picture (``header`` given), nothing is known to be cached: every
        name and view counts as computed.
        """
        settings, vocabulary = request.model_settings, request.vocabulary
        names = vocabulary.names
        found: dict[str, tuple] = {}
        held = None
        if picture is not None:
            height, width = picture.valid.shape
            found = self._cached(picture, request, names)
            held = self._held.get(self._held_key(picture, settings))
            runs_model = bool(picture.valid.any())
            picture_bytes = 0
        else:
            height, width, _ = working_size(header.height, header.width)
            runs_model = True
            picture_bytes = decode_bytes(header)
        computed = sum(name not in found for name in names) if runs_model else 0
        views, view_pixels = count_views(height, width, settings.slide_crop, settings.slide_stride)
        if computed == 0:
            views = 0
        elif held is not None and views <= MAX_VIEWS_LISTED:
            windows = views_for(height, width, settings.slide_crop, settings.slide_stride)
            views = sum((w.y1, w.y2, w.x1, w.x2) not in held.views for w in windows)
        accelerator = self.device.type != "cpu"
        batch = settings.prompt_batch or (ACCELERATOR_PROMPT_BATCH if accelerator else 1)
        plan = RunPlan(
            height=height,
            width=width,
            view_pixels=view_pixels,
            views=views,
            names=len(names),
            computed=computed,
            classes=len(vocabulary),
            prompt_batch=max(1, min(batch, computed)),
            view_batch=1,  # the explorer sends its views one at a time
            batched_instances=accelerator,
            picture_bytes=picture_bytes,
        )
        while plan.prompt_batch > 1 and run_bytes(self.dims, plan) > self.budget.limit:
            plan = dataclasses.replace(plan, prompt_batch=plan.prompt_batch // 2)  # same results, less memory
        return plan, found, held

    def result(self, result_id: str) -> Result:
        """A kept result.

        Raises:
            NotFound: an unknown (or no longer kept) result.

        """
        result = self._results.get(result_id)
        if result is None and self._latest is not None and self._latest.id == result_id:
            result = self._latest
        if result is None:
            raise NotFound(f"No result '{result_id[:40]}' (it is not kept any more: run again).")
        return result

    def attention(self, result: Result, k: int) -> AttentionMaps:
        """Decoder attention of class ``k``'s first name on the result's picture (cached).

        The model is probed as it is, on the whole picture as one view, without the
        refiner (as ``ovearth attention`` does).

        Raises:
            InputError: ``k`` is not an enabled class index.
            OverBudget: its estimate exceeds the run budget.

        """
        vocabulary = result.request.vocabulary
        if not 0 <= k < len(vocabulary):
            raise InputError(f"Class {k} is not one of the {len(vocabulary)} classes of this result.")
        prompt = vocabulary.classes[k][0]
        key = (result.picture.key, result.request.model_key, prompt)
        maps = self._attention.get(key)
        if maps is not None:
            return maps
        height, width = result.labels.shape
        needed = attention_bytes(self.dims, height, width)
        with self.budget.reserve(needed, f"The attention of '{prompt[:40]}' on this picture", instead=""):
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

    def _locate(self, image_id: str) -> tuple[Path, tuple]:
        """The file of a catalog image and its picture-cache key (file, modification, size, reading).

        Raises:
            NotFound: an id the catalog does not know, or a file gone since.

        """
        path = self.catalog.path(image_id)
        try:
            stat = path.stat()
        except OSError:
            raise NotFound(f"No image '{image_id}' here; pick one from the list.") from None
        return path, (str(path), stat.st_mtime_ns, stat.st_size, self.bands, self.stretch)

    def _load(self, path: Path, key: tuple, header: ImageHeader | None) -> Picture:
        """Decode a picture (its memory is reserved by the caller) and keep it."""
        picture = self._pictures.get(key)
        if picture is None:
            picture = load_picture(path, self.bands, self.stretch, header=header)
            self._pictures.put(key, picture)
        return picture

    def _cached(self, picture: Picture, request: RunRequest, names: list[str]) -> dict[str, tuple]:
        """The names whose scores are cached for this picture and model settings."""
        found = {}
        for name in names:
            item = self._names.get((picture.key, request.model_key, name))
            if item is not None:
                found[name] = item
        return found

    @staticmethod
    def _held_key(picture: Picture, settings: SegmentSettings) -> tuple:
        """What the backbone's output depends on: the picture, the prompt form and the precision."""
        return (picture.key, settings.prompt_form, settings.precision, settings.compile)

    def _held_for(self, picture: Picture, settings: SegmentSettings) -> HeldImage:
        """The backbone features kept for ``picture`` under ``settings``' prompt form and precision."""
        key = self._held_key(picture, settings)
        held = self._held.get(key)
        if held is None:
            held = HeldImage(key=image_digest(to_chw_uint8(picture.rgb)))
            self._held.put(key, held)
        return held

    def _compute(
        self,
        picture: Picture,
        view: Tensor,
        request: RunRequest,
        names: list[str],
        held: HeldImage,
        prompt_batch: int,
    ) -> dict[str, tuple]:
        """Run the per-name stages of ``names`` (the model lock is held) and cache them.

        The views' logits are averaged as :meth:`Segmentor.name_logits` averages them,
        each view's backbone features taken from (or added to) ``held``; ``prompt_batch``
        names at a time (the plan's, which fits the budget; results do not depend on it).
        Each name's map is its own CPU tensor, so dropping it from the cache frees it.
        """
        logger.info("%s: running %d name(s): %s", Path(picture.path).name, len(names), ", ".join(names))
        # one view at a time: the run's memory budget counts one view's working memory
        settings = request.model_settings.replace(prompt_batch=prompt_batch, view_batch=1)
        segmentor = Segmentor(self.loaded, [[name] for name in names], settings=settings)
        view = view.to(segmentor.stages.device)
        height, width = view.shape[-2:]
        windows = views_for(height, width, settings.slide_crop, settings.slide_stride)

        def read(window: Window) -> Tensor:
            return view[:, window.y1 : window.y2, window.x1 : window.x2]

        with torch.inference_mode():
            sums = ImageSum((), len(names), height, width, view.device, found=False)
            run_windows(segmentor.engine, windows, read, sums.add, held=held)
            total, presence = sums.mean(), sums.presence
        self.model_runs += 1
        out = {}
        for i, name in enumerate(names):
            item = (total[i].to("cpu", copy=True), presence[i].to("cpu", copy=True))
            self._names.put((picture.key, request.model_key, name), item)
            out[name] = item
        return out
