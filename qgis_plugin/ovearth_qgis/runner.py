"""Run ``ovearth`` as a subprocess: progress, cancellation, the error line.

This module does not import QGIS (nor torch, nor ovearth): QGIS's Python only starts
the ``ovearth`` of another environment and reads what it prints and writes. It is
unit-tested without QGIS (``tests/test_qgis_runner.py``). The command lines are built by
:mod:`.commands`, what a run wrote is read by :mod:`.outputs`.

* :class:`ProgressParser` turns ovearth's plain progress lines
  (``segment: 3/10 (30 %), 0.5/s, ETA 0m14s``) into a percentage.
* :func:`run_ovearth` runs a command, reports lines and progress, polls a cancel
  callback and on cancel ends the whole process group and removes what the run had
  begun to write (:class:`Cancelled`); a failure raises :class:`OvearthFailed` with
  ovearth's ``error:`` line.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import Cancelled, ExecutableNotFound, OvearthFailed
from .outputs import OutputGuard

#: Seconds between ovearth's plain progress lines when run from QGIS.
PROGRESS_SECONDS = "1"

#: Seconds a cancelled run gets to stop after an interrupt before it is killed.
GRACE_SECONDS = 5.0

#: Seconds the output is still read after ovearth ended (a child it left may hold the pipe open).
PIPE_GRACE_SECONDS = 2.0

#: Variables of QGIS's own Python that must not leak into ovearth's environment.
PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")

#: ``label: done/total`` at the start of a plain progress line.
PROGRESS_LINE = re.compile(r"^(?P<label>[^:\r\n]{1,80}): (?P<done>\d+)/(?P<total>\d+|\?)")

#: ``label: done, N in 1m02s``: the closing line.
DONE_LINE = re.compile(r"^(?P<label>[^:\r\n]{1,80}): done\b")


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
                if time.monotonic() - ended_at > PIPE_GRACE_SECONDS:
                    break
        if cancelled:
            _stop(process, grace_seconds)
        else:
            process.wait()
    finally:
        if process.poll() is None:  # an exception in a callback: never leave ovearth running
            _stop(process, grace_seconds)
            cancelled = True
        thread.join(timeout=PIPE_GRACE_SECONDS)
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
