"""Writes segearth_chain.model3: segment -> segment and vectorize -> class statistics per polygon.

Run with QGIS's Python: ``QT_QPA_PLATFORM=offscreen python3 resources/models/build_chain_model.py``.
"""

from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtCore import QPointF


def child(model, algorithm_id, child_id, position, sources, outputs):
    step = QgsProcessingModelChildAlgorithm(algorithm_id)
    step.setChildId(child_id)
    step.setDescription(child_id)
    step.setPosition(QPointF(*position))
    for name, source in sources.items():
        step.addParameterSources(name, [source])
    model_outputs = {}
    for name, description in outputs.items():
        output = QgsProcessingModelOutput(description, description)
        output.setChildId(child_id)
        output.setChildOutputName(name)
        model_outputs[description] = output
    step.setModelOutputs(model_outputs)
    model.addChildAlgorithm(step)


def main() -> None:
    app = QgsApplication([], False)
    app.initQgis()
    model = QgsProcessingModelAlgorithm("SegEarth-OV chain", "SegEarth-OV", "segearth")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                            QgsProcessingModelParameter("raster"))
    model.addModelParameter(QgsProcessingParameterString("classes", "Classes", multiLine=True),
                            QgsProcessingModelParameter("classes"))
    raster = QgsProcessingModelChildParameterSource.fromModelParameter("raster")
    classes = QgsProcessingModelChildParameterSource.fromModelParameter("classes")
    child(model, "segearth:segment", "segment", (200, 100), {"INPUT": raster, "CLASSES": classes},
          {"OUTPUT": "segmentation"})
    child(model, "segearth:segment_vector", "vectorize", (200, 250), {"INPUT": raster, "CLASSES": classes},
          {"OUTPUT": "polygons"})
    child(model, "segearth:class_stats", "statistics", (450, 175), {
        "INPUT": QgsProcessingModelChildParameterSource.fromChildOutput("segment", "OUTPUT"),
        "ZONES": QgsProcessingModelChildParameterSource.fromChildOutput("vectorize", "OUTPUT")},
        {"OUTPUT": "statistics"})
    target = Path(__file__).with_name("segearth_chain.model3")
    if not model.toFile(str(target)):
        raise SystemExit(f"could not write {target}")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
