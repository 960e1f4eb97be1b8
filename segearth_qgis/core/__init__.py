"""Pure functions of the plugin (no QGIS, no torch): block plans, stretches, class presets, grids."""
