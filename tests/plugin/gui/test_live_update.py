"""What an update while typing replaces: layers leave the map, only the files the update wrote leave the disk."""

from __future__ import annotations

import os

from qgis.core import QgsProject, QgsRasterLayer

from segearth_qgis.gui.live_update import LastResult, LiveResults, identities
from segearth_qgis.job.request import JobInputs
from tests.plugin.helpers import UTM, smooth_image, write_geotiff


def result(tmp_path, name, live_files=True):
    path = write_geotiff(tmp_path / f"{name}.tif", smooth_image(20, 30), 32633, UTM)
    style = path.with_suffix(".qml")
    style.write_text("<qgis/>")
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    owned = identities([path, style, path.with_name(path.name + ".aux.xml")]) if live_files else {}
    return LastResult(JobInputs(None, "a\nb"), [layer.id()], owned), path, style


def test_an_update_replaces_the_previous_layer_and_only_the_files_it_wrote(tmp_path):
    live, project = LiveResults(), QgsProject.instance()
    first, first_path, _ = result(tmp_path, "segment", live_files=False)  # a Segment press: the user's files
    assert live.replace_with(first, live=False) is None
    second, second_path, second_style = result(tmp_path, "update1")
    assert live.replace_with(second, live=True) == "replaced the previous result"
    assert project.mapLayer(first.layer_ids[0]) is None and first_path.exists()

    second_path.write_bytes(second_path.read_bytes())  # the user wrote over the update's GeoTIFF since
    os.utime(second_path, ns=(1, 1))
    third, third_path, _ = result(tmp_path, "update2")
    live.replace_with(third, live=True)
    assert second_path.exists() and not second_style.exists()  # theirs now / still the update's own

    live.pin()
    fourth, _, _ = result(tmp_path, "update3")
    assert live.replace_with(fourth, live=True) is None  # kept: both stay
    assert third_path.exists() and project.mapLayer(third.layer_ids[0]) is not None


def test_a_layer_the_user_removed_is_not_reported_as_replaced(tmp_path):
    live, project = LiveResults(), QgsProject.instance()
    first, first_path, _ = result(tmp_path, "gone")
    live.replace_with(first, live=True)
    project.removeMapLayers(first.layer_ids)
    second, _, _ = result(tmp_path, "next")
    assert live.replace_with(second, live=True) is None
    assert not first_path.exists()  # the update's own file still goes
