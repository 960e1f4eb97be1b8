"""Pure functions of the plugin (no QGIS, no GDAL, no torch): the processing grid and its blocks, pixel
stretches, class presets and colours, the request rules shared with the backend, accuracy measures, what a run
reports, speed estimates."""
