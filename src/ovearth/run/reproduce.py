"""SegEarth-OV3's table in one run: every benchmark found under a data root, beside the published figures.

:func:`locate` finds each protocol's dataset under ``DIR/<dataset>`` (or a per-dataset
root from a YAML map) and says, for each one it cannot use, which folder it looked for;
:func:`plan` turns the datasets found, the settings given and an optional ablation grid
into evaluations; :func:`run_reproduce` runs each with :func:`ovearth.run.evaluate.evaluate`
(same cache, so a killed run resumes where it stopped and a re-run computes nothing; same
torchrun sharding) into ``out_dir/<dataset>/`` (``out_dir/<dataset>/<setting>/`` with a
grid), then :func:`~ovearth.run.reproduce_table.write_table` writes ``table.md``,
``table.csv``, ``table.json`` and ``table.png`` with the published figures of
``configs/published.yaml`` and the difference from each.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.datasets import SegmentationDataset
from ..data.protocols import DatasetProtocol, list_protocols, load_protocol
from ..data.safe_yaml import brief_text, read_yaml
from ..errors import InputError
from ..model.load import LoadedModel
from ..segment.segmentor import Segmentor
from ..segment.settings import SegmentSettings
from ..train.adapter import adapted
from .ablate import BASELINE, AblationSetting
from .evaluate import EvalOptions, Shard, evaluate
from .reproduce_table import load_published, write_table

#: the eight semantic segmentation sets of SegEarth-OV3's main table, in its column order
PAPER_DATASETS = ("openearthmap", "loveda", "isaid", "potsdam", "vaihingen", "uavid", "udd5", "vdd")

#: the setting name of a run without a grid (one row per dataset)
DEFAULT_SETTING = "ovearth"

#: ``progress(dataset, setting, done, total, running_miou)`` after each image (rank 0 only)
ProgressFn = Callable[[str, str, int, int, float], None]


def dataset_names(spec: str) -> list[str]:
    """The protocol names of ``--datasets``: comma-separated names, ``paper`` or ``all``.

    ``paper`` stands for the eight datasets of SegEarth-OV3's table, ``all`` for every
    built-in protocol; ``paper,whu_aerial`` adds one. Repeats are dropped, order is kept.

    Raises:
        InputError: an empty list or an unknown name (with the closest known names).

    """
    names: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part.lower() == "paper":
            group = list(PAPER_DATASETS)
        elif part.lower() == "all":
            group = list_protocols()
        else:
            group = [load_protocol(part).name]  # an unknown name says which are known
        names += [name for name in group if name not in names]
    if not names:
        raise InputError("--datasets is empty; give paper, all, or protocol names like loveda,potsdam.")
    return names


def read_root_map(path: str | Path) -> dict[str, Path]:
    """``{protocol name: data root}`` from a YAML mapping (bounded reading; relative paths from the file).

    Raises:
        InputError: not a mapping, an unknown dataset name, or a root that is not text.

    """
    path = Path(path)
    data = read_yaml(path, "data-root map (YAML: dataset name -> folder)") or {}
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: expected a mapping from dataset names to folders, e.g. 'loveda: /data/LoveDA'."
        )
    roots: dict[str, Path] = {}
    for key, value in data.items():
        try:
            name = load_protocol(str(key)).name
        except InputError as error:
            raise InputError(f"{path}: {error}") from None
        if not isinstance(value, str) or not value.strip():
            raise InputError(
                f"{path}: the root of '{key}' must be a folder path, got {brief_text(repr(value))}."
            )
        root = Path(value).expanduser()
        roots[name] = root if root.is_absolute() else path.parent / root
    return roots


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _folder_for(protocol: DatasetProtocol, data_root: Path) -> Path | None:
    """``data_root/<name>``, else a folder named like the protocol or its title (e.g. ``LoveDA``)."""
    exact = data_root / protocol.name
    if exact.is_dir():
        return exact
    wanted = {_key(protocol.name), _key(protocol.title)}
    if data_root.is_dir():
        for entry in sorted(data_root.iterdir()):
            if entry.is_dir() and _key(entry.name) in wanted:
                return entry
    return None


@dataclass(frozen=True)
class Located:
    """One requested dataset: its reader, or the sentence that says why it is skipped."""

    name: str
    title: str
    dataset: SegmentationDataset | None = None
    reason: str = ""


def locate(
    names: list[str],
    data_root: str | Path | None = None,
    root_map: dict[str, Path] | None = None,
    limit: int | None = None,
) -> list[Located]:
    """Find each dataset's root and check its layout (folder listings only, nothing is read).

    A dataset of ``root_map`` uses its root; any other one ``data_root/<name>`` or a
    folder of ``data_root`` named like the dataset (case and punctuation ignored).

    Raises:
        InputError: neither ``data_root`` nor ``root_map`` given, ``data_root`` is not a
            folder, or a bad ``limit``.

    """
    if data_root is None and not root_map:
        raise InputError("Give --data-root DIR (datasets in DIR/<dataset>) or --data-root-map FILE.")
    base = Path(data_root).expanduser() if data_root is not None else None
    if base is not None and not base.is_dir():
        raise InputError(f"--data-root {base}: no such folder.")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a positive number of images, not {limit}.")
    found = []
    for name in names:
        protocol = load_protocol(name)
        if root_map and name in root_map:
            root: Path | None = root_map[name]
            missing = f"no folder {root} (its root in the data-root map)"
        elif base is not None:
            root = _folder_for(protocol, base)
            missing = f"no folder {base / name} (nor one named like '{protocol.title}' in {base})"
        else:
            root, missing = None, "no root for it in the data-root map (and no --data-root)"
        if root is None or not root.is_dir():
            found.append(Located(name, protocol.title, reason=missing))
            continue
        try:
            found.append(Located(name, protocol.title, SegmentationDataset(protocol, root, limit=limit)))
        except InputError as error:
            found.append(Located(name, protocol.title, reason=str(error)))
    return found


@dataclass(frozen=True)
class Job:
    """One evaluation of the table: a dataset under one setting, into ``folder``."""

    dataset: SegmentationDataset
    setting: AblationSetting
    settings: SegmentSettings
    folder: Path


def plan(
    located: list[Located],
    out_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    grid: list[AblationSetting] | None = None,
) -> list[Job]:
    """The evaluations, checked before any model loads.

    Args:
        located: from :func:`locate` (skipped datasets are left out).
        out_dir: the output folder.
        overrides: SegmentSettings fields given on the command line, applied to every
            protocol's settings.
        grid: ablation settings (baseline first), each applied on top of ``overrides``;
            None: one row per dataset, in ``out_dir/<dataset>/``.

    Raises:
        InputError: a setting that a protocol cannot take (e.g. ``bg_idx``), or overrides
            that set what the grid's rows set.

    """
    overrides = dict(overrides or {})
    if grid is not None:
        clash = sorted({"refine", "refine_at", "refine_for", "zoom"} & set(overrides))
        if clash:
            raise InputError(
                f"--{clash[0].replace('_', '-')} and --grid both set the refinement; "
                "put it in the grid's rows instead."
            )
    out = Path(out_dir)
    jobs = []
    for item in located:
        if item.dataset is None:
            continue
        protocol = item.dataset.protocol
        base = protocol.settings.replace(**overrides)
        base.check_run(len(protocol.vocabulary))
        if grid is None:
            setting = AblationSetting(name=DEFAULT_SETTING)
            jobs.append(Job(item.dataset, setting, base, out / protocol.name))
            continue
        for setting in grid:
            settings = setting.apply(base)
            jobs.append(Job(item.dataset, setting, settings, out / protocol.name / setting.slug))
    return jobs


@dataclass
class ReproduceResult:
    """What :func:`run_reproduce` measured: one row per job, and the skipped datasets."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)


def headline(protocol: DatasetProtocol, metrics: dict[str, Any]) -> tuple[str, float]:
    """The table's number for a dataset: mIoU, or the foreground class's IoU of a binary set."""
    if protocol.report:
        values = metrics["per_class"].get(protocol.report) or {}
        return f"IoU {protocol.report}", float(values.get("IoU", float("nan")))
    return "mIoU", float(metrics["mIoU"])


def run_reproduce(
    loaded: LoadedModel,
    located: list[Located],
    jobs: list[Job],
    out_dir: str | Path,
    options: EvalOptions | None = None,
    progress: ProgressFn | None = None,
    record: dict[str, Any] | None = None,
) -> ReproduceResult:
    """Run every job (resuming from each folder's cache) and write the table on rank 0.

    Args:
        loaded: the model (with the command's adapter, if any).
        located: every requested dataset (the skipped ones are listed in the table).
        jobs: from :func:`plan`.
        out_dir: the output folder.
        options: evaluation options shared by every job.
        progress: called after each image.
        record: what the command ran with, kept in ``table.json``.

    Returns:
        The rows (``dataset``, ``setting``, ``metric``, ``score``, the job's metrics...) and
        the skipped datasets; ``table`` is ``table.json``'s content.

    """
    out = Path(out_dir)
    options = options or EvalOptions()
    result = ReproduceResult(
        skipped=[{"dataset": i.name, "reason": i.reason} for i in located if i.dataset is None]
    )
    shard = Shard.from_env(next(loaded.model.parameters()).device)
    try:
        for job in jobs:
            protocol = job.dataset.protocol
            name, setting = protocol.name, job.setting.name

            def step(done: int, total: int, miou: float, name: str = name, setting: str = setting) -> None:
                if progress is not None:
                    progress(name, setting, done, total, miou)

            with adapted(loaded, job.setting.adapter or None) as model:
                segmentor = Segmentor(model, protocol.vocabulary, settings=job.settings)
                run = evaluate(segmentor, job.dataset, job.folder, options, step)
            metric, score = headline(protocol, run.metrics)
            result.rows.append(
                {
                    "dataset": name,
                    "title": protocol.title,
                    "setting": setting,
                    "refine": job.settings.refine,
                    "zoom": job.settings.zoom,
                    "adapter": job.setting.adapter,
                    "metric": metric,
                    "score": score,
                    "mIoU": float(run.metrics["mIoU"]),
                    "num_images": run.num_images,
                    "computed_images": run.computed_images,
                    "world_size": run.world_size,
                    "run_key": run.run_key,
                    "folder": str(job.folder.relative_to(out))
                    if job.folder.is_relative_to(out)
                    else str(job.folder),
                }
            )
        grid = list(dict.fromkeys(job.setting.name for job in jobs))
        baseline = BASELINE if BASELINE in grid and len(grid) > 1 else None
        result.table = write_table(
            out, result.rows, result.skipped, load_published(), record or {}, baseline, write=shard.rank == 0
        )
    finally:
        shard.close()
    return result
