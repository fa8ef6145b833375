"""Run ``ovearth`` as a subprocess: command lines, progress, cancellation, results.

This module does not import QGIS (nor torch, nor ovearth): QGIS's Python only starts
the ``ovearth`` of another environment and reads what it prints and writes. It is
unit-tested without QGIS (``tests/test_qgis_runner.py``).

* :func:`find_executable` chooses the ``ovearth`` to run: an explicit setting, else
  ``$OVEARTH_EXECUTABLE``, else ``ovearth`` on ``PATH``.
* :func:`segment_command`, :func:`vectorize_command`, :func:`eval_command` build the
  command lines from the algorithms' parameters.
* :class:`ProgressParser` turns ovearth's plain progress lines
  (``segment: 3/10 (30 %), 0.5/s, ETA 0m14s``) into a percentage.
* :func:`run_ovearth` runs a command, reports lines and progress, polls a cancel
  callback and on cancel ends the whole process group and removes what the run had
  begun to write (:class:`Cancelled`); a failure raises :class:`OvearthFailed` with
  ovearth's ``error:`` line.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variable naming the ovearth executable (or its environment's Python, or folder).
EXECUTABLE_VARIABLE = "OVEARTH_EXECUTABLE"

#: Seconds between ovearth's plain progress lines when run from QGIS.
PROGRESS_SECONDS = "1"

#: Seconds a cancelled run gets to stop after an interrupt before it is killed.
GRACE_SECONDS = 5.0

#: Variables of QGIS's own Python that must not leak into ovearth's environment.
PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")

#: ``label: done/total`` at the start of a plain progress line.
PROGRESS_LINE = re.compile(r"^(?P<label>[^:\r\n]{1,80}): (?P<done>\d+)/(?P<total>\d+|\?)")

#: ``label: done, N in 1m02s``: the closing line.
DONE_LINE = re.compile(r"^(?P<label>[^:\r\n]{1,80}): done\b")


class OvearthError(Exception):
    """Base of the runner's errors: the message is one sentence for the user."""


class ExecutableNotFound(OvearthError):
    """No ovearth executable could be found or it is not a runnable file."""


class OvearthFailed(OvearthError):
    """ovearth ended with a non-zero exit code; the message is its ``error:`` line."""

    def __init__(self, message: str, returncode: int, lines: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.lines = list(lines)


class Cancelled(OvearthError):
    """The run was cancelled: the process group ended and the run's new files were removed."""


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


# --------------------------------------------------------------------------- progress


@dataclass
class ProgressParser:
    """Turn ovearth's plain progress lines into a percentage of the whole run.

    ``segment: 3/10 (30 %), ...`` sets the share of finished images; a line whose label
    names windows (``... windows: 4/12``) is the share of the current image and fills
    the gap to the next image; ``segment: done, ...`` is 100.
    """

    percent: float = 0.0
    items: tuple | None = None  # (done, total) of the main count

    def feed(self, line: str) -> float | None:
        """The new percentage if ``line`` is a progress line, else None."""
        line = line.strip()
        if DONE_LINE.match(line):
            self.percent = 100.0
            return self.percent
        found = PROGRESS_LINE.match(line)
        if not found or found.group("total") == "?":
            return None
        done, total = int(found.group("done")), int(found.group("total"))
        if total <= 0:
            return None
        if "window" in found.group("label").lower():
            base, count = self.items if self.items else (0, 1)
            share = (base + min(done, total) / total) / max(count, 1)
        else:
            self.items = (min(done, total), total)
            share = min(done, total) / total
        self.percent = max(self.percent, 100.0 * min(share, 1.0))  # never backwards
        return self.percent


# --------------------------------------------------------------------------- running


@dataclass
class RunResult:
    """A finished run: its exit code and every line it printed."""

    returncode: int
    lines: list[str] = field(default_factory=list)


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Ovearth's environment: the caller's without QGIS's Python variables, with frequent progress."""
    env = dict(os.environ if base is None else base)
    for name in PYTHON_VARIABLES:
        env.pop(name, None)
    env.setdefault("OVEARTH_PROGRESS_SECONDS", PROGRESS_SECONDS)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("NO_COLOR", "1")
    return env


def error_message(lines: Sequence[str], returncode: int) -> str:
    """Ovearth's ``error: ...`` line (the last one), else the last lines it printed."""
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    tail = " | ".join(line for line in lines[-5:] if line.strip())
    return f"ovearth stopped with exit code {returncode}" + (f": {tail}" if tail else ".")


def run_ovearth(
    command: Sequence[str],
    on_line: Callable[[str], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    cleanup: OutputGuard | None = None,
    env: dict[str, str] | None = None,
    poll_seconds: float = 0.1,
    grace_seconds: float = GRACE_SECONDS,
) -> RunResult:
    """Run ``command`` to its end, or until ``is_cancelled()`` turns true.

    Output (stdout and stderr together) goes line by line to ``on_line``; progress lines
    to ``on_progress`` as a percentage. On cancel the process group gets an interrupt
    (ovearth removes its temporary files), after ``grace_seconds`` a kill, and then
    ``cleanup`` removes the files the run had created.

    Raises:
        Cancelled: the run was cancelled (the process group has ended).
        OvearthFailed: a non-zero exit code, with ovearth's error line.
        ExecutableNotFound: the executable could not be started.

    """
    parser = ProgressParser()
    lines: list[str] = []
    if cleanup is not None:
        cleanup.snapshot()
    try:
        process = _start(list(command), child_environment(env))
    except OSError as error:
        raise ExecutableNotFound(f"could not start {command[0]}: {error}.") from None
    reader = queue.Queue()  # type: queue.Queue
    thread = threading.Thread(target=_read_lines, args=(process.stdout, reader), daemon=True)
    thread.start()
    cancelled = False
    try:
        ended_at = None
        while True:
            finished = _drain(reader, lines, parser, on_line, on_progress, poll_seconds)
            if finished:
                break
            if is_cancelled is not None and is_cancelled():
                cancelled = True
                break
            if process.poll() is not None:  # ended; a child may still hold the pipe open
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > 2.0:
                    break
        if cancelled:
            _stop(process, grace_seconds)
        else:
            process.wait()
    finally:
        if process.poll() is None:  # an exception in a callback: never leave ovearth running
            _stop(process, grace_seconds)
            cancelled = True
        thread.join(timeout=2)
        _drain_rest(reader, lines, on_line)
        if process.stdout is not None and not thread.is_alive():  # else the reader closes it at its end
            process.stdout.close()
        if cancelled and cleanup is not None:
            cleanup.remove_new()
    if cancelled:
        raise Cancelled("cancelled: ovearth was stopped and the files it had begun to write were removed.")
    if process.returncode != 0:
        raise OvearthFailed(error_message(lines, process.returncode), process.returncode, lines)
    if on_progress is not None:
        on_progress(100.0)
    return RunResult(process.returncode, lines)


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    kwargs = {}  # type: dict
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
            subprocess, "CREATE_NO_WINDOW", 0
        )
    else:
        kwargs["start_new_session"] = True  # its own process group: cancel ends it and its children
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        **kwargs,
    )


_END = object()


def _read_lines(stream, sink: queue.Queue) -> None:
    try:
        for line in stream:
            sink.put(line.rstrip("\r\n"))
    except (OSError, ValueError):
        pass
    finally:
        sink.put(_END)
        try:
            stream.close()
        except (OSError, ValueError):
            pass


def _drain(reader, lines, parser, on_line, on_progress, timeout: float) -> bool:
    """Handle the lines waiting (at most ``timeout`` seconds for the first); True at the end of output."""
    try:
        item = reader.get(timeout=timeout)
    except queue.Empty:
        return False
    while True:
        if item is _END:
            return True
        lines.append(item)
        if on_line is not None:
            on_line(item)
        percent = parser.feed(item)
        if percent is not None and on_progress is not None:
            on_progress(percent)
        try:
            item = reader.get_nowait()
        except queue.Empty:
            return False


def _drain_rest(reader, lines, on_line) -> None:
    while True:
        try:
            item = reader.get_nowait()
        except queue.Empty:
            return
        if item is _END:
            return
        lines.append(item)
        if on_line is not None:
            on_line(item)


def _stop(process: subprocess.Popen, grace_seconds: float) -> None:
    """Interrupt the process group, then kill it if it has not ended after ``grace_seconds``."""
    _signal_group(process, interrupt=True)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, interrupt=False)  # children of the group may outlive the leader
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(process: subprocess.Popen, interrupt: bool) -> None:
    try:
        if os.name == "nt":
            if interrupt:
                process.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
        else:
            os.killpg(process.pid, signal.SIGINT if interrupt else signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


# --------------------------------------------------------------------------- outputs


class OutputGuard:
    """What a run may create in a folder: on cancel, the files it created are removed.

    Only names the run can write are touched: ovearth's hidden temporary files
    (``.*.part*``), names starting with one of ``prefixes`` (e.g. ``<stem>_``) and the
    names in ``names`` (e.g. ``run.json``), and only those that were not there before.
    """

    def __init__(self, folder: str, prefixes: Sequence[str] = (), names: Sequence[str] = ()) -> None:
        self.folder = Path(folder)
        self.prefixes = tuple(prefixes)
        self.names = tuple(names)
        self.before = set()  # type: set

    def snapshot(self) -> None:
        """Remember what the folder holds now."""
        self.before = set(self._listing())

    def _listing(self) -> list[str]:
        try:
            return [p.name for p in self.folder.iterdir()]
        except OSError:
            return []

    def _ours(self, name: str) -> bool:
        return (
            (name.startswith(".") and ".part" in name) or name.startswith(self.prefixes) or name in self.names
        )

    def remove_new(self) -> list[str]:
        """Remove the run's new files (and folders); return their names."""
        removed = []
        for name in sorted(set(self._listing()) - self.before):
            if not self._ours(name):
                continue
            path = self.folder / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(str(path))
                else:
                    path.unlink()
                removed.append(name)
            except OSError:
                pass
        return removed


def output_stem(image: str) -> str:
    """The stem ovearth names an image's outputs after (``scene.tif`` -> ``scene``)."""
    name = re.split(r"[?#]", str(image).rstrip("/\\"))[0]
    name = re.split(r"[/\\]", name)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def segment_outputs(folder: str, image: str | None = None) -> dict[str, str]:
    """The files ``ovearth segment`` wrote for ``image`` (the only one when None), from ``run.json``.

    Returns:
        ``{"labels": ..., "style": ..., "scores": ..., "polygons": ..., "objects": ..., ...}``:
        the kinds it wrote, as absolute paths.

    Raises:
        OvearthError: no run.json or no entry for the image.

    """
    record_path = Path(folder) / "run.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OvearthError(f"ovearth wrote no readable run.json in {folder}: {error}.") from None
    entries = record.get("images") or []
    if image is not None and len(entries) > 1:
        wanted = _same_file_key(image)
        entries = [e for e in entries if _same_file_key(str(e.get("image", ""))) == wanted] or entries[-1:]
    if not entries:
        raise OvearthError(f"{record_path} lists no segmented image.")
    outputs = entries[-1].get("outputs") or {}
    return {kind: str(Path(folder, path)) for kind, path in outputs.items() if path}


def _same_file_key(path: str) -> str:
    if "://" in path:
        return path
    try:
        return os.path.normcase(os.path.realpath(path))
    except OSError:
        return path


def metrics_summary(folder: str) -> dict[str, float]:
    """mIoU, mAcc and aAcc (percent) from ``metrics.json`` of an ``ovearth eval`` output folder."""
    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OvearthError(f"ovearth wrote no readable metrics.json in {folder}: {error}.") from None
    return {key: float(metrics[key]) for key in ("mIoU", "mAcc", "aAcc") if key in metrics}


def palette_from_qml(style: str) -> list[tuple]:
    """``[(value, "#rrggbb", label), ...]`` of the paletted style ovearth writes beside the labels."""
    try:
        root = ElementTree.parse(style).getroot()
    except (OSError, ElementTree.ParseError):
        return []
    entries = []
    for entry in root.iter("paletteEntry"):
        try:
            entries.append(
                (int(entry.get("value", "")), entry.get("color", "#000000"), entry.get("label", ""))
            )
        except ValueError:
            continue
    return entries
