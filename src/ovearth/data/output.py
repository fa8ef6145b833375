"""The output folder: checked before any work, cleaned of what a killed run left."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import InputError
from .describe import SIDECAR_SUFFIXES

logger = logging.getLogger(__name__)

#: stems of the files ``segment`` writes for an input ``<stem>``: never inputs themselves
#: (``_probs``: the scores raster's name before ``_scores``, still skipped in old folders)
OUTPUT_STEM_ENDINGS = ("_labels", "_overlay", "_scores", "_probs")


def check_output_dir(path: str | Path) -> Path:
    """An output folder that exists as a folder or can be created, and can be written.

    Nothing is created: the nearest existing folder on the path must be writable
    (``os.access``, which also reports a read-only mount).

    Raises:
        InputError: ``path`` is a file, lies under a file, or cannot be written.

    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"-o {path}: this is a file, not a folder; give a folder for the outputs.")
    check_writable_under(path, f"-o {path}", "no folder can be made under it")
    return path


def check_writable_under(path: Path, label: str, what: str) -> None:
    """Raise InputError unless the nearest existing folder at or above ``path`` can be written.

    ``label`` starts the sentence (the option or file); ``what`` says what a file in the
    way prevents (e.g. "no folder can be made under it").
    """
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{label}: {existing} is a file, so {what}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{label}: {existing} cannot be written (read-only or no permission).")


def is_own_output(file: Path) -> bool:
    """Whether ``file`` is named like an output of ``segment``.

    That is ``<stem>_labels.tif``, ``_overlay.png``, ``_scores.tif`` and so on, and the
    sidecars of a labels GeoTIFF (``<stem>_labels.tif.aux.xml``, ``<stem>_labels.qml``,
    see :func:`~ovearth.data.describe.sidecar_paths`).
    """
    name = Path(file).name
    for suffix in SIDECAR_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(name).stem.endswith(OUTPUT_STEM_ENDINGS)


def remove_stale_parts(folder: str | Path) -> int:
    """Delete the temporary ``.<name>.part<suffix>`` files a killed run left in ``folder``.

    Returns:
        How many were removed.

    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.glob(".*.part*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temporary file(s) left by an interrupted run in %s", len(stale), folder)
    return len(stale)
