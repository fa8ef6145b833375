"""Content fingerprints of weight files: SHA-256 over every byte, computed once per file state.

Two checkpoints that differ anywhere must never share a fingerprint (evaluation caches
are keyed by it). Hashing reads the whole file once; the digest is remembered in a small
JSON file keyed by the file's absolute path, size and ``mtime_ns``, so later runs pay a
``stat`` (any change to the three re-hashes). The store lives in
``$OVEARTH_CACHE/sha256.json`` (default ``~/.cache/ovearth``); when it cannot be written,
digests are simply not remembered. Throughput and the cost for the 3.4 GB SAM 3
checkpoint are measured in ``benchmarks/hash_speed.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_BLOCK = 8 << 20


def store_path() -> Path:
    """Where remembered digests live (``$OVEARTH_CACHE`` or ``~/.cache/ovearth``)."""
    root = os.environ.get("OVEARTH_CACHE") or Path.home() / ".cache" / "ovearth"
    return Path(root) / "sha256.json"


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), remembered per (path, size, mtime_ns).

    Raises:
        OSError: the file cannot be read.

    """
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    known = _read_store()
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    value = digest.hexdigest()
    prefix = f"{path}|"
    fresh = {k: v for k, v in _read_store().items() if not k.startswith(prefix)}  # drop old states
    _write_store({**fresh, key: value})
    return value


def fingerprint_files(files: list[Path]) -> str:
    """Fingerprint of a set of weight files: 16 hex digits of SHA-256 over (name, content hash).

    Args:
        files: weight files (their order matters).

    Returns:
        16 hex digits, ``"unknown"`` when no file is known.

    """
    if not files:
        return "unknown"
    digest = hashlib.sha256()
    for file in files:
        digest.update(json.dumps([Path(file).name, sha256_file(file)]).encode())
    return digest.hexdigest()[:16]


def _read_store() -> dict[str, str]:
    try:
        data = json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _write_store(data: dict[str, str]) -> None:
    target = store_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".sha256.", suffix=".part", dir=target.parent)
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=0, sort_keys=True)
        os.replace(name, target)
    except OSError as error:  # a read-only home: digests are recomputed next time
        logger.debug("could not remember file digests in %s: %s", target, error)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(name)
