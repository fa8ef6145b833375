"""Build ``ovearth_qgis.zip`` for QGIS's Plugins > Manage and Install Plugins > Install from ZIP.

    python qgis_plugin/make_zip.py [-o ovearth_qgis.zip]

The zip holds the folder ``ovearth_qgis/`` (the plugin package) without caches.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "ovearth_qgis"


def build(target: Path) -> Path:
    """Write the zip; return its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(PACKAGE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                archive.write(path, path.relative_to(HERE).as_posix())
    return target


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("ovearth_qgis.zip"))
    print(build(parser.parse_args().output))


if __name__ == "__main__":
    main()
