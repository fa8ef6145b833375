"""The environment variables ``ovearth`` reads, each checked, each bad value one sentence.

==============================  ==============================================================
``WORLD_SIZE``, ``RANK``,       set by ``torchrun``: integers, ``0 <= RANK < WORLD_SIZE``;
``LOCAL_RANK``                  ``WORLD_SIZE > 1`` also needs ``MASTER_ADDR`` and
                                ``MASTER_PORT`` (the rendezvous ``torchrun`` sets up)
``OVEARTH_PROGRESS_SECONDS``    period of the plain progress lines: a number >= 0 (default 30)
``OVEARTH_CACHE``               the cache folder (``model/fingerprint.py``)
==============================  ==============================================================
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import InputError


def _integer(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise InputError(f"the environment variable {name}={shown!r} must be an integer >= {minimum}.")
    return value


def progress_seconds() -> float:
    """``$OVEARTH_PROGRESS_SECONDS`` (default 30): a finite number >= 0 (0: a line at every update).

    Raises:
        InputError: not a number, or negative.

    """
    raw = os.environ.get("OVEARTH_PROGRESS_SECONDS", "").strip()
    if not raw:
        return 30.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise InputError(
            f"the environment variable OVEARTH_PROGRESS_SECONDS={shown!r} must be a number of seconds >= 0."
        )
    return value


@dataclass(frozen=True)
class Torchrun:
    """The place of the current process in a ``torchrun`` job (rank 0 of 1 when run alone)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int | None = None


def torchrun() -> Torchrun:
    """The checked ``torchrun`` variables.

    Raises:
        InputError: a variable that is not a non-negative integer, ``RANK >= WORLD_SIZE``, or
            ``WORLD_SIZE > 1`` without ``MASTER_ADDR`` / ``MASTER_PORT`` (a process started by
            hand with ``WORLD_SIZE`` set would otherwise wait for peers that never come).

    """
    world = _integer("WORLD_SIZE", 1, 1)
    rank = _integer("RANK", 0, 0)
    local = _integer("LOCAL_RANK", -1, 0)
    if rank >= world:
        raise InputError(f"the environment variable RANK={rank} must be below WORLD_SIZE={world}.")
    if world > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name, "").strip()]
        if missing:
            raise InputError(
                f"WORLD_SIZE={world} is set but {' and '.join(missing)} not: start the run with torchrun "
                "(it sets the rendezvous), or unset WORLD_SIZE for one process."
            )
        _integer("MASTER_PORT", 0, 1)
    return Torchrun(world_size=world, rank=rank, local_rank=None if local < 0 else local)
