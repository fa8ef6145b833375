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
* **torchrun.** Under ``torchrun`` (``WORLD_SIZE > 1``) a scene read by windows for its
  size (or with ``windowed=True``; :func:`~ovearth.run.plan.shares_scene`) is shared by
  every process, its rows divided among them (:mod:`ovearth.run.scene_split`; outputs
  equal to one process's); every other input goes to one process, each rank taking every
  ``world_size``-th of them. Rank 0 gathers the entries and writes the merged
  ``run.json`` in input order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..data.atomic import write_text_atomic
from ..data.output import remove_stale_parts
from ..data.raster import ImageHeader, as_input, check_image
from ..data.remote import RemoteError, RemoteRaster, is_remote
from ..errors import InputError
from ..segment.segmentor import Segmentor
from .evaluate import Shard
from .files import collect_images, segment_file
from .plan import FileOptions, plan_file, shares_scene
from .scene_split import ScenePart

#: ``progress(name, done, total)`` before each input (``done`` inputs finished so far)
ProgressFn = Callable[[str, int, int], None]
#: ``on_view(done, total)`` during an input read by windows
ViewFn = Callable[[int, int], None]


@dataclass
class ImageResult:
    """One input of a :class:`SegmentRun` (an entry of ``run.json``'s ``images``).

    Attributes:
        image: the input path as given.
        key: hash of everything that changes its outputs (:func:`entry_key`).
        outputs: output kind (``labels``, ``overlay``, ``scores``...) -> written path.
        presence: class name -> presence score (max over names and views).
        windowed: read and written by windows.
        reused: outputs of an earlier run with the same key were kept (resume).
        views, skipped_views: windows placed and windows not run (windowed inputs only).
        processes: torchrun processes that shared this scene's rows (1: one process).

    """

    image: str
    key: str
    outputs: dict[str, str]
    presence: dict[str, float]
    windowed: bool
    reused: bool = False
    views: int | None = None
    skipped_views: int | None = None
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The ``run.json`` entry (``views``, ``skipped_views`` when windowed; ``processes`` when > 1)."""
        entry = dataclasses.asdict(self)
        if self.views is None:
            del entry["views"], entry["skipped_views"]
        if self.processes == 1:
            del entry["processes"]
        return entry

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> ImageResult:
        """An entry of an earlier ``run.json`` (unknown fields ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in entry.items() if k in names})


@dataclass
class SegmentRun:
    """What :func:`segment_files` did; :meth:`to_dict` is ``run.json``.

    Attributes:
        out_dir: the output folder.
        record: the fields at the top of ``run.json`` (version, command, model, settings...).
        images: one result per segmented or reused input, in input order.
        skipped: bad inputs, ``{"image", "problem"}`` each.
        world_size: processes that shared the inputs (torchrun).
        seconds: wall time of the run.
        error: the first line of the error the run stopped on, or None.

    """

    out_dir: Path
    record: dict[str, Any] = field(default_factory=dict)
    images: list[ImageResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    world_size: int = 1
    seconds: float = 0.0
    error: str | None = None

    @property
    def reused(self) -> int:
        """Inputs whose earlier outputs were kept."""
        return sum(result.reused for result in self.images)

    def to_dict(self) -> dict[str, Any]:
        """``run.json``: ``record``, then ``images``, ``skipped``, ``world_size``, ``seconds``, ``error``."""
        done = dict(self.record, images=[r.to_dict() for r in self.images], skipped=self.skipped)
        done.update(world_size=self.world_size, seconds=self.seconds)
        if self.error is not None:
            done["error"] = self.error
        return done


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
        except (InputError, RemoteError) as error:
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


def segment_images(
    images: Iterable[str | Path],
    out_dir: str | Path,
    segmentor: Segmentor | Callable[[], Segmentor],
    options: FileOptions | None = None,
    record: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    on_view: ViewFn | None = None,
    stac_asset: str | None = None,
) -> SegmentRun:
    """Segment image files and folders into ``out_dir``: what ``ovearth segment`` does.

    Expands ``images`` (:func:`~ovearth.run.files.collect_images`), checks every header
    (:func:`check_files`), then segments (:func:`segment_files`)::

        run = segment_images(["tiles/"], "out", Segmentor(load_model(), "building;road"))
        run.images[0].outputs["labels"], run.reused, run.skipped

    Args:
        images: files or folders of GeoTIFF, PNG and JPEG images.
        out_dir: output folder (resumes an earlier run there).
        segmentor: the segmentor, or a function that makes it; a function is called
            after every header was checked, so a bad input is named before a model loads.
        options: how files are read and what is written (:class:`FileOptions`).
        record: fields added to ``run.json``'s head (``command``, default ``segment``, comes
            second; the rest after the segmentor's own :meth:`~Segmentor.record`).
        progress: called before each input (see :func:`segment_files`).
        on_view: progress of an input read by windows.
        stac_asset: the asset read from STAC items (default ``visual``).

    Raises:
        InputError: a bad input (unless ``options.skip_bad``) or bad settings.
        RemoteError: a remote input or STAC item that cannot be reached or found.

    """
    options = options or FileOptions()
    headers, skipped = check_files(collect_images(images, out_dir, stac_asset), options)
    if not isinstance(segmentor, Segmentor):
        segmentor = segmentor()
    described, extra = segmentor.record(), record or {}
    head = {"ovearth": described.pop("ovearth"), "command": extra.get("command", "segment")}
    head.update(described)
    head.update(extra)
    return segment_files(segmentor, headers, out_dir, options, head, skipped, progress, on_view)


def segment_files(
    segmentor: Segmentor,
    files: list[Path | ImageHeader],
    out_dir: str | Path,
    options: FileOptions | None = None,
    record: dict[str, Any] | None = None,
    skipped: list[dict[str, str]] | None = None,
    progress: ProgressFn | None = None,
    on_view: ViewFn | None = None,
) -> SegmentRun:
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
        The :class:`SegmentRun` (its :meth:`~SegmentRun.to_dict` is ``run.json``); under
        torchrun, rank 0's holds every rank's inputs.

    Raises:
        InputError: a bad input without ``skip_bad`` (``run.json`` is written first).

    """
    options = options or FileOptions()
    out = Path(out_dir)
    run_json = out / "run.json"
    shard = Shard.from_env(segmentor.stages.device)
    earlier = _earlier_entries(run_json)
    headers = [f if isinstance(f, ImageHeader) else None for f in files]
    files = [f.path if isinstance(f, ImageHeader) else as_input(f) for f in files]
    pairs = zip(files, headers, strict=True)
    # a large scene is shared by every process (run/scene_split.py), other files dealt round-robin
    shared = [shard.world_size > 1 and shares_scene(f, h, segmentor, options) for f, h in pairs]
    alone = [i for i, both in enumerate(shared) if not both]  # dealt round-robin among the processes
    picked = set(alone[shard.rank :: shard.world_size])
    mine = [(i, files[i], headers[i]) for i in range(len(files)) if shared[i] or i in picked]
    run = SegmentRun(out, dict(record or {}), skipped=list(skipped or []) if shard.rank == 0 else [])
    run.world_size = shard.world_size
    start = time.perf_counter()

    def write(merged: bool = False) -> SegmentRun:
        """The run so far; written by a lone process, or by rank 0 once merged."""
        run.seconds = round(time.perf_counter() - start, 3)
        if shard.world_size == 1 or (merged and shard.rank == 0):
            write_text_atomic(run_json, json.dumps(run.to_dict(), indent=2) + "\n")
        return run

    try:
        if shard.rank == 0:
            remove_stale_parts(out)
        if shard.world_size > 1:
            dist.barrier()  # no process writes a part before the clean-up is done
        for done, (index, file, header) in enumerate(mine):
            if progress is not None:
                progress(file.name, done, len(mine))
            part = (
                ScenePart(shard.rank, shard.world_size, out, file.stem, options.objects)
                if shared[index]
                else None
            )
            try:
                result = _one(segmentor, file, out, options, earlier.get(_same(file)), on_view, header, part)
                if part is None or part.rank == 0:  # a shared scene is recorded once
                    run.images.append(result)
            except (InputError, RemoteError) as error:
                if not options.skip_bad:
                    raise
                if part is not None and part.rank != 0:
                    continue
                run.skipped.append({"image": str(file), "problem": str(error)})
            write()
        if shard.world_size > 1:  # rank 0 writes the merged record, in input order
            gathered: list[Any] = [None] * shard.world_size
            dist.all_gather_object(gathered, (run.images, run.skipped))
            order = {str(f): i for i, f in enumerate(files)}
            run.images = sorted((e for part, _ in gathered for e in part), key=lambda e: order[e.image])
            run.skipped = [b for _, part in gathered for b in part]
            write(merged=True)
            dist.barrier()
            return run
        return write()
    except BaseException as error:
        if run.images or earlier or run_json.exists():  # a record of what is there; nothing if nothing is
            run.error = (str(error) or type(error).__name__).splitlines()[0]
            write()
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
    part: ScenePart | None = None,
) -> ImageResult:
    plan = plan_file(segmentor, file, out, options, header)  # decided once for this file
    windowed = plan.windowed
    key = entry_key(segmentor, file, options, windowed)
    if not options.overwrite and earlier is not None and earlier.get("key") == key:
        if all(Path(p).exists() for p in earlier.get("outputs", {}).values()):
            with contextlib.suppress(TypeError):  # an entry missing fields is recomputed
                return dataclasses.replace(ImageResult.from_dict(earlier), reused=True)
    chosen = dataclasses.replace(options, windowed=windowed)
    prediction, written = segment_file(segmentor, file, out, chosen, on_view, header, plan, part)
    names, presence = prediction.class_names, [round(p, 4) for p in prediction.presence.tolist()]
    result = ImageResult(
        image=str(file),
        key=key,
        outputs={k: str(v) for k, v in written.items()},
        presence=dict(zip(names, presence, strict=True)),
        windowed=windowed,
    )
    if windowed:
        result.views, result.skipped_views = prediction.views, prediction.skipped_views
    if part is not None:
        result.processes = part.world_size
    return result


def _same(path: str | Path | RemoteRaster) -> str:
    """One spelling per input (``tiles/a.tif`` and ``./tiles/a.tif`` are the same; URLs as given)."""
    text = str(path)
    if isinstance(path, RemoteRaster) or is_remote(text) or ".json#" in text:
        return text
    return str(Path(path).resolve())


def _earlier_entries(run_json: Path) -> dict[str, dict[str, Any]]:
    """Entries of an earlier ``run.json`` by image path (empty when absent or unreadable)."""
    try:
        data = json.loads(run_json.read_text())
        return {_same(e["image"]): e for e in data.get("images", []) if isinstance(e, dict) and "image" in e}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
