"""SegEarth-OV for QGIS: the QGIS plugin package (runs inside QGIS's Python; never imports torch).

The dock panel, the QgsTask job and the Processing provider are built on the
inference backend in ``backend/`` (package ``segearth_backend``).
"""
