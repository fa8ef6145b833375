"""Processing algorithm ``ovearth:segment``: ``ovearth segment`` on one raster."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from . import commands, errors, outputs
from .algorithm import (
    EXECUTABLE_HELP,
    ClassesStyle,
    LabelsStyle,
    OvearthAlgorithm,
    layer_bands,
    load_on_completion,
)

#: WINDOWED choices: ovearth's default, --windowed, --whole.
WINDOWED_CHOICES = (
    "ovearth's choice (by windows above 64 M pixels when sliding)",
    "by windows (bounded memory)",
    "whole image in memory",
)
WINDOWED_VALUES = (None, True, False)


class SegmentAlgorithm(OvearthAlgorithm):
    """Segment a raster into the classes you type (or a preset's): labels, scores, polygons, objects."""

    INPUT = "INPUT"
    CLASSES = "CLASSES"
    PRESET = "PRESET"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    PROB_THD = "PROB_THD"
    CONFIDENCE_THRESHOLD = "CONFIDENCE_THRESHOLD"
    SLIDE_CROP = "SLIDE_CROP"
    SLIDE_STRIDE = "SLIDE_STRIDE"
    WINDOWED = "WINDOWED"
    BANDS = "BANDS"
    SCORES = "SCORES"
    POLYGONS = "POLYGONS"
    OBJECTS = "OBJECTS"
    MIN_AREA = "MIN_AREA"
    SIMPLIFY = "SIMPLIFY"
    OVERWRITE = "OVERWRITE"
    EXTRA = "EXTRA"
    LOAD = "LOAD"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    LABELS = "LABELS"
    OVERLAY = "OVERLAY"
    RUN_RECORD = "RUN_RECORD"

    def name(self) -> str:
        """Algorithm id ``ovearth:segment``."""
        return "segment"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        """The name in the toolbox."""
        return "Segment raster"

    def tags(self) -> list:
        """Search words."""
        return ["sam", "sam3", "segmentation", "open vocabulary", "classification", "land cover", "ovearth"]

    def shortHelpString(self) -> str:  # noqa: N802
        """The dialog's help."""
        return (
            "<p>Segments a raster with SAM 3 (ovearth, training-free): every pixel gets one of the "
            "classes you type, e.g. <code>building,house;road;tree;water</code> (classes separated by "
            "<code>;</code>, several names of one class by <code>,</code>), or a dataset preset's classes "
            "and thresholds (e.g. <code>loveda</code>; the list: <code>ovearth datasets</code>). Pixels "
            "scoring below the score threshold are <i>unclassified</i> (254).</p>"
            "<p>Writes into the output folder <code>&lt;name&gt;_labels.tif</code> (uint8 Cloud-Optimized "
            "GeoTIFF with the class names and a QGIS style, loaded into the project), "
            "<code>&lt;name&gt;_overlay.png</code>, <code>run.json</code>, and as asked the class scores "
            "(<code>&lt;name&gt;_scores.tif</code>, one band per class), the labels as polygons "
            "(<code>&lt;name&gt;_labels.gpkg</code>) and SAM 3's objects with class and score "
            "(<code>&lt;name&gt;_objects.gpkg</code>). A rerun with the same settings into the same folder "
            "reuses the outputs.</p>"
            "<p><b>Large scenes:</b> a sliding window (e.g. 1008 / 672) segments a large raster in pieces; "
            "<i>by windows</i> reads and writes it by windows in bounded memory (same labels).</p>"
            "<p><b>Weights:</b> a Hugging Face id (default <code>facebook/sam3</code>, downloaded once), a "
            "<code>save_pretrained</code> folder or Meta's <code>sam3.pt</code>.</p>" + EXECUTABLE_HELP
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        """The parameters and outputs."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster (GeoTIFF, PNG or JPEG)"))
        self.addParameter(
            QgsProcessingParameterString(
                self.CLASSES, "Classes (e.g. building,house;road;tree) — or a preset below", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.PRESET, "Dataset preset instead of classes (e.g. loveda, potsdam)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.MODEL, "Model: Hugging Face id, save_pretrained folder or sam3.pt", "facebook/sam3"
            )
        )
        self.addParameter(
            QgsProcessingParameterString(self.DEVICE, "Device (auto, cpu, cuda, cuda:N)", "auto")
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.PROB_THD,
                "Score threshold: one number, or per class (e.g. 0.2,building=0.4); empty: default",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.CONFIDENCE_THRESHOLD,
                "Object confidence threshold (empty: default)",
                QgsProcessingParameterNumber.Double,
                None,
                optional=True,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.SLIDE_CROP,
                "Sliding window size in pixels (0: whole image; empty: default)",
                QgsProcessingParameterNumber.Integer,
                None,
                optional=True,
                minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.SLIDE_STRIDE,
                "Sliding window step in pixels (empty: default)",
                QgsProcessingParameterNumber.Integer,
                None,
                optional=True,
                minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.WINDOWED, "Read and write", list(WINDOWED_CHOICES), defaultValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(self.SCORES, "Also write class scores (one band per class)", False)
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.POLYGONS, "Also write the labels as polygons (GeoPackage)", False
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(self.OBJECTS, "Also write SAM 3's objects (GeoPackage)", False)
        )
        advanced = [
            QgsProcessingParameterString(
                self.BANDS,
                "Bands shown as R,G,B, e.g. 3,2,1 (empty: those the layer shows, else ovearth's choice)",
                optional=True,
            ),
            QgsProcessingParameterNumber(
                self.MIN_AREA,
                "Polygons: drop regions smaller than (m², pixels without a projection)",
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0.0,
            ),
            QgsProcessingParameterNumber(
                self.SIMPLIFY,
                "Polygons: simplify by (m, pixels without a projection; 0: exact)",
                QgsProcessingParameterNumber.Double,
                0.0,
                minValue=0.0,
            ),
            QgsProcessingParameterBoolean(
                self.OVERWRITE, "Redo even if the outputs exist with these settings", False
            ),
            QgsProcessingParameterString(
                self.EXTRA, "More ovearth segment options (e.g. --refine smooth:a=0.2)", optional=True
            ),
            QgsProcessingParameterBoolean(self.LOAD, "Load the outputs into the project", True),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.LABELS, "Labels"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.SCORES, "Class scores"))
        self.addOutput(QgsProcessingOutputVectorLayer(self.POLYGONS, "Label polygons"))
        self.addOutput(QgsProcessingOutputVectorLayer(self.OBJECTS, "Objects"))
        self.addOutput(QgsProcessingOutputFile(self.OVERLAY, "Overlay picture"))
        self.addOutput(QgsProcessingOutputFile(self.RUN_RECORD, "run.json"))

    def options(self, parameters, context) -> commands.SegmentOptions:
        """The ovearth options the parameters ask for."""
        image, layer = self.raster_file(parameters, self.INPUT, context)
        folder = self.parameterAsFileOutput(parameters, self.OUTPUT_FOLDER, context)
        if not folder:
            raise QgsProcessingException("no output folder.")
        bands = self.parameterAsString(parameters, self.BANDS, context) or layer_bands(layer)
        polygons = self.parameterAsBoolean(parameters, self.POLYGONS, context)
        return commands.SegmentOptions(
            image=image,
            output=folder,
            classes=self.parameterAsString(parameters, self.CLASSES, context),
            preset=self.parameterAsString(parameters, self.PRESET, context),
            model=self.parameterAsString(parameters, self.MODEL, context),
            device=self.parameterAsString(parameters, self.DEVICE, context),
            prob_thd=self.parameterAsString(parameters, self.PROB_THD, context),
            confidence_threshold=self.optional_number(parameters, self.CONFIDENCE_THRESHOLD, context),
            slide_crop=self.optional_number(parameters, self.SLIDE_CROP, context, integer=True),
            slide_stride=self.optional_number(parameters, self.SLIDE_STRIDE, context, integer=True),
            windowed=WINDOWED_VALUES[self.parameterAsEnum(parameters, self.WINDOWED, context)],
            bands=bands,
            scores=self.parameterAsBoolean(parameters, self.SCORES, context),
            vector=polygons,
            objects=self.parameterAsBoolean(parameters, self.OBJECTS, context),
            min_area=self._polygon_number(parameters, self.MIN_AREA, context),
            simplify=self._polygon_number(parameters, self.SIMPLIFY, context),
            overwrite=self.parameterAsBoolean(parameters, self.OVERWRITE, context),
            extra=self.parameterAsString(parameters, self.EXTRA, context),
        )

    def _polygon_number(self, parameters, name, context):
        """A polygon option, passed only when it differs from ovearth's default 0."""
        value = self.optional_number(parameters, name, context)
        return value if value else None

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Run ``ovearth segment``; return (and load) what it wrote."""
        options = self.options(parameters, context)
        try:
            command = commands.segment_command(self.executable(), options)
        except errors.OvearthError as error:
            raise QgsProcessingException(str(error)) from None
        os.makedirs(options.output, exist_ok=True)
        stem = outputs.output_stem(options.image)
        guard = outputs.OutputGuard(options.output, prefixes=(stem + "_",), names=("run.json",))
        self.run_command(command, feedback, guard)
        try:
            written = outputs.segment_outputs(options.output, options.image)
        except errors.OvearthError as error:
            raise QgsProcessingException(str(error)) from None
        results = {
            self.OUTPUT_FOLDER: options.output,
            self.LABELS: written.get("labels"),
            self.SCORES: written.get("scores"),
            self.POLYGONS: written.get("polygons"),
            self.OBJECTS: written.get("objects"),
            self.OVERLAY: written.get("overlay"),
            self.RUN_RECORD: os.path.join(options.output, "run.json"),
        }
        if self.parameterAsBoolean(parameters, self.LOAD, context):
            self._load(context, stem, written)
        return results

    def _load(self, context, stem: str, written: dict) -> None:
        style = written.get("style", "")
        if written.get("scores"):
            load_on_completion(context, written["scores"], f"{stem} scores", self.SCORES, raster=True)
        if written.get("labels"):
            post = LabelsStyle(style) if style else None
            load_on_completion(
                context, written["labels"], f"{stem} labels", self.LABELS, raster=True, post=post
            )
        if written.get("polygons"):
            post = ClassesStyle(style) if style else None
            load_on_completion(context, written["polygons"], f"{stem} polygons", self.POLYGONS, False, post)
        if written.get("objects"):
            post = ClassesStyle(style, outline=True) if style else None
            load_on_completion(context, written["objects"], f"{stem} objects", self.OBJECTS, False, post)
