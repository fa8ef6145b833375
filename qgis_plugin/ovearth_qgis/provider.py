"""The ``ovearth`` Processing provider: its algorithms and the ovearth executable setting."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithm import EXECUTABLE_SETTING

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class OvearthProvider(QgsProcessingProvider):
    """Algorithms ``ovearth:segment``, ``ovearth:vectorize`` and ``ovearth:evaluate``."""

    def id(self) -> str:
        """The prefix of the algorithm ids (``ovearth:segment``)."""
        return "ovearth"

    def name(self) -> str:
        """The name in the toolbox."""
        return "ovearth"

    def longName(self) -> str:  # noqa: N802 (QGIS's name)
        """The name with what it does."""
        return "ovearth (open-vocabulary segmentation with SAM 3)"

    def icon(self) -> QIcon:
        """The provider's icon."""
        return QIcon(ICON)

    def svgIconPath(self) -> str:  # noqa: N802
        """The icon file."""
        return ICON

    def load(self) -> bool:
        """Register the executable setting (Settings > Options > Processing > Providers > ovearth)."""
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting

            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(
                Setting(
                    self.name(),
                    EXECUTABLE_SETTING,
                    "ovearth executable (the ovearth script, its environment's Python, or the environment "
                    "folder; empty: $OVEARTH_EXECUTABLE, else ovearth on PATH)",
                    "",
                    valuetype=Setting.FILE,
                )
            )
            ProcessingConfig.readSettings()
        except ImportError:  # Processing's Python module absent: QgsSettings is read directly
            pass
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        """Remove the setting."""
        try:
            from processing.core.ProcessingConfig import ProcessingConfig

            ProcessingConfig.removeSetting(EXECUTABLE_SETTING)
        except (ImportError, KeyError):
            pass

    def loadAlgorithms(self) -> None:  # noqa: N802
        """Add the algorithms."""
        from .evaluate import EvaluateAlgorithm
        from .segment import SegmentAlgorithm
        from .vectorize import VectorizeAlgorithm

        for algorithm in (SegmentAlgorithm(), VectorizeAlgorithm(), EvaluateAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportsNonFileBasedOutput(self) -> bool:  # noqa: N802
        """Ovearth writes files: temporary outputs are files too."""
        return False

    def supportedOutputVectorLayerExtensions(self) -> list:  # noqa: N802
        """The vector formats ovearth writes."""
        return ["gpkg", "geojson"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802, N803
        """GeoPackage."""
        return "gpkg"

    def supportedOutputRasterLayerExtensions(self) -> list:  # noqa: N802
        """GeoTIFF."""
        return ["tif"]
