"""Processing fixtures: the SegEarth-OV provider on a tiny-weights backend, and a scene to segment."""

from __future__ import annotations

import pytest
from qgis.core import QgsApplication

from tests.plugin.helpers import UTM, smooth_image, write_geotiff


@pytest.fixture(scope="module")
def provider(qgis_processing, backend_environment):
    from segearth_qgis.client.backend_manager import shared_manager
    from segearth_qgis.processing.provider import SegEarthProvider

    provider = SegEarthProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    yield provider
    QgsApplication.processingRegistry().removeProvider(provider)
    shared_manager().stop()


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    """260 x 300 px of blocky 'land cover' on a 2 m UTM grid; the first 10 columns are nodata (0)."""
    folder = tmp_path_factory.mktemp("inputs")
    image = smooth_image(260, 300, seed=4)
    image[:, :10, :] = 0
    return write_geotiff(folder / "scene.tif", image, 32633, UTM, nodata=0)


@pytest.fixture
def loaded_layers(qgis_iface, monkeypatch):
    """Layers Processing loads into the current project, removed afterwards.

    Processing adds them through the main window's layer tree view (QGIS 3.44 refuses anything but a real one):
    the test interface gets a real view of the project's layer tree.
    """
    from qgis.core import QgsLayerTreeModel, QgsProject
    from qgis.gui import QgsLayerTreeView

    project = QgsProject.instance()
    view = QgsLayerTreeView()
    view.setModel(QgsLayerTreeModel(project.layerTreeRoot(), view))
    monkeypatch.setattr(qgis_iface, "layerTreeView", lambda: view, raising=False)
    before = set(project.mapLayers())
    yield lambda: [layer for key, layer in project.mapLayers().items() if key not in before]
    project.removeMapLayers([key for key in project.mapLayers() if key not in before])
    view.deleteLater()
