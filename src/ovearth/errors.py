"""Exceptions that carry one clear sentence for the user.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``; the
library raises these instead of letting a user mistake surface as a traceback from
deep inside torch or rasterio.
"""

from __future__ import annotations


class OvearthError(Exception):
    """Base class: a problem the user can fix, described in one sentence."""

    exit_code: int = 1


class InputError(OvearthError, ValueError):
    """A bad input file, argument or setting (names the file or value and the problem)."""

    exit_code = 1


class ModelNotFoundError(OvearthError, FileNotFoundError):
    """The SAM 3 weights are neither local nor reachable; says how to get them."""

    exit_code = 2


class CheckpointError(OvearthError, ValueError):
    """A checkpoint file exists but cannot be converted or loaded strictly."""

    exit_code = 2
