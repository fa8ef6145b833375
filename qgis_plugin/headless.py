"""Run an ovearth algorithm in a headless QGIS (PyQGIS, no screen), as the tests and the screenshot do.

Run with the Python QGIS is built for (Debian: ``/usr/bin/python3`` with ``python3-qgis``)::

    QT_QPA_PLATFORM=offscreen python3 qgis_plugin/headless.py ovearth:segment '{"INPUT": ...}' \
        [--cancel-after SECONDS] [--cancel-on-part] [--render out.png]

It starts QGIS with Processing, registers the plugin's provider from this folder, runs the
algorithm with a feedback that (if asked) cancels after a delay or as soon as a temporary
``.*.part*`` file appears in the output folder, loads the outputs into the project as the
toolbox does (with their styles), optionally renders them to a PNG, and prints one JSON line:
``{"ok", "results", "errors", "progress", "seconds", "layers": [{"name", "renderer", "classes"}]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_qgis():
    """A QgsApplication without GUI, with Processing and the ovearth provider."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    for folder in ("/usr/share/qgis/python/plugins", str(HERE)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    from processing.core.Processing import Processing

    Processing.initialize()
    from ovearth_qgis.provider import OvearthProvider

    provider = OvearthProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    return app, provider


def recording_feedback():
    """A QgsProcessingFeedback that records errors, progress and ovearth's lines (and can be cancelled)."""
    from qgis.core import QgsProcessingFeedback

    class Recording(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.errors, self.progress, self.lines = [], [], []
            self.progressChanged.connect(self.progress.append)

        def reportError(self, error, fatalError=False):  # noqa: N802, N803 (QGIS's names)
            self.errors.append(error)

        def pushConsoleInfo(self, info):  # noqa: N802
            self.lines.append(info)

    return Recording()


def canceller(feedback, folder: str | None, after: float | None, on_part: bool) -> threading.Thread:
    """A thread that cancels ``feedback`` after ``after`` seconds or when a ``.part`` file appears."""

    def watch() -> None:
        start = time.monotonic()
        while not feedback.isCanceled():
            if after is not None and time.monotonic() - start >= after:
                break
            if on_part and folder and os.path.isdir(folder):
                if any(n.startswith(".") and ".part" in n for n in os.listdir(folder)):
                    break
            time.sleep(0.05)
        feedback.cancel()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def load_results(context, feedback) -> list:
    """Load the layers the algorithm asked for into the project (as the toolbox does); describe them."""
    from qgis.core import QgsProcessingUtils, QgsProject, QgsRasterLayer, QgsVectorLayer

    project = QgsProject.instance()
    described = []
    for path, details in context.layersToLoadOnCompletion().items():
        raster = details.layerTypeHint == QgsProcessingUtils.LayerHint.Raster
        if raster:
            layer = QgsRasterLayer(path, details.name, "gdal")
        else:
            layer = QgsVectorLayer(path, details.name, "ogr")
        if not layer.isValid():
            described.append({"name": details.name, "valid": False})
            continue
        project.addMapLayer(layer)
        if details.postProcessor() is not None:
            details.postProcessor().postProcessLayer(layer, context, feedback)
        described.append(describe(layer))
    return described


def describe(layer) -> dict:
    """Name, renderer type and class names of a loaded layer."""
    renderer = layer.renderer()
    kind = renderer.type() if renderer is not None else None
    classes = []
    if kind == "paletted":
        classes = [c.label for c in renderer.classes()]
    elif kind == "categorizedSymbol":
        classes = [c.label() for c in renderer.categories()]
    source = layer.source()
    return {"name": layer.name(), "valid": True, "renderer": kind, "classes": classes, "source": source}


def render(path: str, size: tuple = (900, 820)) -> None:
    """Draw the project's layers (labels under polygons) to a PNG."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings, QgsProject, QgsRectangle
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    layers = list(QgsProject.instance().mapLayers().values())
    order = sorted(layers, key=lambda layer: layer.type())  # vectors (0) above rasters (1)
    settings = QgsMapSettings()
    settings.setLayers(order)
    settings.setBackgroundColor(QColor("white"))
    settings.setOutputSize(QSize(*size))
    extent = QgsRectangle()
    for layer in layers:
        extent.combineExtentWith(layer.extent())
    settings.setDestinationCrs(layers[0].crs())
    settings.setExtent(extent)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(path, "PNG")


def main() -> int:
    """Run the algorithm; print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algorithm")
    parser.add_argument("parameters", help="JSON object of parameter values")
    parser.add_argument("--cancel-after", type=float, default=None)
    parser.add_argument("--cancel-on-part", action="store_true")
    parser.add_argument("--render", default=None, help="PNG to draw the loaded outputs into")
    args = parser.parse_args()
    _app, _provider = start_qgis()
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProject

    parameters = json.loads(args.parameters)
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(args.algorithm)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = recording_feedback()
    if args.cancel_after is not None or args.cancel_on_part:
        canceller(feedback, parameters.get("OUTPUT_FOLDER"), args.cancel_after, args.cancel_on_part)
    start = time.monotonic()
    results, ok = algorithm.run(parameters, context, feedback)
    seconds = time.monotonic() - start
    layers = load_results(context, feedback) if ok else []
    if ok and args.render and layers:
        render(args.render)
    print(
        json.dumps(
            {
                "ok": bool(ok),
                "results": {k: v for k, v in (results or {}).items() if isinstance(v, (str, int, float))},
                "errors": feedback.errors,
                "progress": feedback.progress,
                "lines": feedback.lines,
                "cancelled": feedback.isCanceled(),
                "seconds": seconds,
                "layers": layers,
            }
        )
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # PyQGIS can crash while tearing down a headless application: the answer is out


if __name__ == "__main__":
    sys.exit(main())
