"""ovearth for QGIS: a Processing provider that runs the ``ovearth`` command line.

QGIS calls :func:`classFactory` (the GUI with its ``iface``; ``qgis_process`` with None).
"""


def classFactory(iface):  # noqa: N802 (the name QGIS looks for)
    """The plugin object QGIS loads."""
    from .plugin import OvearthPlugin

    return OvearthPlugin(iface)
