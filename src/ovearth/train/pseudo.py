"""Self-training targets: the frozen model's own confident predictions as labels.

For each training image the frozen SAM 3 (before any training) segments the image with
the protocol's settings; a pixel gets the label of its best class when that class's
logit (SegEarth-OV3's ``max(instance, semantic) * presence``, in ``[0, 1]``) is at
least ``threshold``, and the ignore label 255 otherwise (and on nodata). Training then
treats these maps exactly like ground truth, so no label is needed: the user's
"bootstrapping".

Pseudo-labels are written once, as palette PNGs (a picture and the data at once), to
``<out>/pseudo_labels/<image name>.png`` beside a ``key.json`` naming the model
fingerprint, settings and threshold that made them; a run that finds matching files
reuses them, a changed key rewrites them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.atomic import atomic_path, write_text_atomic
from ..data.datasets import Sample, read_label
from ..data.legend import ClassTable
from ..data.raster_write import write_labels
from ..model.load import LoadedModel
from ..segment.segmentor import Prediction, Segmentor
from ..segment.settings import SegmentSettings
from ..segment.vocabulary import Vocabulary
from ..viz import overlay, palette

IGNORE = 255
#: Overlays written for the first images, to look at what the model will learn from.
OVERLAYS = 8


def confident_labels(prediction: Prediction, threshold: float) -> np.ndarray:
    """``[H, W]`` uint8: best class where its logit ``>= threshold``, else 255 (also on nodata)."""
    best, labels = prediction.class_logits.max(dim=0)
    labels = torch.where(best >= threshold, labels, IGNORE).to(torch.uint8).numpy()
    labels[~prediction.valid] = IGNORE
    return labels


def pseudo_label_path(folder: Path, sample: Sample) -> Path:
    """Where the pseudo-label of ``sample`` lives."""
    return folder / f"{sample.name}.png"


def make_pseudo_labels(
    loaded: LoadedModel,
    vocabulary: Vocabulary,
    settings: SegmentSettings,
    samples: list[Sample],
    folder: str | Path,
    threshold: float,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Write (or reuse) the pseudo-label of every sample.

    Args:
        loaded: the frozen model (call before any training changes it).
        vocabulary: the classes.
        settings: segmentation settings (the protocol's).
        samples: training images (their labels are not read).
        folder: output folder.
        threshold: confidence needed for a label.
        progress: ``progress(done, total)`` after each image.

    Returns:
        ``{image name: fraction of its pixels that got a label}``.

    """
    folder = Path(folder)
    key = {
        "model": loaded.fingerprint,
        "settings": settings.semantic_dict(),
        "classes": str(vocabulary),
        "threshold": threshold,
    }
    key_file = folder / "key.json"
    fresh = not key_file.is_file() or json.loads(key_file.read_text()) != key
    if fresh:  # different model or rule: nothing old may be reused
        for sample in samples:
            pseudo_label_path(folder, sample).unlink(missing_ok=True)
        write_text_atomic(key_file, json.dumps(key, indent=2, sort_keys=True) + "\n")
    segmentor = Segmentor(loaded, vocabulary, settings=settings)
    table = ClassTable.build(vocabulary.labels, palette(len(vocabulary)), unclassified=False)  # 255 = ignore
    coverage: dict[str, float] = {}
    for index, sample in enumerate(samples):
        path = pseudo_label_path(folder, sample)
        if path.is_file():
            coverage[sample.name] = float((read_label(path) != IGNORE).mean())
        else:
            image = sample.load_image()
            labels = confident_labels(segmentor.predict(image.rgb, image.valid), threshold)
            write_labels(path, labels, image, table)
            if index < OVERLAYS:
                shown = overlay(image.rgb, labels, vocabulary.labels)
                with atomic_path(folder / "overlays" / f"{sample.name.replace('/', '__')}.jpg") as temp:
                    shown.convert("RGB").save(temp, format="JPEG", quality=90)
            coverage[sample.name] = float((labels != IGNORE).mean())
        if progress is not None:
            progress(index + 1, len(samples))
    return coverage
