"""The image files the explorer may read, and nothing else.

Three sources, each entry with an opaque id the page sends back:

* ``listed:<i>``: the files named on the command line (wherever they are);
* ``root:<relative path>``: GeoTIFF, PNG and JPEG files under ``--root`` (recursive,
  hidden files and folders skipped), found by a scan; a symbolic link is listed only when
  its target lies inside the root;
* ``upload:<digest>``: files sent by the page, kept in a private temporary folder.

A path is never built from what a request says: an id is looked up among the entries of
the last scan (rescanned once on a miss), and the file's real path is checked again
against the root when it is opened (a link swapped in after the scan is refused).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..data.raster import IMAGE_SUFFIXES, check_image
from ..errors import InputError

#: Most files listed from ``--root`` (a scan stops there).
MAX_ROOT_FILES = 5000

#: Uploads kept at once (the oldest is removed beyond this).
MAX_UPLOADS = 32


class NotFound(LookupError):
    """An id that names no image the explorer may read (the page gets 404)."""


@dataclass(frozen=True)
class Entry:
    """One readable image.

    Attributes:
        id: what the page sends back (``listed:0``, ``root:sub/a.tif``, ``upload:...``).
        name: what the page shows.
        source: ``listed``, ``root`` or ``upload``.
        path: the file.

    """

    id: str
    name: str
    source: str
    path: Path


class ImageCatalog:
    """Listed files, files under a root folder, and uploads.

    Args:
        listed: image files named on the command line.
        root: a folder whose images may be read, or None.

    Raises:
        InputError: a listed file that is missing or not a readable image, or a root
            that is not a folder.

    """

    def __init__(self, listed: list[Path] | tuple[Path, ...] = (), root: Path | None = None) -> None:
        self.root = None if root is None else Path(root).resolve()
        if self.root is not None and not self.root.is_dir():
            raise InputError(f"{root}: --root must be a folder.")
        self._listed: dict[str, Entry] = {}
        for i, path in enumerate(listed):
            check_image(path)  # missing or unreadable: one sentence, before the server starts
            self._listed[f"listed:{i}"] = Entry(f"listed:{i}", str(path), "listed", Path(path).resolve())
        self._scanned: dict[str, Entry] = {}
        self._uploads: dict[str, Entry] = {}
        self._upload_dir: Path | None = None
        self._lock = threading.Lock()

    def entries(self) -> list[Entry]:
        """Every readable image now: listed, then the root (a fresh scan), then uploads."""
        self._scan()
        with self._lock:
            return [*self._listed.values(), *self._scanned.values(), *self._uploads.values()]

    def path(self, image_id: str) -> Path:
        """The file of ``image_id``.

        Raises:
            NotFound: an id of no listed, scanned or uploaded image (or a file that left
                the root since the scan).

        """
        entry = self._find(image_id)
        if entry is None and image_id.startswith("root:"):
            self._scan()
            entry = self._find(image_id)
        if entry is None:
            raise NotFound(f"No image '{image_id}' here; pick one from the list.")
        if entry.source == "root" and not _inside(entry.path, self.root):
            raise NotFound(f"No image '{image_id}' here; pick one from the list.")
        return entry.path

    def name(self, image_id: str) -> str:
        """The display name of ``image_id`` (see :meth:`path` for the errors)."""
        self.path(image_id)
        entry = self._find(image_id)
        return entry.name if entry is not None else image_id

    def add_upload(self, name: str, data: bytes) -> Entry:
        """Keep an uploaded file and return its entry (same bytes: same entry).

        Args:
            name: the file name the browser gave (only its suffix and a short display
                name are used).
            data: the file's bytes (size-capped by the caller).

        Raises:
            InputError: an unsupported suffix, or bytes that are not a readable image.

        """
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise InputError(f"Upload '{_display(name)}': unsupported image type; use GeoTIFF, PNG or JPEG.")
        digest = hashlib.blake2b(data, digest_size=12).hexdigest()
        image_id = f"upload:{digest}"
        with self._lock:
            if image_id in self._uploads:
                return self._uploads[image_id]
            if self._upload_dir is None:
                self._upload_dir = Path(tempfile.mkdtemp(prefix="ovearth-explore-"))
            path = self._upload_dir / f"{digest}{suffix}"
        path.write_bytes(data)
        try:
            check_image(path)
        except InputError as error:
            path.unlink(missing_ok=True)
            reason = str(error).split(": ", 1)[-1]
            raise InputError(f"Upload '{_display(name)}': {reason}") from None
        entry = Entry(image_id, _display(name), "upload", path)
        with self._lock:
            self._uploads[image_id] = entry
            while len(self._uploads) > MAX_UPLOADS:
                oldest = next(iter(self._uploads))
                self._uploads.pop(oldest).path.unlink(missing_ok=True)
        return entry

    def close(self) -> None:
        """Remove the uploads' temporary folder."""
        with self._lock:
            if self._upload_dir is not None:
                shutil.rmtree(self._upload_dir, ignore_errors=True)
                self._upload_dir = None
            self._uploads.clear()

    def _find(self, image_id: str) -> Entry | None:
        with self._lock:
            for table in (self._listed, self._scanned, self._uploads):
                if image_id in table:
                    return table[image_id]
        return None

    def _scan(self) -> None:
        """List the images under the root (no symbolic link to a folder is followed)."""
        if self.root is None:
            return
        found: dict[str, Entry] = {}
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(files):
                path = Path(folder) / file
                if file.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if not (_inside(path, self.root) and path.resolve().is_file()):
                    continue  # a link out of the root, or a broken one
                relative = path.relative_to(self.root).as_posix()
                found[f"root:{relative}"] = Entry(f"root:{relative}", relative, "root", path)
                if len(found) >= MAX_ROOT_FILES:
                    break
            if len(found) >= MAX_ROOT_FILES:
                break
        with self._lock:
            self._scanned = found


def _inside(path: Path, root: Path | None) -> bool:
    """Whether ``path``'s real location (links followed) lies inside ``root``."""
    return root is not None and path.resolve().is_relative_to(root)


def _display(name: str) -> str:
    """A short display form of a browser-given file name (its last part, 80 characters)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in base if c.isprintable())[:80] or "upload"
