"""Loading and unloading the plugin in a real QGIS leaves nothing behind."""

from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QToolBar

import segearth_qgis


def test_load_unload_leaves_nothing(qgis_iface):
    toolbars_before = set(qgis_iface.mainWindow().findChildren(QToolBar))
    plugin = segearth_qgis.classFactory(qgis_iface)
    plugin.initGui()
    assert plugin.action in plugin.toolbar.actions()
    assert plugin.dock.objectName() == "SegEarthOVDock" and plugin.dock.isHidden()
    plugin.action.setChecked(True)  # the main window is not shown in tests: check the dock's own state
    assert not plugin.dock.isHidden()
    qgis_iface.addPluginToRasterMenu.assert_called_with("SegEarth-OV", plugin.action)
    dock, action, toolbar = plugin.dock, plugin.action, plugin.toolbar
    dock.area_box.start_drawing()
    assert qgis_iface.mapCanvas().mapTool() is dock.area_box.map_tool

    plugin.unload()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)  # run deleteLater
    assert sip.isdeleted(dock) and sip.isdeleted(action) and sip.isdeleted(toolbar)
    qgis_iface.removePluginRasterMenu.assert_called_with("SegEarth-OV", action)
    assert qgis_iface.mapCanvas().mapTool() is None
    assert set(qgis_iface.mainWindow().findChildren(QToolBar)) == toolbars_before
    assert plugin.dock is None and plugin.action is None and plugin.toolbar is None


def test_panel_state_persists(qgis_iface):
    from segearth_qgis.gui.dock import SegEarthDock

    first = SegEarthDock(qgis_iface)
    first.classes_box.edit.setPlainText("road\nriver, canal")
    first.options_box.threshold_spin.setValue(0.35)
    first.options_box.lambda_spin.setValue(-0.2)
    first.save_state()
    second = SegEarthDock(qgis_iface)
    assert second.classes_box.edit.toPlainText() == "road\nriver, canal"
    assert second.options_box.threshold_spin.value() == 0.35 and second.options_box.lambda_spin.value() == -0.2


def test_presets_fill_the_panel(qgis_iface):
    from segearth_qgis.gui.dock import SegEarthDock

    dock = SegEarthDock(qgis_iface)
    dock.classes_box.fill_presets()
    loveda = next(a for a in dock.classes_box.presets_menu.actions() if a.text() == "LoveDA")
    loveda.trigger()
    assert dock.classes_box.edit.toPlainText().splitlines()[1] == "building,roof,house"
    assert dock.options_box.threshold_spin.value() == 0.3 and dock.classes_box.background_index() == 0


def test_remote_backend_settings_from_the_panel(qgis_iface):
    from segearth_qgis.gui.dock import SegEarthDock
    from segearth_qgis.settings import backend_settings

    dock = SegEarthDock(qgis_iface)
    dock.backend_box.url_edit.setText("http://gpu-box:8765")
    dock.backend_box.token_edit.setText("s3cret")
    dock.save_state()
    try:
        assert (backend_settings().url, backend_settings().token) == ("http://gpu-box:8765", "s3cret")
        assert dock.backend.is_remote()
        assert SegEarthDock(qgis_iface).backend_box.url_edit.text() == "http://gpu-box:8765"
    finally:
        dock.backend_box.url_edit.setText("")
        dock.backend_box.token_edit.setText("")
        dock.save_state()
    assert not dock.backend.is_remote()
    from segearth_qgis.settings import token_is_saved

    # Found by CI: emptied fields kept the token, and it then beat $SEGEARTH_BACKEND_TOKEN for a URL given by
    # $SEGEARTH_BACKEND_URL (the backend answered 401).
    assert not token_is_saved()


def test_a_saved_token_without_a_saved_url_does_not_beat_the_environment(qgis_iface, monkeypatch):
    from segearth_qgis import settings

    settings.BACKEND_TOKEN.save("left-from-an-old-panel")
    try:
        monkeypatch.setenv("SEGEARTH_BACKEND_URL", "http://gpu-box:8765")
        monkeypatch.setenv("SEGEARTH_BACKEND_TOKEN", "from-the-environment")
        assert (settings.backend_settings().url, settings.backend_settings().token) == \
            ("http://gpu-box:8765", "from-the-environment")
    finally:
        settings.BACKEND_TOKEN.reset()
