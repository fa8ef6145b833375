"""The reproduction table: ovearth's numbers beside the published ones, as Markdown, CSV, JSON and a chart.

The published figures live in one data file, ``configs/published.yaml``: one entry per
source (the SegEarth-OV3 paper, other groups' re-runs of its code, the ProC-SAM3 paper),
each with who measured, where it was published, how it was read, and ``{dataset: mIoU}``.
:func:`write_table` puts every source in a column with the difference ``ovearth - published``
(in points), and an average over the datasets run (a source's average only when it has a
figure for every one of them).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_path, write_text_atomic
from ..data.protocols import list_protocols
from ..data.safe_yaml import parse_yaml
from ..errors import InputError
from .reports import _fmt, _json_safe

#: what a source is: printed in the method's paper, a file of a repository, or another group's run
KINDS = ("paper", "repository file", "re-run")
_FIELDS = ("id", "label", "method", "kind", "by", "where", "url", "read_from", "miou")


@dataclass(frozen=True)
class PublishedSource:
    """One source of published figures (an entry of ``configs/published.yaml``).

    Attributes:
        id: short identifier (CSV and JSON keys).
        label: column heading.
        method: the method measured (``SegEarth-OV3``, ``ProC-SAM3``).
        kind: one of :data:`KINDS`.
        by: who measured.
        where: the publication and the table or file.
        url: where to read it.
        read_from: how the figures were read here (the exact place, quotes).
        miou: ``{protocol name: figure in percent}``.

    """

    id: str
    label: str
    method: str
    kind: str
    by: str
    where: str
    url: str
    read_from: str
    miou: dict[str, float]


def load_published(text: str | None = None) -> list[PublishedSource]:
    """The sources of ``configs/published.yaml`` (or of ``text`` in its schema), in file order.

    Raises:
        InputError: a missing or empty field, an unknown kind or dataset, a figure that is
            not a number in [0, 100], or a repeated id.

    """
    where = "configs/published.yaml"
    if text is None:
        text = resources.files("ovearth").joinpath("configs").joinpath("published.yaml").read_text()
    data = parse_yaml(text, where) or {}
    entries = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{where}: expected 'sources:' with a list of entries.")
    known, sources = set(list_protocols()), []
    for entry in entries:
        if not isinstance(entry, dict):
            raise InputError(f"{where}: every source must be a mapping with {', '.join(_FIELDS)}.")
        name = entry.get("id", "?")
        missing = [k for k in _FIELDS if not entry.get(k)]
        if missing or set(entry) - set(_FIELDS):
            bad = missing[0] if missing else sorted(set(entry) - set(_FIELDS))[0]
            raise InputError(f"{where}: source '{name}' has a missing or unknown field '{bad}'.")
        if entry["kind"] not in KINDS:
            raise InputError(
                f"{where}: source '{name}' has kind '{entry['kind']}'; use one of {', '.join(KINDS)}."
            )
        figures = entry["miou"]
        if not isinstance(figures, dict):
            raise InputError(f"{where}: source '{name}': 'miou' must map dataset names to numbers.")
        for dataset, value in figures.items():
            if dataset not in known:
                raise InputError(f"{where}: source '{name}' names an unknown dataset '{dataset}'.")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise InputError(f"{where}: source '{name}', {dataset}: {value!r} is not a percentage.")
        if name in {s.id for s in sources}:
            raise InputError(f"{where}: the id '{name}' appears twice.")
        fields = {k: str(entry[k]).strip() for k in _FIELDS if k != "miou"}
        sources.append(PublishedSource(**fields, miou={d: float(v) for d, v in figures.items()}))
    return sources


def _nan(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _delta(ours: float, published: float | None) -> float | None:
    return None if _nan(ours) or _nan(published) else ours - published  # type: ignore[operator]


def _averages(rows: list[dict[str, Any]], sources: list[PublishedSource]) -> dict[str, dict[str, Any]]:
    """Per setting: ovearth's mean over its datasets, and each source's over the same ones (if it has all)."""
    out: dict[str, dict[str, Any]] = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        names = [r["dataset"] for r in mine]
        scores = [r["score"] for r in mine]
        score = math.fsum(scores) / len(scores) if scores and not any(map(_nan, scores)) else None
        published = {}
        for source in sources:
            have = [source.miou[n] for n in names if n in source.miou]
            value = math.fsum(have) / len(have) if have and len(have) == len(names) else None
            deltas = [_delta(r["score"], source.miou.get(r["dataset"])) for r in mine]
            deltas = [d for d in deltas if d is not None]
            published[source.id] = {
                "value": value,
                "delta": None if score is None else _delta(score, value),
                "covers": f"{len(have)} of {len(names)}",
                "mean_delta": math.fsum(deltas) / len(deltas) if deltas else None,
            }
        out[setting] = {"datasets": names, "score": score, "published": published}
    return out


def write_table(
    out_dir: str | Path,
    rows: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    sources: list[PublishedSource],
    record: dict[str, Any],
    baseline: str | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Write ``table.json``, ``table.md``, ``table.csv`` and ``table.png``; return ``table.json``'s content.

    Args:
        out_dir: output folder.
        rows: one per dataset and setting (``dataset``, ``title``, ``setting``, ``metric``,
            ``score``, ``num_images``, ``computed_images``, ``folder``...).
        skipped: ``{"dataset", "reason"}`` per dataset not run.
        sources: the published figures.
        record: what the command ran with (kept in the JSON).
        baseline: the setting the others are compared with (a grid's baseline), or None.
        write: False computes the content without writing (torchrun ranks > 0).

    """
    out = Path(out_dir)
    by_key = {(r["setting"], r["dataset"]): r for r in rows}
    for row in rows:
        row["published"] = {
            s.id: {
                "value": s.miou.get(row["dataset"]),
                "delta": _delta(row["score"], s.miou.get(row["dataset"])),
            }
            for s in sources
        }
        if baseline is not None:
            base = by_key.get((baseline, row["dataset"]))
            row["vs_baseline"] = None if base is None else _delta(row["score"], base["score"])
    table = {
        "rows": rows,
        "average": _averages(rows, sources),
        "skipped": skipped,
        "baseline": baseline,
        "sources": [dataclasses.asdict(s) for s in sources],
        "record": record,
    }
    if write:
        text = json.dumps(_json_safe(table), indent=2, allow_nan=False, default=str)
        write_text_atomic(out / "table.json", text + "\n")
        write_text_atomic(out / "table.md", _markdown(table, sources))
        write_text_atomic(out / "table.csv", _csv(table, sources))
        _chart(out / "table.png", table, sources)
    return table


def _markdown(table: dict[str, Any], sources: list[PublishedSource]) -> str:
    rows, grid = table["rows"], table["baseline"] is not None
    lines = [
        "# SegEarth-OV3's table, reproduced by ovearth",
        "",
        "Per dataset: ovearth's number (mIoU, or the foreground IoU of a building / road / water set), "
        "then each published figure with, in brackets, ovearth minus it (points); `-` = none published. "
        "Average row: the mean over the datasets run; a source without a figure for all of them shows "
        "the mean difference over those it has.",
        "",
    ]
    head = (["setting"] if grid else []) + ["dataset", "metric", "ovearth"]
    head += (["vs baseline"] if grid else []) + [s.label for s in sources] + ["images (computed)"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def cell(v: dict[str, Any]) -> str:
        if not _nan(v["value"]):
            return f"{v['value']:.2f}" + ("" if _nan(v["delta"]) else f" ({v['delta']:+.2f})")
        if not _nan(v.get("mean_delta")):  # an average row, the source covering some datasets
            return f"- ({v['mean_delta']:+.2f} over {v['covers']})"
        return "-"

    def cells(values: dict[str, dict[str, Any]]) -> list[str]:
        return [cell(values[s.id]) for s in sources]

    for setting, average in table["average"].items():
        for row in (r for r in rows if r["setting"] == setting):
            line = ([setting] if grid else []) + [row["title"], row["metric"], _fmt(row["score"])]
            line += (
                [f"{row['vs_baseline']:+.2f}" if not _nan(row.get("vs_baseline")) else "-"] if grid else []
            )
            line += cells(row["published"]) + [f"{row['num_images']} ({row['computed_images']})"]
            lines.append("| " + " | ".join(line) + " |")
        line = ([setting] if grid else []) + [
            f"**average ({len(average['datasets'])})**",
            "",
            f"**{_fmt(average['score'])}**",
        ]
        line += [""] if grid else []
        lines.append("| " + " | ".join(line + cells(average["published"]) + [""]) + " |")
    if table["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s['dataset']}: {s['reason']}" for s in table["skipped"]]
    lines += ["", "## Sources", ""]
    for s in sources:
        lines.append(f"- **{s.label}** ({s.kind}, {s.by}): {s.where}. <{s.url}>. Read from: {s.read_from}.")
    record = table["record"]
    if record:
        lines += ["", "## Run", "", "```json", json.dumps(record, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def _csv(table: dict[str, Any], sources: list[PublishedSource]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["setting", "dataset", "metric", "ovearth", "vs_baseline", "images", "computed"]
        + [f"{s.id}{part}" for s in sources for part in ("", " delta")]
    )

    def number(value: float | None) -> str:
        return "" if _nan(value) else repr(float(value))  # type: ignore[arg-type]

    for setting, average in table["average"].items():
        for row in (r for r in table["rows"] if r["setting"] == setting):
            published = [number(row["published"][s.id][k]) for s in sources for k in ("value", "delta")]
            writer.writerow(
                [setting, row["dataset"], row["metric"], number(row["score"]), number(row.get("vs_baseline"))]
                + [row["num_images"], row["computed_images"], *published]
            )
        published = [number(average["published"][s.id][k]) for s in sources for k in ("value", "delta")]
        writer.writerow([setting, "average", "", number(average["score"]), "", "", "", *published])
    for item in table["skipped"]:
        writer.writerow(["", item["dataset"], "skipped", "", "", "", "", *[""] * (2 * len(sources))])
    return buffer.getvalue()


def _chart(path: Path, table: dict[str, Any], sources: list[PublishedSource]) -> None:
    """Bars: ovearth per dataset (one colour per setting); markers: the published figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(table["average"])
    datasets = list(dict.fromkeys(r["dataset"] for r in table["rows"]))
    titles = {r["dataset"]: r["title"] for r in table["rows"]}
    score = {(r["setting"], r["dataset"]): r["score"] for r in table["rows"]}
    width = 0.8 / max(len(settings), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(datasets) + 2), 4.2))
    for i, setting in enumerate(settings):
        xs = [j + (i - (len(settings) - 1) / 2) * width for j in range(len(datasets))]
        values = [score.get((setting, d), math.nan) for d in datasets]
        label = "ovearth" if len(settings) == 1 else f"ovearth: {setting}"
        ax.bar(xs, [0 if _nan(v) else v for v in values], width, label=label, alpha=0.85)
    styles = [dict(marker="_", s=700, linewidths=3, color="black")]  # the first source: a bar-wide line
    styles += [dict(marker=m, s=70) for m in "ox^vsd*P"]
    for k, source in enumerate(sources):
        points = [(j, source.miou[d]) for j, d in enumerate(datasets) if d in source.miou]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, zorder=3 + (k == 0), label=source.label, **styles[min(k, len(styles) - 1)])
    ax.set_xticks(range(len(datasets)))
    ax.set_xticklabels([titles[d] for d in datasets], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mIoU (%) / foreground IoU")
    ax.set_title("ovearth vs published SegEarth-OV3 figures")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=120)
    plt.close(fig)
