"""Which ``ovearth`` to run and its command lines (no QGIS import; ``tests/test_qgis_runner.py``).

* :func:`find_executable` chooses the ``ovearth`` to run: an explicit setting, else
  ``$OVEARTH_EXECUTABLE``, else ``ovearth`` on ``PATH``.
* :func:`segment_command`, :func:`vectorize_command`, :func:`eval_command` build the
  command lines from the algorithms' parameters.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ExecutableNotFound, OvearthError

#: Environment variable naming the ovearth executable (or its environment's Python, or folder).
EXECUTABLE_VARIABLE = "OVEARTH_EXECUTABLE"

# --------------------------------------------------------------------------- executable


def find_executable(setting: str | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """The command prefix that runs ovearth, e.g. ``["/opt/ovearth/.venv/bin/ovearth"]``.

    The first non-empty of ``setting`` (the plugin's setting), ``$OVEARTH_EXECUTABLE`` and
    ``ovearth`` on ``PATH`` is used. It may name the ``ovearth`` script, the Python of the
    environment ovearth is installed in (run as ``python -m ovearth``), or the environment's
    folder (its ``bin/ovearth`` or ``Scripts/ovearth.exe``).

    Raises:
        ExecutableNotFound: nothing usable was found, with what was tried.

    """
    environ = os.environ if environ is None else environ
    for source, value in (
        ("the plugin setting", setting),
        (EXECUTABLE_VARIABLE, environ.get(EXECUTABLE_VARIABLE)),
    ):
        value = (value or "").strip().strip('"')
        if value:
            return _resolve(Path(os.path.expanduser(value)), source)
    found = shutil.which("ovearth", path=environ.get("PATH"))
    if found:
        return [found]
    raise ExecutableNotFound(
        "ovearth was not found: set the ovearth executable in Settings > Options > Processing > "
        f"Providers > ovearth, or the environment variable {EXECUTABLE_VARIABLE}, or put ovearth on PATH."
    )


def _resolve(path: Path, source: str) -> list[str]:
    if path.is_dir():
        for candidate in (path / "bin" / "ovearth", path / "Scripts" / "ovearth.exe", path / "ovearth"):
            if candidate.is_file():
                return [str(candidate)]
        raise ExecutableNotFound(f"{source} names the folder {path}, which holds no bin/ovearth.")
    if not path.is_file():
        raise ExecutableNotFound(f"{source} names {path}, which does not exist.")
    if not os.access(str(path), os.X_OK):
        raise ExecutableNotFound(f"{source} names {path}, which is not executable.")
    if path.name.lower().startswith("python"):
        return [str(path), "-m", "ovearth"]
    return [str(path)]


# --------------------------------------------------------------------------- command lines


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _number(value: object) -> str:
    """A number as ovearth's option parser reads it: integers without ``.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class SegmentOptions:
    """The Segment raster algorithm's choices; ``None`` or ``""`` means ovearth's default.

    Attributes:
        image: the raster file (or https:// / s3:// GeoTIFF, STAC item) to segment.
        output: the output folder.
        classes: e.g. ``"building,house;road;tree"`` (or ``preset``).
        preset: a dataset protocol, e.g. ``loveda``.
        windowed: True ``--windowed``, False ``--whole``, None ovearth's choice.
        extra: more ovearth options, one string split as a shell would.

    """

    image: str
    output: str
    classes: str = ""
    preset: str = ""
    model: str = ""
    device: str = ""
    prob_thd: str = ""
    confidence_threshold: float | None = None
    slide_crop: int | None = None
    slide_stride: int | None = None
    windowed: bool | None = None
    bands: str = ""
    scores: bool = False
    vector: bool = False
    objects: bool = False
    min_area: float | None = None
    simplify: float | None = None
    overwrite: bool = False
    extra: str = ""


def segment_command(executable: Sequence[str], options: SegmentOptions) -> list[str]:
    """``ovearth segment IMAGE -o OUTPUT ...`` for ``options``.

    Raises:
        OvearthError: neither or both of classes and preset.

    """
    classes, preset = _text(options.classes), _text(options.preset)
    if bool(classes) == bool(preset):
        raise OvearthError("give either classes (e.g. 'building,house;road;tree') or a preset (e.g. loveda).")
    command = [*executable, "segment", _text(options.image), "-o", _text(options.output)]
    command += ["--classes", classes] if classes else ["--preset", preset]
    for flag, value in (("--model", options.model), ("--device", options.device)):
        if _text(value):
            command += [flag, _text(value)]
    if _text(options.prob_thd):
        command += ["--prob-thd", _text(options.prob_thd)]
    for flag, value in (
        ("--confidence-threshold", options.confidence_threshold),
        ("--slide-crop", options.slide_crop),
        ("--slide-stride", options.slide_stride),
        ("--min-area", options.min_area),
        ("--simplify", options.simplify),
    ):
        if value is not None:
            command += [flag, _number(value)]
    if options.windowed is not None:
        command.append("--windowed" if options.windowed else "--whole")
    if _text(options.bands):
        command += ["--bands", _text(options.bands).replace(" ", "")]
    if options.scores:
        command.append("--scores")
    if options.vector:
        command += ["--vector", "gpkg"]
    if options.objects:
        command.append("--objects")
    if options.overwrite:
        command.append("--overwrite")
    command += split_extra(options.extra)
    return command


def vectorize_command(
    executable: Sequence[str],
    labels: str,
    output: str,
    classes: str = "",
    scores: str = "",
    min_area: float | None = None,
    simplify: float | None = None,
) -> list[str]:
    """``ovearth vectorize LABELS -o OUTPUT ...``."""
    command = [*executable, "vectorize", _text(labels), "-o", _text(output)]
    if _text(classes):
        command += ["--classes", _text(classes)]
    if _text(scores):
        command += ["--scores", _text(scores)]
    for flag, value in (("--min-area", min_area), ("--simplify", simplify)):
        if value is not None:
            command += [flag, _number(value)]
    return command


def eval_command(
    executable: Sequence[str],
    data_root: str,
    output: str,
    dataset: str = "",
    dataset_config: str = "",
    model: str = "",
    device: str = "",
    limit: int | None = None,
    prob_thd: str = "",
    confidence_threshold: float | None = None,
    save_predictions: bool = False,
    extra: str = "",
) -> list[str]:
    """``ovearth eval --data-root ROOT -o OUTPUT --dataset NAME | --dataset-config YAML ...``.

    Raises:
        OvearthError: neither or both of dataset and dataset_config.

    """
    dataset, dataset_config = _text(dataset), _text(dataset_config)
    if bool(dataset) == bool(dataset_config):
        raise OvearthError("give either a built-in dataset protocol (e.g. loveda) or a protocol YAML file.")
    command = [*executable, "eval", "--data-root", _text(data_root), "-o", _text(output)]
    command += ["--dataset", dataset] if dataset else ["--dataset-config", dataset_config]
    for flag, value in (("--model", model), ("--device", device), ("--prob-thd", prob_thd)):
        if _text(value):
            command += [flag, _text(value)]
    if limit is not None:
        command += ["--limit", str(int(limit))]
    if confidence_threshold is not None:
        command += ["--confidence-threshold", _number(confidence_threshold)]
    if save_predictions:
        command.append("--save-predictions")
    command += split_extra(extra)
    return command


def split_extra(extra: str) -> list[str]:
    """More ovearth options typed as one string (``--refine 'smooth:a=0.2' --zoom k=4``).

    Raises:
        OvearthError: unbalanced quotes.

    """
    try:
        return shlex.split(_text(extra), posix=os.name != "nt")
    except ValueError as error:
        raise OvearthError(f"extra options {extra!r}: {error}.") from None
