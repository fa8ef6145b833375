"""Processing algorithm ``ovearth:vectorize``: ``ovearth vectorize`` on a labels GeoTIFF."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from . import commands, outputs
from .algorithm import _KEEP, EXECUTABLE_HELP, ClassesStyle, OvearthAlgorithm


class VectorizeAlgorithm(OvearthAlgorithm):
    """One polygon per connected region of each class of a labels GeoTIFF."""

    INPUT = "INPUT"
    CLASSES = "CLASSES"
    SCORES = "SCORES"
    MIN_AREA = "MIN_AREA"
    SIMPLIFY = "SIMPLIFY"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        """Algorithm id ``ovearth:vectorize``."""
        return "vectorize"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        """The name in the toolbox."""
        return "Vectorize labels"

    def tags(self) -> list:
        """Search words."""
        return ["polygonize", "vectorize", "labels", "segmentation", "ovearth"]

    def shortHelpString(self) -> str:  # noqa: N802
        """The dialog's help."""
        return (
            "<p>Writes one polygon per connected region of each class of a labels GeoTIFF written by "
            "<i>Segment raster</i> (or <code>ovearth segment</code>), with the fields class_index, "
            "class_name, pixels, area_m2 and mean_score (from the class scores GeoTIFF, when given or "
            "found beside the labels as <code>&lt;name&gt;_scores.tif</code>). Area and tolerance are in "
            "metres when the labels are projected, else in pixels.</p>" + EXECUTABLE_HELP
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        """The parameters and output."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Labels GeoTIFF (ovearth segment)"))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_AREA,
                "Drop regions smaller than (m², or pixels)",
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.SIMPLIFY,
                "Simplify by (m, or pixels; 0: exact)",
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0.0,
            )
        )
        advanced = [
            QgsProcessingParameterString(
                self.CLASSES,
                "Class names of values 0, 1, ... as a;b;c (empty: those the labels carry)",
                optional=True,
            ),
            QgsProcessingParameterRasterLayer(
                self.SCORES,
                "Class scores GeoTIFF for mean_score (empty: <name>_scores.tif beside)",
                optional=True,
            ),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
        self.addParameter(
            QgsProcessingParameterVectorDestination(self.OUTPUT, "Polygons", QgsProcessing.TypeVectorPolygon)
        )

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Run ``ovearth vectorize``."""
        labels, _ = self.raster_file(parameters, self.INPUT, context)
        scores = ""
        if self.optional_value(parameters, self.SCORES) is not None:
            scores, _ = self.raster_file(parameters, self.SCORES, context)
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not output:
            raise QgsProcessingException("no output file.")
        folder = os.path.dirname(os.path.abspath(output))
        os.makedirs(folder, exist_ok=True)
        min_area = self.optional_number(parameters, self.MIN_AREA, context)
        simplify = self.optional_number(parameters, self.SIMPLIFY, context)
        command = commands.vectorize_command(
            self.executable(),
            labels,
            output,
            classes=self.parameterAsString(parameters, self.CLASSES, context),
            scores=scores,
            min_area=min_area or None,
            simplify=simplify or None,
        )
        name = os.path.basename(output)
        self.run_command(command, feedback, outputs.OutputGuard(folder, names=(name,)))
        style = os.path.splitext(labels)[0] + ".qml"
        if os.path.isfile(style) and context.willLoadLayerOnCompletion(output):
            post = ClassesStyle(style)
            _KEEP.append(post)
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(post)
        return {self.OUTPUT: output}
