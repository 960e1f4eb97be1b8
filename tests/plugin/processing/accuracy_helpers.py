"""Class rasters and references with a prescribed confusion matrix (shared by the accuracy tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from osgeo import gdal

from tests.plugin.helpers import UTM, write_geotiff

PREDICTION_NAMES = ["background", "building, roof", "road", "tree, forest"]
#: Reference raster codes with their category names (0 = nodata, 5 = clutter, mapped to ignore).
REFERENCE_NAMES = ["", "Road", "Building", "Forest", "Background", "Clutter"]
#: Reference class index (in prediction order) -> reference code.
CODE_OF = {0: 4, 1: 2, 2: 1, 3: 3}
#: The prescribed confusion matrix: rows reference, columns classification (pixels).
MATRIX = np.array([[20, 2, 1, 0], [3, 15, 2, 0], [0, 1, 12, 2], [1, 0, 3, 18]])
#: Hand-computed: 65 of 80 correct; p_e = (23*24 + 20*18 + 15*18 + 22*20) / 6400 = 1622 / 6400.
OVERALL_ACCURACY = 65 / 80
KAPPA = (5200 - 1622) / (6400 - 1622)


def set_class_names(path: Path, names: list[str], metadata: bool = True) -> None:
    dataset = gdal.Open(str(path), gdal.GA_Update)
    dataset.GetRasterBand(1).SetCategoryNames(names)
    if metadata:
        dataset.SetMetadataItem("SEGEARTH_CLASSES", json.dumps(names))
    dataset = None


def prescribed_pair(folder: Path, seed: int = 7) -> tuple[Path, Path]:
    """A 10 x 10 class raster (2 m, UTM 33N) and a reference raster on its grid.

    Rows 0-7 hold the pixels of :data:`MATRIX` in a shuffled order; row 8 is
    nodata (255) in the classification; row 9 is 'Clutter' in the reference.
    """
    reference = np.repeat(np.arange(4), MATRIX.sum(axis=1))
    prediction = np.concatenate([np.repeat(np.arange(4), row) for row in MATRIX])
    order = np.random.default_rng(seed).permutation(80)
    classes = np.zeros((10, 10), np.uint8)
    codes = np.zeros((10, 10), np.uint8)
    classes[:8] = prediction[order].reshape(8, 10)
    codes[:8] = np.vectorize(CODE_OF.get)(reference[order].reshape(8, 10))
    classes[8], codes[8] = 255, 1
    classes[9], codes[9] = 0, 5
    classified = write_geotiff(folder / "classified.tif", classes[None], 32633, UTM, nodata=255)
    set_class_names(classified, PREDICTION_NAMES)
    reference_path = write_geotiff(folder / "reference.tif", codes[None], 32633, UTM, nodata=0)
    set_class_names(reference_path, REFERENCE_NAMES, metadata=False)
    return classified, reference_path
