"""The plugin object: registers the Processing provider (in the GUI and in ``qgis_process``)."""

from __future__ import annotations

from qgis.core import QgsApplication


class OvearthPlugin:
    """Adds the ``ovearth`` provider to the Processing registry; removes it on unload."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS's name)
        """Register the provider (``qgis_process`` calls only this)."""
        if self.provider is None:
            from .provider import OvearthProvider

            self.provider = OvearthProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS's name)
        """The GUI: the algorithms appear in the Processing toolbox (no panel of our own)."""
        self.initProcessing()

    def unload(self) -> None:
        """Remove the provider."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
