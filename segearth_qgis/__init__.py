"""SegEarth-OV for QGIS: the QGIS plugin package (runs inside QGIS's Python; never imports torch).

The dock panel and the job run the inference through a backend process
(``segearth_backend``, see ``client/backend_client.py``).
"""


from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plugin import SegEarthPlugin


def classFactory(iface: Any) -> "SegEarthPlugin":  # noqa: N802 - the name QGIS looks for
    from .plugin import SegEarthPlugin

    return SegEarthPlugin(iface)
