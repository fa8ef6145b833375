"""The training loop of ``ovearth train``: resumable, one view at a time, adapter out.

``train(loaded, dataset, out_dir, settings)``:

1. the training views are the protocol's windows of every image (one view per image
   when the protocol does not slide); step ``i`` takes views ``i * batch ...`` of an
   endless sequence of epochs, each a permutation seeded by ``(seed, epoch)`` - a pure
   function of the step, so a resumed run sees the same views;
2. with ``pseudo_labels`` the frozen model first labels every image
   (:mod:`ovearth.train.pseudo`), else the labels are read and checked;
3. the trainable part is set up (:mod:`ovearth.train.adapter`), AdamW with linear
   warm-up and cosine decay; each view's loss (:class:`~ovearth.train.step.TrainStep`)
   is back-propagated on its own (gradients accumulated over ``batch`` views), the
   gradient norm clipped, then one optimiser step;
4. every ``save_every`` steps and at the end: ``adapter/`` (trainable tensors +
   settings), ``state.pt`` (the same tensors, optimiser, schedule, sampling RNG, loss
   rows: everything a resume needs, in one atomically written file), ``losses.csv``
   and ``losses.png``; at the end ``train.json``.

A run started again with the same ``-o`` folder continues after its last checkpoint
(identical settings, model and images required); the model passed in is left as it
was (LoRA modules removed, parameters restored, frozen) when ``train`` returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.atomic import atomic_path, write_text_atomic
from ..data.datasets import Sample, SegmentationDataset, image_size, read_label
from ..errors import InputError
from ..model.load import LoadedModel
from ..model.preprocess import preprocess, to_chw_uint8
from ..model.stages import Sam3Stages
from ..model.tokenizer import tokenize
from ..segment.settings import SegmentSettings
from ..segment.windows import Window, views_for
from .adapter import prepare_trainable, release_trainable, save_adapter, trainable_tensors
from .pseudo import IGNORE, make_pseudo_labels, pseudo_label_path
from .report import loss_chart, write_losses
from .settings import TrainSettings
from .step import TrainStep

logger = logging.getLogger(__name__)

STATE = "state.pt"
#: ``progress(stage, done, total, row)``: stage ``"pseudo-labels"`` (row None) or ``"train"``.
ProgressFn = Callable[[str, int, int, dict[str, Any] | None], None]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier after ``step`` completed steps.

    ``(step + 1) / warmup`` during warm-up, then ``0.5 (1 + cos(pi t))`` with
    ``t = (step - warmup) / (total - warmup)``.
    """
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def step_views(step: int, batch: int, count: int, seed: int) -> list[int]:
    """Indices (into the ``count`` views) of the views of ``step``: a pure function of its arguments."""
    out = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, offset = divmod(position, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(order[offset]))
    return out


def training_views(samples: list[Sample], settings: SegmentSettings) -> list[tuple[int, Window]]:
    """``(sample index, window)`` of every view of every image, in order (sizes from headers)."""
    views = []
    for index, sample in enumerate(samples):
        height, width = image_size(sample.image_path)
        views += [(index, w) for w in views_for(height, width, settings.slide_crop, settings.slide_stride)]
    return views


def train(
    loaded: LoadedModel,
    dataset: SegmentationDataset,
    out_dir: str | Path,
    settings: TrainSettings,
    segment: SegmentSettings | None = None,
    restart: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train an adapter and write it (with loss curves and a resumable state) into ``out_dir``.

    Args:
        loaded: the base model (on the device to train on); left unchanged on return.
        dataset: training images, with labels unless ``settings.pseudo_labels``.
        out_dir: output folder; holding an earlier run with the same identity, it resumes.
        settings: training settings.
        segment: segmentation settings (default: the protocol's); their
            ``confidence_threshold`` picks the kept queries, and pseudo-labels use them all.
        restart: discard an earlier run in ``out_dir`` instead of resuming it.
        progress: called during pseudo-labelling and after each step.

    Returns:
        The summary written to ``train.json``.

    Raises:
        InputError: bad images or labels, or ``out_dir`` holding a different run.

    """
    out = Path(out_dir)
    protocol = dataset.protocol
    segment = segment or protocol.settings
    if settings.pseudo_labels:
        samples = list(dataset)
    else:
        samples, _ = dataset.samples(skip_bad=False)
    identity = {
        "settings": settings.identity(),
        "model": loaded.fingerprint,
        "dataset": protocol.name,
        "segment": segment.semantic_dict(),
        "images": hashlib.sha256("\n".join(s.name for s in samples).encode()).hexdigest()[:16],
    }
    state = _load_state(out, identity, restart)
    coverage: dict[str, float] = {}
    if settings.pseudo_labels:

        def labelled(done: int, total: int) -> None:
            if progress is not None:
                progress("pseudo-labels", done, total, None)

        coverage = make_pseudo_labels(
            loaded,
            protocol.vocabulary,
            segment,
            samples,
            out / "pseudo_labels",
            settings.pseudo_threshold,
            labelled,
        )
    views = training_views(samples, segment)
    model = loaded.model
    stages = Sam3Stages(model, checkpoint_fusion=settings.checkpointing, prompt_form=segment.prompt_form)
    tokens = tokenize(loaded.tokenizer, protocol.vocabulary.names)
    with torch.no_grad():
        text = stages.encode_text(tokens.input_ids.to(stages.device), tokens.attention_mask.to(stages.device))
    trainable = settings.parsed_trainable()
    params = prepare_trainable(model, trainable, settings.seed)
    originals = {name: p.detach().clone() for name, p in params.items()}
    try:
        optimizer = torch.optim.AdamW(params.values(), lr=settings.lr, weight_decay=settings.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, settings.warmup, settings.steps)
        )
        step_fn = TrainStep(
            stages,
            text,
            protocol.vocabulary.name_class,
            len(protocol.vocabulary),
            settings,
            segment.confidence_threshold,
            protocol.ignore_index,
        )
        start, rows = 0, []
        if state is not None:
            start, rows = _resume(state, params, optimizer, schedule, step_fn)
        reader = _ViewReader(
            samples, views, stages, out / "pseudo_labels" if settings.pseudo_labels else None
        )
        meta = {
            **trainable.to_dict(),
            "base_model": loaded.source,
            "base_fingerprint": loaded.fingerprint,
            "dataset": protocol.name,
            "settings": settings.to_dict(),
            "ovearth": __version__,
        }
        for step in range(start, settings.steps):
            began = time.perf_counter()
            sums: dict[str, float] = {}
            for index in step_views(step, settings.batch, len(views), settings.seed):
                loss, parts = step_fn(*reader.view(index))
                (loss / settings.batch).backward()
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + float(value) / settings.batch
            if settings.clip > 0:
                torch.nn.utils.clip_grad_norm_(list(params.values()), settings.clip)
            lr = schedule.get_last_lr()[0]
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            rows.append({"step": step + 1, "lr": lr, **sums, "seconds": time.perf_counter() - began})
            if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
                _save(out, model, meta | {"step": step + 1}, identity, optimizer, schedule, step_fn, rows)
            if progress is not None:
                progress("train", step + 1, settings.steps, rows[-1])
        summary = _summary(out, settings, params, model, rows, coverage, stages.device)
    finally:
        release_trainable(model, originals)
    write_text_atomic(out / "train.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


class _ViewReader:
    """Preprocessed pixels and labels of training views (the last image kept decoded)."""

    def __init__(
        self,
        samples: list[Sample],
        views: list[tuple[int, Window]],
        stages: Sam3Stages,
        pseudo_labels: Path | None,
    ) -> None:
        self.samples, self.views, self.stages = samples, views, stages
        self.pseudo_labels = pseudo_labels
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def _image(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is None or self._cached[0] != index:
            sample = self.samples[index]
            image = sample.load_image()
            if self.pseudo_labels is None:
                label = sample.load_label()
            else:
                label = read_label(pseudo_label_path(self.pseudo_labels, sample))
            label = np.where(image.valid, label, IGNORE).astype(np.uint8)
            self._cached = (index, image.rgb, label)
        return self._cached[1], self._cached[2]

    def view(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``([1, 3, S, S] pixels, [h, w] long label)`` of view ``index``, on the model's device."""
        sample_index, w = self.views[index]
        rgb, label = self._image(sample_index)
        device = self.stages.device
        crop = to_chw_uint8(rgb[w.y1 : w.y2, w.x1 : w.x2])
        pixels = preprocess(crop.to(device), self.stages.image_size, self.stages.dtype)[None]
        target = torch.from_numpy(label[w.y1 : w.y2, w.x1 : w.x2].astype(np.int64)).to(device)
        return pixels, target


def _load_state(out: Path, identity: dict[str, Any], restart: bool) -> dict[str, Any] | None:
    path = out / STATE
    if not path.is_file():
        return None
    if restart:
        path.unlink()
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a state file we cannot read is not resumable
        raise InputError(
            f"{path}: not a readable training state ({error}); pass --restart to start over."
        ) from None
    before = state.get("identity", {})
    if before != identity:
        keys = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        detail = keys[0]
        if detail == "settings":
            old, new = before.get("settings", {}), identity["settings"]
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            detail = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed[:3])
        raise InputError(
            f"{out} holds a training run with a different {keys[0]} ({detail}); "
            "use another -o folder or pass --restart to discard it."
        )
    return state


def _resume(
    state: dict[str, Any],
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    step_fn: TrainStep,
) -> tuple[int, list[dict[str, Any]]]:
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if step_fn.contrast.generator is not None:
        step_fn.contrast.generator.set_state(state["contrast_rng"])
    logger.info("resuming after step %d", state["step"])
    return int(state["step"]), list(state["rows"])


def _save(
    out: Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    identity: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    step_fn: TrainStep,
    rows: list[dict[str, Any]],
) -> None:
    """Adapter, loss curves, then the resumable state (written last: it alone decides a resume)."""
    tensors = trainable_tensors(model)
    save_adapter(out / "adapter", tensors, meta)
    write_losses(out / "losses.csv", rows)
    loss_chart(out / "losses.png", rows, f"{meta['dataset']}: {meta['trainable']}")
    generator = step_fn.contrast.generator
    state = {
        "identity": identity,
        "step": meta["step"],
        "params": tensors,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "contrast_rng": generator.get_state() if generator is not None else torch.zeros(0, dtype=torch.uint8),
        "rows": rows,
    }
    with atomic_path(out / STATE) as temp:
        torch.save(state, temp)


def _summary(
    out: Path,
    settings: TrainSettings,
    params: dict[str, torch.nn.Parameter],
    model: torch.nn.Module,
    rows: list[dict[str, Any]],
    coverage: dict[str, float],
    device: torch.device,
) -> dict[str, Any]:
    tail = rows[-10:]
    final = (
        {k: sum(r[k] for r in tail) / len(tail) for k in tail[0] if k not in ("step", "lr")} if tail else {}
    )
    trained = sum(p.numel() for p in params.values())
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "adapter": str(out / "adapter"),
        "settings": settings.to_dict(),
        "steps_done": rows[-1]["step"] if rows else 0,
        "trainable_parameters": trained,
        "frozen_parameters": sum(p.numel() for p in model.parameters()) - trained,
        "last_10_steps_mean": final,
        "seconds_per_step": sum(r["seconds"] for r in rows) / len(rows) if rows else None,
        "peak_memory_gb": round(peak, 3),
        "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "host RSS",
        "pseudo_label_coverage": sum(coverage.values()) / len(coverage) if coverage else None,
    }
