"""The heap trim between window rows: available with glibc (this Debian), harmless when repeated."""

from __future__ import annotations

import platform
import sys

from segearth_backend.upsampler.heap import release_free_memory


def test_trim_is_available_on_glibc_and_can_be_repeated():
    blocks = [bytearray(1 << 20) for _ in range(32)]  # freed heap memory for the trim to return
    del blocks
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_free_memory() is expected
    assert release_free_memory() is expected
