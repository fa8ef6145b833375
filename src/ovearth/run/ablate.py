"""The ablation runner: what each token refinement does to mIoU, per dataset.

For every dataset and every setting of a grid (plus the unrefined baseline), the
dataset is evaluated with :func:`ovearth.run.evaluate.evaluate` into
``out_dir/<dataset>/<setting>/`` (so its cache makes a re-run resume, and torchrun
shards every evaluation), then ``ablation.md``, ``ablation.csv`` and ``ablation.png``
tabulate mIoU per dataset per setting with the difference from the baseline, the best
setting per dataset marked.

A grid is YAML::

    settings:
      - {name: "smooth", refine: "smooth:a=0.2"}              # name optional
      - {refine: "lowpass:r=12,b=0.2", refine_at: fusion, refine_for: decoder}
      - {name: "zoom", zoom: "k=4,scale=2"}                      # two-pass zoom as a setting
      - {name: "trained", adapter: "runs/loveda-lora"}            # a trained adapter (ovearth train)

``paper`` is the built-in grid of MISSION.md part 3 (``configs/grids/paper.yaml``).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_path, write_text_atomic
from ..data.datasets import SegmentationDataset
from ..data.protocols import load_protocol
from ..data.safe_yaml import brief_text, parse_yaml, read_yaml
from ..errors import InputError
from ..model.load import LoadedModel
from ..segment.segmentor import Segmentor
from ..segment.settings import SegmentSettings
from ..train.adapter import adapted, read_adapter
from .evaluate import EvalOptions, Shard, evaluate

_SETTING_KEYS = {"name", "refine", "refine_at", "refine_for", "zoom", "adapter"}
BASELINE = "baseline"


@dataclass(frozen=True)
class AblationSetting:
    """One row of the ablation: a refinement and where it applies, and optionally a trained adapter."""

    name: str
    refine: str = ""
    refine_at: str = "fusion"
    refine_for: str = "both"
    zoom: str = ""
    adapter: str = ""

    def apply(self, settings: SegmentSettings) -> SegmentSettings:
        """The protocol's settings with this refinement (and zoom)."""
        return settings.replace(
            refine=self.refine, refine_at=self.refine_at, refine_for=self.refine_for, zoom=self.zoom
        )

    @property
    def slug(self) -> str:
        """A folder name for this setting."""
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.name).strip("_") or "setting"


def load_grid(source: str | Path) -> list[AblationSetting]:
    """Read a grid (``paper`` or a YAML path); the baseline comes first.

    Raises:
        InputError: unreadable file, bad field, or a refine spec that does not parse.

    """
    if str(source) == "paper":
        where = "the built-in paper grid"
        grids = resources.files("ovearth").joinpath("configs").joinpath("grids")
        data = parse_yaml(grids.joinpath("paper.yaml").read_text(), where)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such grid file (or use --grid paper).")
        where, data = str(path), read_yaml(path, "grid")
    data = data or {}
    entries = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{where}: expected 'settings:' with a list of {{refine: SPEC}} entries.")
    return [BASELINE_SETTING, *(_setting(entry, where) for entry in entries)]


def settings_from_specs(specs: list[str]) -> list[AblationSetting]:
    """Settings from repeated ``--refine`` options (baseline first)."""
    return [BASELINE_SETTING, *(_setting({"refine": spec}, "--refine") for spec in specs)]


BASELINE_SETTING = AblationSetting(name=BASELINE)


def _setting(entry: Any, where: str) -> AblationSetting:
    if not isinstance(entry, dict) or not ({"refine", "zoom", "adapter"} & set(entry)):
        raise InputError(
            f"{where}: every setting needs a 'refine' spec (or a 'zoom' or an 'adapter'), "
            f"got {brief_text(repr(entry))}."
        )
    unknown = sorted(set(entry) - _SETTING_KEYS)
    if unknown:
        raise InputError(
            f"{where}: unknown field '{unknown[0]}'; allowed: {', '.join(sorted(_SETTING_KEYS))}."
        )
    spec = str(entry.get("refine", ""))
    try:
        fields = {k: str(entry[k]) for k in ("refine_at", "refine_for", "zoom") if k in entry}
        SegmentSettings(refine=spec, **fields)
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    adapter = str(entry.get("adapter") or "")
    if adapter:
        read_adapter(adapter)  # a bad adapter stops the grid before anything is evaluated
    default = spec or (f"zoom {fields['zoom']}" if "zoom" in fields else f"adapter {Path(adapter).name}")
    return AblationSetting(name=str(entry.get("name") or default), refine=spec, adapter=adapter, **fields)


def load_roots(source: str | Path, datasets: list[str]) -> dict[str, Path]:
    """Read ``{dataset: data root}`` from YAML and check it covers ``datasets``.

    Raises:
        InputError: unreadable file or a dataset without a root.

    """
    path = Path(source)
    data = read_yaml(path, "data-root map (YAML: dataset name -> folder)") or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping from dataset names to folders.")
    missing = [name for name in datasets if name not in data]
    if missing:
        raise InputError(f"{path}: no data root for dataset '{missing[0]}'.")
    return {name: Path(str(data[name])).expanduser() for name in datasets}


ProgressFn = Callable[[str, str, int, int], None]


def run_ablation(
    loaded: LoadedModel,
    datasets: dict[str, Path],
    grid: list[AblationSetting],
    out_dir: str | Path,
    limit: int | None = None,
    progress: ProgressFn | None = None,
    prompt_form: str | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Evaluate every dataset under every setting and write the ablation reports.

    Args:
        loaded: the model.
        datasets: protocol name (or YAML path) -> data root.
        grid: settings; the first is the baseline.
        out_dir: output folder.
        limit: evaluate only the first N images of each dataset.
        progress: ``progress(dataset, setting, done, total)`` after each evaluation.
        prompt_form: SAM 3's prompt form for every row (None: each protocol's, ``"meta"``
            unless it says otherwise).

    Returns:
        ``{dataset: {setting name: metrics}}``.

    """
    out = Path(out_dir)
    shard = Shard.from_env(next(loaded.model.parameters()).device)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    total, done = len(datasets) * len(grid), 0
    try:
        for name, root in datasets.items():
            protocol = load_protocol(name)
            base = protocol.settings
            if prompt_form is not None:
                base = base.replace(prompt_form=prompt_form)
            dataset = SegmentationDataset(protocol, root, limit=limit)
            results[protocol.name] = {}
            for setting in grid:
                with adapted(loaded, setting.adapter or None) as model:
                    segmentor = Segmentor(model, protocol.vocabulary, settings=setting.apply(base))
                    target = out / protocol.name / setting.slug
                    run = evaluate(segmentor, dataset, target, EvalOptions())
                    results[protocol.name][setting.name] = run.metrics
                done += 1
                if progress is not None:
                    progress(protocol.name, setting.name, done, total)
        if shard.rank == 0:
            write_ablation(out, results, grid)
    finally:
        shard.close()
    return results


def _delta(value: float, base: float) -> float:
    return value - base if not (math.isnan(value) or math.isnan(base)) else math.nan


def write_ablation(
    out_dir: Path, results: dict[str, dict[str, dict[str, Any]]], grid: list[AblationSetting]
) -> None:
    """Write ``ablation.md``, ``ablation.csv`` and ``ablation.png`` (mIoU and delta vs baseline)."""
    names = [s.name for s in grid]
    datasets = list(results)
    miou = {d: {s: float(results[d][s]["mIoU"]) for s in names} for d in datasets}
    best = {
        d: max(names, key=lambda s, d=d: -math.inf if math.isnan(miou[d][s]) else miou[d][s])
        for d in datasets
    }
    lines = [
        "# Ablation: token refinement vs the unrefined baseline",
        "",
        "mIoU (%) per dataset; in brackets the difference from the baseline; **bold** = best per dataset.",
        "",
        "| setting | refine | " + " | ".join(datasets) + " |",
        "| --- | --- |" + " --- |" * len(datasets),
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "setting",
            "refine",
            "refine_at",
            "refine_for",
            "adapter",
            *[f"{d} mIoU" for d in datasets],
            *[f"{d} delta" for d in datasets],
        ]
    )
    for setting in grid:
        cells = []
        for d in datasets:
            value, delta = miou[d][setting.name], _delta(miou[d][setting.name], miou[d][BASELINE])
            text = f"{value:.2f}" + ("" if setting.name == BASELINE else f" ({delta:+.2f})")
            cells.append(f"**{text}**" if best[d] == setting.name else text)
        where = "" if not setting.refine else f" @{setting.refine_at}/{setting.refine_for}"
        where += f" + adapter `{setting.adapter}`" if setting.adapter else ""
        lines.append(f"| {setting.name} | `{setting.refine or '-'}`{where} | " + " | ".join(cells) + " |")
        writer.writerow(
            [
                setting.name,
                setting.refine,
                setting.refine_at,
                setting.refine_for,
                setting.adapter,
                *[f"{miou[d][setting.name]:.4f}" for d in datasets],
                *[f"{_delta(miou[d][setting.name], miou[d][BASELINE]):.4f}" for d in datasets],
            ]
        )
    write_text_atomic(out_dir / "ablation.md", "\n".join(lines) + "\n")
    write_text_atomic(out_dir / "ablation.csv", buffer.getvalue())
    _chart(out_dir / "ablation.png", miou, grid)


def _chart(path: Path, miou: dict[str, dict[str, float]], grid: list[AblationSetting]) -> None:
    """Grouped bars: delta mIoU of each setting vs the baseline, per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(miou)
    settings = [s.name for s in grid if s.name != BASELINE]
    width = 0.8 / max(len(datasets), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(settings) + 2), 4))
    for i, d in enumerate(datasets):
        deltas = [_delta(miou[d][s], miou[d][BASELINE]) for s in settings]
        xs = [j + (i - (len(datasets) - 1) / 2) * width for j in range(len(settings))]
        ax.bar(
            xs,
            [0 if math.isnan(v) else v for v in deltas],
            width,
            label=f"{d} (base {miou[d][BASELINE]:.2f})",
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(settings, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mIoU - baseline (points)")
    ax.set_title("Token refinement vs baseline")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=120)
    plt.close(fig)
