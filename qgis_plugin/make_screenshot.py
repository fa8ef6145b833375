"""Render ``docs/qgis_result.png``: ovearth:segment in a headless QGIS, outputs loaded with their styles.

    QT_QPA_PLATFORM=offscreen OVEARTH_EXECUTABLE=.venv/bin/python \
        /usr/bin/python3 qgis_plugin/make_screenshot.py [--model PATH_OR_HUB_ID] [--image RASTER] \
        [--classes 'water;building,house;tree'] [-o docs/qgis_result.png]

Without ``--model`` it writes a tiny random model (``ovearth make-tiny-model``): the labels are then
meaningless, the picture shows the styles and class names. The run goes through
``headless.py`` (PyQGIS: the algorithm, the layers loaded as the toolbox loads them, then drawn with
QgsMapRendererParallelJob).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from ovearth_qgis import commands, runner  # noqa: E402


def main() -> None:
    """Run the algorithm and draw its outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="")
    parser.add_argument("--image", default=str(ROOT.parent / "shared" / "samples" / "RGB.byte.tif"))
    parser.add_argument("--classes", default="water;building,house;tree")
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "qgis_result.png"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ovearth-qgis-shot-"))
    model = args.model
    if not model:
        model = str(work / "tiny")
        command = [*commands.find_executable(), "make-tiny-model", model, "--image-size", "336"]
        subprocess.run(command, check=True, env=runner.child_environment())
    parameters = {
        "INPUT": args.image,
        "CLASSES": args.classes,
        "MODEL": model,
        "DEVICE": "cpu",
        "POLYGONS": True,
        "OUTPUT_FOLDER": str(work / "out"),
    }
    command = [sys.executable, str(HERE / "headless.py"), "ovearth:segment", json.dumps(parameters)]
    command += ["--render", args.output]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ})
    print(done.stdout.strip().splitlines()[-1])
    print(args.output)


if __name__ == "__main__":
    main()
