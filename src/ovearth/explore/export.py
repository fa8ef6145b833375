"""A result as files: the preset YAML of its settings, and the files ``segment`` writes.

The ZIP holds, for a picture ``<stem>``, what ``ovearth segment --scores`` writes
(:func:`~ovearth.run.plan.output_paths`, by the same writers): ``<stem>_labels.tif``
(with its ``.aux.xml`` and ``.qml`` side files) or ``<stem>_labels.png`` without
georeferencing, ``<stem>_overlay.png`` and ``<stem>_scores.tif``; plus
``<stem>_preset.yaml`` (``segment --preset`` reads it) and ``<stem>_explore.json`` (version,
model, device, classes, settings, and the quick-look step: a large raster's results are
at the quick-look's resolution, georeferenced accordingly).
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import zipfile
from pathlib import Path

from ..constants import UNCLASSIFIED_LABEL
from ..data.legend import ClassTable
from ..data.protocols import protocol_yaml
from ..data.raster_write import write_labels, write_scores
from ..model.load import LoadedModel
from ..run.plan import FileOptions, output_paths
from ..segment.fusion import scores_for_writing
from ..segment.segmentor import Segmentor
from ..viz import overlay, palette
from .results import Result


def safe_stem(name: str) -> str:
    """A file-name-safe stem of a display name (letters, digits, ``._-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "image"


def preset_yaml(result: Result, image_name: str) -> str:
    """The result's classes and settings as a preset file (``segment --preset FILE`` reads it)."""
    stem = safe_stem(image_name)
    return protocol_yaml(
        stem,
        result.request.vocabulary,
        result.request.settings,
        title=f"ovearth explore: {image_name}",
        comment=f"Made by `ovearth explore` on {image_name}.\n"
        f"Use: ovearth segment IMAGES -o OUT --preset {stem}_preset.yaml",
    )


def record(result: Result, loaded: LoadedModel, image_name: str) -> dict:
    """What ``<stem>_explore.json`` says: the segmentor's record plus the picture's size and step."""
    segmentor = Segmentor(loaded, result.request.vocabulary, settings=result.request.settings)
    return {
        **segmentor.record(),
        "image": {
            "name": image_name,
            "size": list(result.picture.full_size),
            "segmented_size": list(result.labels.shape),
            "quicklook_step": result.picture.step,
        },
    }


def export_zip(result: Result, loaded: LoadedModel, image_name: str) -> tuple[str, bytes]:
    """``(file name, ZIP bytes)`` of the module docstring's files."""
    stem = safe_stem(image_name)
    image = result.picture.image
    names = result.request.vocabulary.labels
    unclassified = result.request.settings.low_score_label == UNCLASSIFIED_LABEL
    table = ClassTable.build(names, palette(len(names)), unclassified)
    with tempfile.TemporaryDirectory(prefix="ovearth-export-") as folder:
        out = Path(folder)
        paths = output_paths(Path(f"{stem}.tif"), out, image.georeferenced, FileOptions(scores=True))
        write_labels(paths["labels"], result.labels, image, table)
        overlay(image.rgb, result.labels, names).save(paths["overlay"], format="PNG")
        scores = scores_for_writing(result.class_logits, image.valid)
        write_scores(paths["scores"], scores, names, image)
        (out / f"{stem}_preset.yaml").write_text(preset_yaml(result, image_name))
        (out / f"{stem}_explore.json").write_text(
            json.dumps(record(result, loaded, image_name), indent=2) + "\n"
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(out.iterdir()):
                archive.write(path, path.name)
    return f"{stem}_ovearth.zip", buffer.getvalue()
