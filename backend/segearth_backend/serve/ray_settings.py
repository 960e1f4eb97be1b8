"""How ``serve --ray`` uses Ray: which cluster, how many replicas, what each one holds (no Ray import here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError

#: The Ray Serve application's default name (``--ray-app``).
DEFAULT_APP = "segearth"
APP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class RaySettings:
    """The Ray side of ``serve --ray`` (validated here, once).

    Attributes:
        address: an existing cluster (``auto``, ``ray://head:10001``, ``head:6379``); None starts a local
            Ray instance that ends with the service.
        replicas: a fixed number of replicas (ignored with ``autoscale``).
        autoscale: (min, max) replicas, scaled by Ray Serve on the number of requests in flight.
        gpus_per_replica: GPUs each replica reserves (may be a fraction); None: 1 when the cluster has
            GPUs, else 0.
        cpus_per_replica: CPUs each replica reserves (on the CPU, its torch threads).
        local_cpus: CPUs the local Ray instance may use (None: all); not with ``address``.
        local_object_store_mb: the local instance's object store (None: Ray's default); not with ``address``.
        app: the Ray Serve application's name (two services on one cluster need two names).
    """

    address: Optional[str] = None
    replicas: int = 1
    autoscale: Optional[tuple[int, int]] = None
    gpus_per_replica: Optional[float] = None
    cpus_per_replica: float = 1.0
    local_cpus: Optional[int] = None
    local_object_store_mb: Optional[int] = None
    app: str = DEFAULT_APP

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {self.replicas}.")
        if self.autoscale is not None:
            low, high = self.autoscale
            if low < 0 or high < 1 or low > high:
                raise ConfigError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {low}:{high}.")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise ConfigError(f"--gpus-per-replica must be 0 or more, got {self.gpus_per_replica}.")
        if self.cpus_per_replica <= 0:
            raise ConfigError(f"--cpus-per-replica must be positive, got {self.cpus_per_replica}.")
        if self.address is not None and (self.local_cpus is not None or self.local_object_store_mb is not None):
            raise ConfigError("--ray-cpus and --ray-object-store-mb size a local Ray instance; with --ray-address "
                              "the cluster's own settings apply (give them to `ray start`).")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise ConfigError(f"--ray-cpus must be at least 1, got {self.local_cpus}.")
        if self.local_object_store_mb is not None and self.local_object_store_mb < 80:
            raise ConfigError(f"--ray-object-store-mb must be at least 80 (Ray's minimum), got "
                              f"{self.local_object_store_mb}.")
        if not APP_NAME.fullmatch(self.app):
            raise ConfigError(f"--ray-app must be 1 to 64 letters, digits, '_' or '-', got {self.app[:80]!r}.")

    @property
    def max_replicas(self) -> int:
        """The most replicas there can be: the number of blocks worth sending at once."""
        return self.autoscale[1] if self.autoscale is not None else self.replicas

    @property
    def min_replicas(self) -> int:
        return self.autoscale[0] if self.autoscale is not None else self.replicas


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"1:4"`` -> (1, 4).

    Raises:
        ConfigError: not two whole numbers separated by a colon.
    """
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ConfigError(f"--autoscale takes MIN:MAX replicas, for example 1:4; got {text[:40]!r}.")
    return int(low), int(high)
