"""Benchmark evaluation with the authors' protocol (``segearth-backend eval``).

- :mod:`.resize`: mmcv's keep-ratio rescale to fit 448 x 448, bilinear.
- :mod:`.dataset`: mmseg's file listing and label loading per dataset layout.
- :mod:`.metrics`: mmseg's IoU (areas accumulated over the whole set).
- :mod:`.run`: the loop, the report and its text table.
"""
