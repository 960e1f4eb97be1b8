"""How results look on the map: class palettes, styles beside files, styling of our GeoTIFFs when opened."""
