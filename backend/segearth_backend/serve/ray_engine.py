"""``serve --ray``: the service's engine as a Ray Serve application, one segmenter per replica.

The HTTP front stays this process's Starlette app (:mod:`.app`: the same
routes, guards, bundle, progress and admission as a single-process backend,
the same ready file); every ``/segment`` and ``/classes/embed`` goes through
a Serve deployment handle to one of the replicas (:mod:`.ray_replica`), which
Ray places on the cluster's nodes, restarts when they die and, with
``--autoscale``, adds and removes with the load. Serve's own HTTP proxy is not
started: nothing but this front listens.

A request whose replica is lost (its process killed, its node gone) is
answered 503 ``replica_lost`` with ``Retry-After``: the client sends it again
and Ray routes it to a live replica.

Ray is imported only by this module, and only ``serve --ray`` imports it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import traceback
from typing import Any, Optional

from ..config import EngineConfig
from ..errors import ApiError, ConfigError, PredictionCancelledError, SegEarthError
from .engine_base import EngineBase
from .inference import SegmentAnswer, SegmentRequest
from .progress import Job
from .ray_replica import SegmenterReplica
from .ray_settings import RaySettings

log = logging.getLogger(__name__)

DEPLOYMENT = "segmenter"
#: Seconds a client should wait before sending again a request whose replica was lost.
RETRY_AFTER_LOST = 2
#: Seconds between two looks at the replicas' states (for /health).
REFRESH_SECONDS = 2.0
#: Seconds between Serve's health checks of a replica (Ray's default, 10 s, leaves a dead replica counted as
#: running that long; the check is answered by the replica's event loop, free while it computes).
HEALTH_CHECK_SECONDS = 2.0
#: Seconds to wait for the first replica's description after the application is running.
DESCRIBE_TIMEOUT = 600.0
#: Seconds to wait for Ray to shut down when the service stops.
CLOSE_TIMEOUT = 30.0


class RayEngine(EngineBase):
    """Serves through a Ray Serve application (see the module docstring).

    Args:
        config: the engine configuration every replica loads.
        settings: the cluster and the replicas.
        warmup: each replica runs a tiny prediction after loading.
        max_queue: requests that may wait while every replica is busy.
        recover_after: see :class:`~segearth_backend.serve.local_engine.LocalEngine`.
    """

    def __init__(self, config: EngineConfig, settings: RaySettings, warmup: bool = True, max_queue: int = 4,
                 recover_after: int = 20) -> None:
        super().__init__(max_queue)
        # Before Ray is first imported: its C++ failure-signal handler would take the SIGTERM of a graceful
        # shutdown and end the process with SIGABRT.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
            raise ConfigError("--ray needs Ray Serve, which is not installed here: pip install "
                              "'segearth-backend[ray]' (the same Ray version on every node of the cluster).")
        self.config, self.settings = config, settings
        self.warmup, self.recover_after = warmup, recover_after
        self.handle: Any = None
        self.replicas: dict[str, int] = {"ready": 0, "total": settings.min_replicas}
        self._started_ray = False
        self._stopping = threading.Event()
        self._owner: Optional[threading.Thread] = None

    @property
    def slots(self) -> int:
        return self.settings.max_replicas

    # ------------------------------------------------------------------ start and stop
    def load(self) -> None:
        """Start or join Ray, deploy the replicas, wait until they have loaded the model.

        Ray is started and stopped on one thread that lives as long as the service: the local
        instance's processes die with the thread that started them (Linux's parent-death signal).
        """
        self._owner = threading.Thread(target=self._own_ray, name="segearth-ray", daemon=True)
        self._owner.start()
        self.loaded.wait()

    def _own_ray(self) -> None:
        try:
            self._deploy()
        except SegEarthError as error:
            self.status, self.error = "failed", str(error)
            log.error("the Ray Serve application could not start: %s", error)
        except ConnectionError as error:  # ray.init could not join the cluster
            cause = f" ({_first_lines(str(error.__cause__), 2)})" if error.__cause__ is not None else ""
            self.status, self.error = "failed", (
                f"Cannot join the Ray cluster at {self.settings.address}: {error}{cause}. Check --ray-address, that "
                "the cluster runs the same Ray version as this service, and, when it uses token authentication, "
                "that RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN_PATH) are set here.")
            log.error("%s", self.error)
        except Exception as error:  # noqa: BLE001 - Ray's own failures: reported through /health and the exit code
            self.status, self.error = "failed", f"{type(error).__name__}: {_first_lines(str(error))}"
            log.error("the Ray Serve application could not start:\n%s", traceback.format_exc())
        finally:
            self.loaded.set()
        self._stopping.wait()
        self._shut_down()

    def _deploy(self) -> None:
        import ray
        from ray import serve

        settings = self.settings
        if settings.address is None:
            log.info("starting a local Ray instance")
            # "local": a new instance even when RAY_ADDRESS or a `ray start` on this machine names another one.
            ray.init(address="local", num_cpus=settings.local_cpus, include_dashboard=False, log_to_driver=True,
                     object_store_memory=(settings.local_object_store_mb * 2**20
                                          if settings.local_object_store_mb else None))
            self._started_ray = True
        else:
            log.info("joining the Ray cluster at %s", settings.address)
            ray.init(address=settings.address, log_to_driver=True)
        resources = ray.cluster_resources()
        gpus = settings.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        self._check_fits(resources, gpus)
        serve.start(proxy_location="Disabled")
        options: dict[str, Any] = {
            "name": DEPLOYMENT, "max_ongoing_requests": 1, "health_check_period_s": HEALTH_CHECK_SECONDS,
            "ray_actor_options": {"num_cpus": settings.cpus_per_replica, "num_gpus": gpus},
            "logging_config": {"enable_access_log": False},
        }
        if settings.autoscale is not None:
            low, high = settings.autoscale
            options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                             "initial_replicas": max(low, 1), "target_ongoing_requests": 1}
        else:
            options["num_replicas"] = settings.replicas
        application = serve.deployment(SegmenterReplica).options(**options).bind(
            self.config, self.warmup, self.recover_after, settings.cpus_per_replica)
        log.info("deploying %s replica(s) of %s GPU and %s CPU each; each loads the model",
                 f"{settings.autoscale[0]}-{settings.autoscale[1]}" if settings.autoscale else settings.replicas,
                 gpus, settings.cpus_per_replica)
        self.handle = serve.run(application, name=settings.app, route_prefix=None)
        facts = self.handle.describe.remote().result(timeout_s=DESCRIBE_TIMEOUT)
        if facts["status"] != "ready":
            raise SegEarthError(str(facts["error"]))
        # One replica's facts; its feature-cache counters would be stale and one replica's only (each keeps its own).
        self.info = {key: value for key, value in facts["info"].items() if key != "feature_cache"}
        self._refresh_replicas()
        threading.Thread(target=self._watch_replicas, name="segearth-ray-replicas", daemon=True).start()
        self.status = "ready"

    def _check_fits(self, resources: dict[str, float], gpus: float) -> None:
        """On a local instance, refuse replicas that cannot be placed (Ray would wait for them forever)."""
        wanted = {"CPU": self.settings.cpus_per_replica, "GPU": gpus}
        missing = {name: amount for name, amount in wanted.items() if amount > resources.get(name, 0)}
        if missing and self.settings.address is None:
            have = ", ".join(f"{resources.get(name, 0):g} {name}" for name in wanted)
            raise ConfigError(f"A replica needs {', '.join(f'{v:g} {k}' for k, v in missing.items())} but this Ray "
                              f"instance has {have}: lower --gpus-per-replica / --cpus-per-replica.")
        if missing:
            log.warning("a replica needs %s, more than the cluster has now; Ray waits until nodes provide it",
                        missing)

    def close(self) -> None:
        """Remove the application and stop the local Ray instance this service started (on the Ray thread)."""
        self._stopping.set()
        if self._owner is not None:
            self._owner.join(CLOSE_TIMEOUT)

    def _shut_down(self) -> None:
        if self.handle is None and not self._started_ray:
            return
        try:
            import ray
            from ray import serve

            if self._started_ray:
                serve.shutdown()
            else:
                serve.delete(self.settings.app)
            ray.shutdown()
        except Exception as error:  # noqa: BLE001 - shutting down anyway; say what was left behind
            log.warning("stopping the Ray Serve application failed (%s): check `serve status` on the cluster",
                        _first_lines(str(error)))

    # ------------------------------------------------------------------ replicas
    def _refresh_replicas(self) -> None:
        from ray import serve

        application = serve.status().applications.get(self.settings.app)
        deployment = application.deployments.get(DEPLOYMENT) if application is not None else None
        states = dict(deployment.replica_states) if deployment is not None else {}
        running = int(states.get("RUNNING", 0))
        live = running + int(states.get("STARTING", 0)) + int(states.get("UPDATING", 0)) \
            + int(states.get("RECOVERING", 0))
        replicas = {"ready": running, "total": max(live, self.settings.min_replicas)}
        if self.settings.autoscale is not None:
            replicas.update(min=self.settings.autoscale[0], max=self.settings.autoscale[1])
        self.replicas = replicas

    def _watch_replicas(self) -> None:
        while not self._stopping.wait(REFRESH_SECONDS):
            try:
                self._refresh_replicas()
            except Exception as error:  # noqa: BLE001 - a hiccup of the controller: keep the last known state
                log.debug("could not read the replicas' state: %s", error)

    def health_fields(self) -> dict[str, Any]:
        return {"replicas": dict(self.replicas), "engine": "ray"}

    # ------------------------------------------------------------------ work
    async def segment(self, request: SegmentRequest, job: Job) -> SegmentAnswer:
        from ray.serve.exceptions import RequestCancelledError

        if job.cancel.is_set():
            raise PredictionCancelledError("The request was cancelled before it started.")
        stream = self.handle.options(stream=True).segment.remote(request)
        watcher = asyncio.ensure_future(_cancel_when_asked(stream, job))
        answer: Optional[SegmentAnswer] = None
        try:
            async for event in stream:
                if event[0] == "progress":
                    job.update(*event[1:])
                elif event[0] == "error":
                    raise ApiError(*event[1:])
                else:
                    answer = event[1]
        except RequestCancelledError:
            raise PredictionCancelledError("The request was cancelled.") from None
        except asyncio.CancelledError:  # the service answered without waiting (it is stopping): stop the replica
            stream.cancel()
            raise
        except Exception as error:
            if job.cancel.is_set():
                raise PredictionCancelledError("The request was cancelled.") from None
            if _replica_lost(error):
                raise self._lost(job.request_id, error) from None
            raise
        finally:
            watcher.cancel()
        if answer is None:
            if job.cancel.is_set():
                raise PredictionCancelledError("The request was cancelled.")
            raise RuntimeError("the replica's stream ended without an answer")
        return answer

    async def embed(self, classes: list[str]) -> tuple[int, int]:
        try:
            event = await self.handle.embed.remote(classes)
        except Exception as error:
            if _replica_lost(error):
                raise self._lost("embed", error) from None
            raise
        if event[0] == "error":
            raise ApiError(*event[1:])
        return tuple(event[1])

    def _lost(self, what: str, error: Exception) -> ApiError:
        log.warning("request %s: its replica was lost (%s: %s); the client may send it again", what,
                    type(error).__name__, _first_lines(str(error), 1))
        return ApiError(503, "replica_lost", "The replica working on this request stopped (its process or node "
                        f"was lost); Ray is replacing it. Send the request again in {RETRY_AFTER_LOST} s.",
                        {"Retry-After": str(RETRY_AFTER_LOST)})


async def _cancel_when_asked(stream: Any, job: Job, interval: float = 0.1) -> None:
    """Cancel ``stream`` once ``job.cancel`` is set (the client went away)."""
    while not job.cancel.is_set():
        await asyncio.sleep(interval)
    stream.cancel()


def _replica_lost(error: BaseException) -> bool:
    """True for Ray's errors that mean the replica (its process, its node or its results) is gone."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    lost = (ray_errors.RayActorError, ray_errors.WorkerCrashedError, ray_errors.NodeDiedError,
            ray_errors.ObjectLostError, serve_errors.ReplicaUnavailableError,
            serve_errors.DeploymentUnavailableError)
    return isinstance(error, lost)


def _first_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:count])
