"""Processing algorithm ``ovearth:evaluate``: ``ovearth eval`` on a benchmark dataset."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from . import commands, errors, outputs
from .algorithm import EXECUTABLE_HELP, OvearthAlgorithm


class EvaluateAlgorithm(OvearthAlgorithm):
    """mIoU, mAcc and aAcc of ovearth on a benchmark laid out as its protocol says."""

    DATA_ROOT = "DATA_ROOT"
    DATASET = "DATASET"
    DATASET_CONFIG = "DATASET_CONFIG"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    LIMIT = "LIMIT"
    PROB_THD = "PROB_THD"
    CONFIDENCE_THRESHOLD = "CONFIDENCE_THRESHOLD"
    SAVE_PREDICTIONS = "SAVE_PREDICTIONS"
    EXTRA = "EXTRA"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    METRICS = "METRICS"
    REPORT = "REPORT"
    MIOU = "MIOU"
    MACC = "MACC"
    AACC = "AACC"

    def name(self) -> str:
        """Algorithm id ``ovearth:evaluate``."""
        return "evaluate"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        """The name in the toolbox."""
        return "Evaluate on a benchmark"

    def tags(self) -> list:
        """Search words."""
        return ["evaluate", "benchmark", "miou", "accuracy", "ovearth"]

    def shortHelpString(self) -> str:  # noqa: N802
        """The dialog's help."""
        return (
            "<p>Segments every image of a benchmark dataset (e.g. LoveDA, Potsdam; the list: "
            "<code>ovearth datasets</code>) with SegEarth-OV3's protocol and reports mIoU, mAcc and aAcc "
            "(percent). The data root is laid out as the protocol says; your own protocol is a YAML file "
            "of the same schema. The output folder gets <code>metrics.json</code>, <code>metrics.md</code> "
            "and a cache: a cancelled or failed run resumes where it stopped.</p>" + EXECUTABLE_HELP
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        """The parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFile(self.DATA_ROOT, "Data root", QgsProcessingParameterFile.Folder)
        )
        self.addParameter(
            QgsProcessingParameterString(self.DATASET, "Built-in protocol (e.g. loveda)", optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.DATASET_CONFIG, "Or your protocol YAML", fileFilter="YAML (*.yaml *.yml)", optional=True
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
            QgsProcessingParameterNumber(
                self.LIMIT,
                "Only the first N images (empty: all)",
                QgsProcessingParameterNumber.Integer,
                None,
                optional=True,
                minValue=1,
            )
        )
        advanced = [
            QgsProcessingParameterString(
                self.PROB_THD, "Score threshold (empty: the protocol's)", optional=True
            ),
            QgsProcessingParameterNumber(
                self.CONFIDENCE_THRESHOLD,
                "Object confidence threshold (empty: the protocol's)",
                QgsProcessingParameterNumber.Double,
                None,
                optional=True,
                minValue=0.0,
                maxValue=1.0,
            ),
            QgsProcessingParameterBoolean(self.SAVE_PREDICTIONS, "Keep colour label maps", False),
            QgsProcessingParameterString(self.EXTRA, "More ovearth eval options", optional=True),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputFile(self.METRICS, "metrics.json"))
        self.addOutput(QgsProcessingOutputFile(self.REPORT, "metrics.md"))
        self.addOutput(QgsProcessingOutputNumber(self.MIOU, "mIoU (%)"))
        self.addOutput(QgsProcessingOutputNumber(self.MACC, "mAcc (%)"))
        self.addOutput(QgsProcessingOutputNumber(self.AACC, "aAcc (%)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Run ``ovearth eval``; return the metrics."""
        folder = self.parameterAsFileOutput(parameters, self.OUTPUT_FOLDER, context)
        if not folder:
            raise QgsProcessingException("no output folder.")
        try:
            command = commands.eval_command(
                self.executable(),
                self.parameterAsFile(parameters, self.DATA_ROOT, context),
                folder,
                dataset=self.parameterAsString(parameters, self.DATASET, context),
                dataset_config=self.parameterAsFile(parameters, self.DATASET_CONFIG, context),
                model=self.parameterAsString(parameters, self.MODEL, context),
                device=self.parameterAsString(parameters, self.DEVICE, context),
                limit=self.optional_number(parameters, self.LIMIT, context, integer=True),
                prob_thd=self.parameterAsString(parameters, self.PROB_THD, context),
                confidence_threshold=self.optional_number(parameters, self.CONFIDENCE_THRESHOLD, context),
                save_predictions=self.parameterAsBoolean(parameters, self.SAVE_PREDICTIONS, context),
                extra=self.parameterAsString(parameters, self.EXTRA, context),
            )
        except errors.OvearthError as error:
            raise QgsProcessingException(str(error)) from None
        os.makedirs(folder, exist_ok=True)
        # no cleanup on cancel: ovearth eval resumes from its cache, and removes its own temporary files
        self.run_command(command, feedback)
        try:
            summary = outputs.metrics_summary(folder)
        except errors.OvearthError as error:
            raise QgsProcessingException(str(error)) from None
        feedback.pushInfo(", ".join(f"{key} {value:.2f}" for key, value in summary.items()))
        return {
            self.OUTPUT_FOLDER: folder,
            self.METRICS: os.path.join(folder, "metrics.json"),
            self.REPORT: os.path.join(folder, "metrics.md"),
            self.MIOU: summary.get("mIoU"),
            self.MACC: summary.get("mAcc"),
            self.AACC: summary.get("aAcc"),
        }
