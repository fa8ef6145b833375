"""``segment_files``: segment many image files into one folder, robustly.

* **Resume.** ``run.json`` records, per input, a key of everything that changes its
  outputs (model fingerprint, settings, classes, bands, stretch, the output options, windowed or
  not). A later run into the same folder skips an input whose entry has the same key and
  whose outputs all exist (``overwrite=True`` redoes it).
* **Bad inputs.** With ``skip_bad`` an input that cannot be segmented (:class:`InputError`:
  unreadable, too large, bad bands) is listed under ``skipped`` with the reason and the
  run goes on; without it the run stops at the first one.
* **Nothing lost.** ``run.json`` is rewritten (atomically) after every image, and also when
  the run stops on an error, with the error (unless nothing was written at all: a run
  that fails on its first input leaves no file); outputs are written atomically.
* **torchrun.** Under ``torchrun`` (``WORLD_SIZE > 1``) each rank takes every
  ``world_size``-th input and writes its outputs; rank 0 gathers the entries and writes
  the merged ``run.json`` in input order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..data.atomic import write_text_atomic
from ..data.output import remove_stale_parts
from ..data.raster import ImageHeader, check_image
from ..errors import InputError
from ..segment.segmentor import Segmentor
from .evaluate import Shard
from .files import FileOptions, plan_file, segment_file

#: ``progress(name, done, total)`` before each input (``done`` inputs finished so far)
ProgressFn = Callable[[str, int, int], None]
#: ``on_view(done, total)`` during an input read by windows
ViewFn = Callable[[int, int], None]


def check_files(files: list[Path], options: FileOptions) -> tuple[list[ImageHeader], list[dict[str, str]]]:
    """Header checks of every input before the model loads (each header is read once here).

    Returns:
        ``(headers of the good files, skipped)``; ``skipped`` lists ``{"image", "problem"}``
        (only with ``skip_bad``). Pass the headers to :func:`segment_files`.

    Raises:
        InputError: the first bad input, unless ``skip_bad``.

    """
    good, skipped = [], []
    for file in files:
        try:
            good.append(check_image(file, options.bands))
        except InputError as error:
            if not options.skip_bad:
                raise
            skipped.append({"image": str(file), "problem": str(error)})
    return good, skipped


def entry_key(segmentor: Segmentor, file: Path, options: FileOptions, windowed: bool) -> str:
    """Hash of everything that changes the outputs of ``file``."""
    identity = {
        "model": segmentor.loaded.fingerprint,
        "settings": segmentor.settings.semantic_dict(),
        "classes": str(segmentor.vocabulary),
        "image": file.name,
        **options.key_fields(),
        "windowed": windowed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def segment_files(
    segmentor: Segmentor,
    files: list[Path | ImageHeader],
    out_dir: str | Path,
    options: FileOptions | None = None,
    record: dict[str, Any] | None = None,
    skipped: list[dict[str, str]] | None = None,
    progress: ProgressFn | None = None,
    on_view: ViewFn | None = None,
) -> dict[str, Any]:
    """Segment ``files`` into ``out_dir`` and write ``run.json`` (see the module docstring).

    Args:
        segmentor: the configured segmentor.
        files: the inputs, in order (see :func:`~ovearth.run.files.collect_images`), or
            their headers from :func:`check_files` (then no header is read again).
        out_dir: output folder.
        options: see :class:`FileOptions`.
        record: fields written at the top of ``run.json`` (version, command, settings...).
        skipped: inputs already found bad (:func:`check_files`), listed in ``run.json``.
        progress: called before each input of this rank.
        on_view: progress of an input read by windows.

    Returns:
        The ``run.json`` record: ``record`` plus ``images`` (one entry per segmented or
        reused input: ``image``, ``key``, ``outputs``, ``presence``, ``windowed``, ``reused``),
        ``skipped``, ``world_size``, ``seconds`` (and ``error`` if it stopped on one).

    Raises:
        InputError: a bad input without ``skip_bad`` (``run.json`` is written first).

    """
    options = options or FileOptions()
    out = Path(out_dir)
    run_json = out / "run.json"
    shard = Shard.from_env(segmentor.stages.device)
    earlier = _earlier_entries(run_json)
    headers = [f if isinstance(f, ImageHeader) else None for f in files]
    files = [f.path if isinstance(f, ImageHeader) else Path(f) for f in files]
    mine = list(zip(files, headers, strict=True))[shard.rank :: shard.world_size]
    entries: list[dict[str, Any]] = []
    bad: list[dict[str, str]] = list(skipped or []) if shard.rank == 0 else []
    base = dict(record or {})
    start = time.perf_counter()

    def write(error: str | None = None, merged: bool = False) -> dict[str, Any]:
        """The record so far; written by a lone process, or by rank 0 once merged."""
        done = dict(base, images=entries, skipped=bad, world_size=shard.world_size)
        done["seconds"] = round(time.perf_counter() - start, 3)
        if error is not None:
            done["error"] = error
        if shard.world_size == 1 or (merged and shard.rank == 0):
            write_text_atomic(run_json, json.dumps(done, indent=2) + "\n")
        return done

    try:
        if shard.rank == 0:
            remove_stale_parts(out)
        for index, (file, header) in enumerate(mine):
            if progress is not None:
                progress(file.name, index, len(mine))
            try:
                entries.append(_one(segmentor, file, out, options, earlier.get(_same(file)), on_view, header))
            except InputError as error:
                if not options.skip_bad:
                    raise
                bad.append({"image": str(file), "problem": str(error)})
            write()
        if shard.world_size > 1:  # rank 0 writes the merged record, in input order
            gathered: list[Any] = [None] * shard.world_size
            dist.all_gather_object(gathered, (entries, bad))
            order = {str(f): i for i, f in enumerate(files)}
            entries = sorted((e for part, _ in gathered for e in part), key=lambda e: order[e["image"]])
            bad = [b for _, part in gathered for b in part]
            result = write(merged=True)
            dist.barrier()
            return result
        return write()
    except BaseException as error:
        if entries or earlier or run_json.exists():  # a record of what is there; nothing if nothing is
            message = (str(error) or type(error).__name__).splitlines()[0]
            write(error=message)
        raise
    finally:
        shard.close()


def _one(
    segmentor: Segmentor,
    file: Path,
    out: Path,
    options: FileOptions,
    earlier: dict[str, Any] | None,
    on_view: ViewFn | None,
    header: ImageHeader | None = None,
) -> dict[str, Any]:
    plan = plan_file(segmentor, file, options, header)  # decided once for this file
    windowed = plan.windowed
    key = entry_key(segmentor, file, options, windowed)
    if not options.overwrite and earlier is not None and earlier.get("key") == key:
        if all(Path(p).exists() for p in earlier.get("outputs", {}).values()):
            return dict(earlier, reused=True)
    chosen = dataclasses.replace(options, windowed=windowed)
    prediction, written = segment_file(segmentor, file, out, chosen, on_view, header, plan)
    names, presence = prediction.class_names, [round(p, 4) for p in prediction.presence.tolist()]
    entry = {
        "image": str(file),
        "key": key,
        "outputs": {k: str(v) for k, v in written.items()},
        "presence": dict(zip(names, presence, strict=True)),
        "windowed": windowed,
        "reused": False,
    }
    if windowed:
        entry.update(views=prediction.views, skipped_views=prediction.skipped_views)
    return entry


def _same(path: str | Path) -> str:
    """One spelling per file (``tiles/a.tif`` and ``./tiles/a.tif`` are the same input)."""
    return str(Path(path).resolve())


def _earlier_entries(run_json: Path) -> dict[str, dict[str, Any]]:
    """Entries of an earlier ``run.json`` by image path (empty when absent or unreadable)."""
    try:
        data = json.loads(run_json.read_text())
        return {_same(e["image"]): e for e in data.get("images", []) if isinstance(e, dict) and "image" in e}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
