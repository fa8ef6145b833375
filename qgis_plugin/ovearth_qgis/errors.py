"""The plugin's errors (no QGIS import): each message is one sentence for the user."""

from __future__ import annotations

from collections.abc import Sequence


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
