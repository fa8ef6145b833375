"""What the ovearth algorithms share: finding ovearth, running it with feedback, loading styled outputs."""

from __future__ import annotations

import os
import shlex

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsMapLayer,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRendererCategory,
    QgsSettings,
    QgsSymbol,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor

from . import commands, errors, outputs, runner

#: Key of the executable in Processing's settings (Settings > Options > Processing > Providers > ovearth).
EXECUTABLE_SETTING = "OVEARTH_EXECUTABLE"

#: Where Processing stores its settings in QgsSettings (read directly when its Python module is absent).
SETTINGS_PREFIX = "Processing/Configuration/"

EXECUTABLE_HELP = (
    "<p><b>Which ovearth runs.</b> The plugin does not need torch in QGIS's Python: it runs the "
    "<code>ovearth</code> command of the Python environment you installed it in, as a separate "
    "process. It uses, in this order: the <i>ovearth executable</i> set in Settings &gt; Options &gt; "
    "Processing &gt; Providers &gt; ovearth; the environment variable <code>OVEARTH_EXECUTABLE</code>; "
    "<code>ovearth</code> on <code>PATH</code>. The value may be the <code>ovearth</code> script "
    "(e.g. <code>/home/me/ovearth/.venv/bin/ovearth</code>), that environment's Python, or the "
    "environment's folder.</p>"
    "<p><b>Progress and cancel.</b> The progress bar follows ovearth's progress lines; Cancel stops "
    "ovearth (its whole process group) and removes the files this run had begun to write.</p>"
)

#: Post-processors must outlive the algorithm object that made them (QGIS holds no Python reference).
_KEEP: list[QgsProcessingLayerPostProcessorInterface] = []


def configured_executable() -> str | None:
    """The ovearth executable set in Processing's settings, or None."""
    value = None
    try:
        from processing.core.ProcessingConfig import ProcessingConfig

        value = ProcessingConfig.getSetting(EXECUTABLE_SETTING)
    except Exception:  # noqa: BLE001 - Processing's Python module absent or not initialised
        value = None
    if not value:
        value = QgsSettings().value(SETTINGS_PREFIX + EXECUTABLE_SETTING, "")
    return str(value) if value else None


class OvearthAlgorithm(QgsProcessingAlgorithm):
    """Base of the ovearth algorithms: runs ovearth with the algorithm's feedback."""

    def createInstance(self):  # noqa: N802 (QGIS's name)
        """A fresh copy (QGIS runs every execution on its own instance)."""
        return type(self)()

    def helpUrl(self) -> str:  # noqa: N802
        """No online page: the help is in the dialog."""
        return ""

    def executable(self) -> list[str]:
        """The command prefix that runs ovearth (see :func:`commands.find_executable`)."""
        try:
            return commands.find_executable(configured_executable())
        except errors.OvearthError as error:
            raise QgsProcessingException(str(error)) from None

    def run_command(
        self,
        command: list[str],
        feedback: QgsProcessingFeedback | None,
        guard: outputs.OutputGuard | None = None,
    ) -> runner.RunResult:
        """Run ``command``, its lines to the log, its progress to the bar; cancel with the dialog.

        Raises:
            QgsProcessingException: ovearth failed (its error line) or the run was cancelled.

        """
        feedback = feedback or QgsProcessingFeedback()
        feedback.pushCommandInfo(" ".join(shlex.quote(part) for part in command))
        try:
            return runner.run_ovearth(
                command,
                on_line=feedback.pushConsoleInfo,
                on_progress=feedback.setProgress,
                is_cancelled=feedback.isCanceled,
                cleanup=guard,
            )
        except errors.OvearthError as error:
            raise QgsProcessingException(str(error)) from None

    @staticmethod
    def optional_value(parameters: dict, name: str):
        """The parameter's value, or None when it is not set (empty, NULL or absent)."""
        value = parameters.get(name)
        if value is None or str(value).strip() in ("", "NULL", "None"):
            return None
        return value

    def optional_number(self, parameters: dict, name: str, context, integer: bool = False):
        """An optional number parameter: None when not set."""
        if self.optional_value(parameters, name) is None:
            return None
        if integer:
            return self.parameterAsInt(parameters, name, context)
        return self.parameterAsDouble(parameters, name, context)

    def raster_file(self, parameters: dict, name: str, context) -> tuple:
        """``(path, layer)`` of a raster layer parameter: the file (or URL) ovearth will read.

        Raises:
            QgsProcessingException: not a layer GDAL reads from a file or URL.

        """
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{layer.name()}: ovearth reads raster files (GeoTIFF, PNG, JPEG) and https:// or s3:// "
                f"GeoTIFFs, not '{layer.providerType()}' layers; save the layer as a GeoTIFF first."
            )
        parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
        path = parts.get("path") or layer.source()
        if path.startswith("/vsicurl/"):
            path = path[len("/vsicurl/") :]
        elif path.startswith("/vsis3/"):
            path = "s3://" + path[len("/vsis3/") :]
        elif path.startswith("/vsi") or parts.get("layerName"):
            raise QgsProcessingException(
                f"{layer.name()}: ovearth reads plain raster files, not {path}; save the layer as a GeoTIFF."
            )
        return path, layer


def layer_bands(layer) -> str:
    """The bands a multi-band layer shows as red, green, blue (``"4,3,2"``), or "" for the default."""
    try:
        renderer = layer.renderer()
        if layer.bandCount() > 3 and renderer is not None and renderer.type() == "multibandcolor":
            bands = (renderer.redBand(), renderer.greenBand(), renderer.blueBand())
            if all(b > 0 for b in bands):
                return ",".join(str(b) for b in bands)
    except Exception:  # noqa: BLE001 - any renderer: fall back to ovearth's choice
        pass
    return ""


class LabelsStyle(QgsProcessingLayerPostProcessorInterface):
    """Apply the ``.qml`` style ovearth writes beside the labels (colours and class names)."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        """Load the style onto the labels layer."""
        if layer is None or not os.path.isfile(self.style):
            return
        message, ok = layer.loadNamedStyle(self.style)
        if not ok and feedback is not None:
            feedback.reportError(f"could not apply {self.style}: {message}")
        layer.triggerRepaint()


class ClassesStyle(QgsProcessingLayerPostProcessorInterface):
    """Colour polygons by ``class_index`` with the labels' palette (filled regions, or object outlines)."""

    def __init__(self, style: str, outline: bool = False) -> None:
        super().__init__()
        self.style = style
        self.outline = outline

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        """Set a categorized renderer on the polygons layer."""
        if (
            layer is None
            or layer.type() != QgsMapLayer.VectorLayer
            or layer.fields().indexOf("class_index") < 0
        ):
            return
        categories = []
        for value, colour, label in outputs.palette_from_qml(self.style):
            if value == 255:  # nodata: never a polygon
                continue
            symbol = QgsSymbol.defaultSymbol(QgsWkbTypes.PolygonGeometry)
            symbol.setColor(QColor(colour))
            layer_symbol = symbol.symbolLayer(0)
            if self.outline:
                layer_symbol.setBrushStyle(Qt.NoBrush)
                layer_symbol.setStrokeColor(QColor(colour))
                layer_symbol.setStrokeWidth(0.6)
            else:
                symbol.setOpacity(0.6)
                layer_symbol.setStrokeColor(QColor(colour).darker(140))
            categories.append(QgsRendererCategory(value, symbol, label))
        if categories:
            layer.setRenderer(QgsCategorizedSymbolRenderer("class_index", categories))
            layer.triggerRepaint()


def load_on_completion(
    context: QgsProcessingContext,
    path: str,
    name: str,
    output: str,
    raster: bool,
    post: QgsProcessingLayerPostProcessorInterface | None = None,
) -> None:
    """Add ``path`` to the layers QGIS loads into the project when the algorithm ends."""
    hint = QgsProcessingUtils.LayerHint.Raster if raster else QgsProcessingUtils.LayerHint.Vector
    details = QgsProcessingContext.LayerDetails(name, context.project(), output, hint)
    if post is not None:
        _KEEP.append(post)
        details.setPostProcessor(post)
    context.addLayerToLoadOnCompletion(path, details)
