"""How long a job will take: a prior per device, corrected by what was measured (pure Python).

The backend's speed is seconds per megapixel of processing grid. Before any
job the estimate uses a prior for the device kind (ViT-B/16 with SimFeatUp on
an ordinary machine); every finished job adds its seconds and megapixels to a
running total per device and model, so a tiny job (whose fixed costs dominate)
barely moves the estimate while a large one counts in proportion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

#: Seconds per megapixel, ViT-B/16 + SimFeatUp: a 2-core CPU measured ~14 s/MP (448 x 448 in 2.8 s); a GPU
#: is far faster; Apple's MPS in between. Deliberately on the slow side.
PRIOR_SECONDS_PER_MEGAPIXEL = {"cuda": 1.0, "mps": 6.0, "cpu": 20.0}
#: How many megapixels of measurement the prior is worth.
PRIOR_WEIGHT_MEGAPIXELS = 0.5
#: A local backend that is not running yet takes about this long to start (Python, torch, the model).
STARTUP_SECONDS = 15.0
#: ... and between these many seconds (20 s was measured on a 2-core CPU; a warm disk cache starts faster).
STARTUP_RANGE_SECONDS = (8.0, 40.0)
#: A run takes from this much less to this much more than the average speed says (scenes, windows and what
#: else the computer does differ); the upper factor grows with the CPU's load (see :func:`estimate_range`).
SPEED_RANGE_FACTORS = (0.7, 1.8)
#: The most the machine's load may stretch that upper end (a load average counts every waiting process, not all
#: of which slow the backend down).
MAX_LOAD_FACTOR = 4.0


@dataclass(frozen=True)
class SpeedRecord:
    """Measured totals for one device and model."""

    seconds: float = 0.0
    megapixels: float = 0.0

    def add(self, seconds: float, megapixels: float) -> SpeedRecord:
        if seconds <= 0 or megapixels <= 0:
            return self
        return SpeedRecord(self.seconds + seconds, self.megapixels + megapixels)


def device_key(health: Optional[dict[str, Any]]) -> str:
    """``<device type>/<model>`` from a /health document ("cpu/?" before any backend answered)."""
    health = health or {}
    device = health.get("device") or {}
    return f"{device.get('type', 'cpu')}/{health.get('model', '?')}"


def seconds_per_megapixel(key: str, record: Optional[SpeedRecord]) -> float:
    """The prior for ``key``'s device, pulled towards the measured average by its megapixels."""
    prior = PRIOR_SECONDS_PER_MEGAPIXEL.get(key.split("/", 1)[0], PRIOR_SECONDS_PER_MEGAPIXEL["cpu"])
    record = record or SpeedRecord()
    weight = PRIOR_WEIGHT_MEGAPIXELS
    return (prior * weight + record.seconds) / (weight + record.megapixels)


def estimate_seconds(megapixels: float, key: str, record: Optional[SpeedRecord], backend_running: bool) -> float:
    """Seconds for a job of ``megapixels``, plus start-up when no backend runs yet."""
    return megapixels * seconds_per_megapixel(key, record) + (0.0 if backend_running else STARTUP_SECONDS)


def estimate_range(megapixels: float, key: str, record: Optional[SpeedRecord], backend_running: bool,
                   load: float = 1.0) -> tuple[float, float]:
    """(fewest, most) seconds a job of ``megapixels`` should take, the backend's start included when no backend
    runs yet. ``load``: how many runnable processes per core the machine has (1: none waiting); above 1 a CPU
    job gets that much slower, so the upper end grows with it (a GPU's is left alone)."""
    work = megapixels * seconds_per_megapixel(key, record)
    slower = min(max(1.0, load), MAX_LOAD_FACTOR) if key.split("/", 1)[0] == "cpu" else 1.0
    low, high = work * SPEED_RANGE_FACTORS[0], work * SPEED_RANGE_FACTORS[1] * slower
    if not backend_running:
        low, high = low + STARTUP_RANGE_SECONDS[0], high + STARTUP_RANGE_SECONDS[1]
    return low, high


def cpu_load() -> float:
    """Runnable processes per core over the last minute (1.0 where the system does not say: Windows)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 1.0


def format_estimate(low: float, high: float) -> str:
    """"estimate 20 s to 1 min 10 s" (one duration when both ends read the same)."""
    first, last = format_duration(low), format_duration(high)
    return f"estimate {first}" if first == last else f"estimate {first} to {last}"


def records_from_json(data: dict[str, Any]) -> dict[str, SpeedRecord]:
    records = {}
    for key, value in data.items():
        try:
            records[str(key)] = SpeedRecord(float(value[0]), float(value[1]))
        except (TypeError, ValueError, IndexError, KeyError):
            continue
    return records


def records_to_json(records: dict[str, SpeedRecord]) -> dict[str, list[float]]:
    return {key: [round(r.seconds, 3), round(r.megapixels, 6)] for key, r in records.items()}


def format_duration(seconds: float) -> str:
    """"8 s", "3 min 20 s", "2 h 5 min"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"

