"""Command line: ``segearth-backend serve`` / ``info`` / ``check-weights`` / ``models`` / ``eval`` / ``bench``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Optional

from .errors import SegEarthError

if TYPE_CHECKING:
    from .config import EngineConfig
    from .serve.ray_settings import RaySettings


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model preset (see `segearth-backend models`), open_clip model name or "
                        "JSON config path (SEGEARTH_MODEL; default clip-vit-b16)")
    parser.add_argument("--clip-weights", help="'auto' (the preset's), pretrained tag or checkpoint path "
                        "(SEGEARTH_CLIP_WEIGHTS)")
    parser.add_argument("--upsampler-weights", help="'auto' (SimFeatUp when it fits the model), 'simfeatup', "
                        "a SimFeatUp checkpoint path or 'none' (SEGEARTH_UPSAMPLER_WEIGHTS)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (SEGEARTH_DEVICE)")
    parser.add_argument("--cache-dir", help="downloads and text-embedding cache (SEGEARTH_CACHE_DIR)")
    parser.add_argument("--precision", help="auto, float32, float16 or bfloat16 (SEGEARTH_PRECISION; auto: "
                        "bfloat16 autocast on CUDA, float32 on the CPU)")
    parser.add_argument("--attention", help="training-free attention of the last block(s): auto (the preset's), "
                        "vanilla, MaskCLIP, ClearCLIP, SCLIP or SegEarth (SEGEARTH_ATTENTION)")
    parser.add_argument("--last-blocks", type=int, help="how many last blocks use it, their outputs summed "
                        "(SEGEARTH_LAST_BLOCKS; default: the preset's, 1 for SegEarth-OV, 2 for the SAR model)")
    parser.add_argument("--feature-cache-mb", type=float, help="memory for the class-independent work of recent "
                        "images, so new class lists on them are fast (SEGEARTH_FEATURE_CACHE_MB; default 1024; "
                        "0 disables it)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _ray_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--ray", action="store_true", help="serve the same protocol through a Ray Serve "
                       "application whose replicas each hold one segmenter (needs `pip install segearth-backend[ray]`)")
    group.add_argument("--ray-address", help="join this Ray cluster (auto, head:6379 or ray://head:10001); "
                       "default: start a local Ray instance that ends with the service")
    group.add_argument("--replicas", type=int, help="number of replicas (default 1)")
    group.add_argument("--autoscale", metavar="MIN:MAX", help="let Ray Serve scale the replicas between MIN and MAX "
                       "with the requests in flight (instead of --replicas)")
    group.add_argument("--gpus-per-replica", type=float, help="GPUs each replica reserves, may be a fraction "
                       "(default 1 when the cluster has GPUs, else 0)")
    group.add_argument("--cpus-per-replica", type=float, help="CPUs each replica reserves: its torch threads on "
                       "the CPU (default 1)")
    group.add_argument("--ray-cpus", type=int, help="CPUs the local Ray instance may use (default: all)")
    group.add_argument("--ray-object-store-mb", type=int, help="the local Ray instance's object store "
                       "(default: Ray's, 30%% of the memory)")
    group.add_argument("--ray-app", help="the Ray Serve application's name (default segearth; two services on "
                       "one cluster need two names)")


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    from .config import EngineConfig

    return EngineConfig.from_env(model=args.model, clip_weights=args.clip_weights,
                                 upsampler_weights=args.upsampler_weights, device=args.device,
                                 cache_dir=args.cache_dir, precision=getattr(args, "precision", None),
                                 feature_cache_mb=getattr(args, "feature_cache_mb", None),
                                 attention=getattr(args, "attention", None),
                                 last_blocks=getattr(args, "last_blocks", None))


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .serve.app import ENV_TOKEN, ServiceSettings, read_token_file, serve
    from .serve.connections import ConnectionLimits

    token: Optional[str]
    if args.token_file:
        token = read_token_file(Path(args.token_file))
    elif args.token:
        logging.getLogger("segearth_backend").warning(
            "the token was given on the command line, where other users of this machine can see it (ps); "
            "use --token-file or $%s instead", ENV_TOKEN)
        token = args.token
    else:
        token = os.environ.get(ENV_TOKEN) or None
    given = {"max_queue": args.max_queue, "body_timeout": args.body_timeout}  # None: the setting's own default
    limits = {"idle_timeout": args.idle_timeout, "max_connections": args.max_connections}
    settings = ServiceSettings(
        engine=_engine_config(args), host=args.host, port=args.port, token=token,
        max_request_bytes=int(args.max_request_mb * 2**20),
        connections=ConnectionLimits(**{key: value for key, value in limits.items() if value is not None}),
        ready_file=Path(args.ready_file) if args.ready_file else None,
        warmup=not args.no_warmup, exit_with_parent=args.exit_with_parent, ray=_ray_settings(args),
        **{key: value for key, value in given.items() if value is not None},
    )
    return serve(settings)


RAY_ONLY = ("ray_address", "replicas", "autoscale", "gpus_per_replica", "cpus_per_replica", "ray_cpus",
            "ray_object_store_mb", "ray_app")


def _ray_settings(args: argparse.Namespace) -> Optional[RaySettings]:
    """The Ray settings of ``serve --ray`` (None without ``--ray``; Ray options without it are an error)."""
    from .errors import ConfigError
    from .serve.ray_settings import RaySettings, parse_autoscale

    if not args.ray:
        given = [name for name in RAY_ONLY if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} is a Ray option: add --ray.")
        return None
    if args.autoscale is not None and args.replicas is not None:
        raise ConfigError("Give either --replicas N or --autoscale MIN:MAX, not both.")
    values = {"address": args.ray_address, "replicas": args.replicas,
              "autoscale": parse_autoscale(args.autoscale) if args.autoscale is not None else None,
              "gpus_per_replica": args.gpus_per_replica, "cpus_per_replica": args.cpus_per_replica,
              "local_cpus": args.ray_cpus, "local_object_store_mb": args.ray_object_store_mb, "app": args.ray_app}
    return RaySettings(**{key: value for key, value in values.items() if value is not None})


def _info(args: argparse.Namespace) -> int:
    if args.environment:
        from .device import environment_report

        print(json.dumps(environment_report(), indent=2))
        return 0
    from .pipeline.segmenter import load_segmenter

    segmenter = load_segmenter(config=_engine_config(args))
    print(json.dumps(segmenter.describe(), indent=2))
    return 0


def _fetch_weights(args: argparse.Namespace) -> int:
    """Download whatever weights the configuration needs and lacks (nothing when all are there)."""
    from .model.weights_check import missing_weights
    from .pipeline.segmenter import load_segmenter

    config = _engine_config(args)
    missing = missing_weights(config)
    if not missing:
        print("All weight files are present.")
        return 0
    for item in missing:
        print(f"fetching: {item.what} from {item.url}", flush=True)
    load_segmenter(config=config, device="cpu")  # loading downloads what is missing, or fails at once offline
    still = missing_weights(config)
    print("All weight files are present." if not still else f"{len(still)} weight file(s) still missing.")
    return 0 if not still else 3


def _check_weights(args: argparse.Namespace) -> int:
    """3: files are missing; 4: the CLIP weights file does not fit the model (its keys loaded and compared)."""
    from .model.weights_check import clip_file_problem, describe_missing, missing_weights

    config = _engine_config(args)
    missing = missing_weights(config)
    if missing:
        print(describe_missing(missing))
        return 3
    problem = clip_file_problem(config)
    print(problem or "All weight files are present and fit the model.")
    return 4 if problem else 0


def _models(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import default_cache_dir
    from .model.listing import format_models, model_status

    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    rows = model_status(cache)
    print(json.dumps(rows, indent=2) if args.json else format_models(rows))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation.benchmarks import find_benchmark
    from .evaluation.run import benchmark_predictor, evaluate, format_result
    from .pipeline.segmenter import load_segmenter

    preset = find_benchmark(args.dataset)
    if preset.model and not args.model and not os.environ.get("SEGEARTH_MODEL"):
        args.model = preset.model  # the SAR sets run with the SAR model, as the authors' configs do
    segmenter = load_segmenter(config=_engine_config(args))

    def progress(items, total):  # type: ignore[no-untyped-def]
        from tqdm import tqdm

        return tqdm(items, total=total, desc=preset.name, unit="image", file=sys.stderr, dynamic_ncols=True)

    result = evaluate(preset, Path(args.root).expanduser(), benchmark_predictor(segmenter, preset), limit=args.limit,
                      ann_file=Path(args.ann_file).expanduser() if args.ann_file else None, progress=progress)
    print(format_result(result))
    if args.out:
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        report = result.to_json({"model": segmenter.describe(), "root": str(Path(args.root).expanduser())})
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report: {out}")
    return 0


def _eval_arguments(evaluation: argparse.ArgumentParser) -> None:
    evaluation.add_argument("--dataset", required=True, help="benchmark: openearthmap, loveda, isaid, potsdam, "
                            "vaihingen, uavid, udd5, vdd, whu_aerial, whu_sat_ii, inria, xbd, chn6_cug, deepglobe, "
                            "massachusetts, spacenet, wbs_si; SAR (run with the SAR model unless --model is given): "
                            "openearthmap_sar, fusar, pie_sar, whu_sar, yeseg_sar, ddhrnet_korea_sar, "
                            "ddhrnet_shandong_sar, ddhrnet_xian_sar")
    evaluation.add_argument("--root", required=True, help="the dataset folder (what the authors' config calls "
                            "data/<Dataset>, e.g. data/OpenEarthMap holding img_dir/val and ann_dir/val)")
    evaluation.add_argument("--limit", type=int, help="evaluate only the first N images")
    evaluation.add_argument("--ann-file", help="split file (default: <root>/ the name the authors' config "
                            "gives, e.g. wbs-si_val.txt, which must then be their file: its SHA-256 is checked; a "
                            "file given here is used as it is)")
    evaluation.add_argument("--out", help="write the JSON report here")
    _engine_arguments(evaluation)


def main(argv: Optional[list[str]] = None) -> int:
    # On Apple GPUs, operations PyTorch lacks there run on the CPU instead of failing (read when torch loads).
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    from .serve.app import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_QUEUE, DEFAULT_MAX_REQUEST_MB
    from .serve.connections import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS

    parser = argparse.ArgumentParser(prog="segearth-backend", description="SegEarth-OV inference backend")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP inference service")
    _engine_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (0: pick a free one and report it)")
    serve.add_argument("--token", help="require this token (default: $SEGEARTH_BACKEND_TOKEN); needed to listen "
                       "beyond loopback. Visible to other users in `ps`: prefer --token-file")
    serve.add_argument("--token-file", help="read the token from this file (first choice over --token and "
                       "$SEGEARTH_BACKEND_TOKEN)")
    serve.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_MB,
                       help=f"largest request body (default {DEFAULT_MAX_REQUEST_MB})")
    serve.add_argument("--max-queue", type=int, help="requests that may wait while one runs; more get 503 with "
                       f"Retry-After (default {DEFAULT_MAX_QUEUE})")
    serve.add_argument("--body-timeout", type=float, help="seconds a client may take to send a request body; "
                       f"slower ones get 408 (default {DEFAULT_BODY_TIMEOUT:g})")
    serve.add_argument("--idle-timeout", type=float, help="seconds a connection may stay silent between requests "
                       f"or take to send a request's line and headers before it is closed (default "
                       f"{DEFAULT_IDLE_TIMEOUT:g})")
    serve.add_argument("--max-connections", type=int, help="connections open at once; a new one beyond that "
                       f"closes the longest-idle ones (default {DEFAULT_MAX_CONNECTIONS})")
    serve.add_argument("--ready-file", help="write {url, pid} here (JSON) once the model is loaded")
    serve.add_argument("--no-warmup", action="store_true", help="skip the warm-up inference at start")
    serve.add_argument("--exit-with-parent", action="store_true",
                       help="shut down when the process that started this one ends (used by the plugin)")
    _ray_arguments(serve.add_argument_group("Ray (serve through a Ray Serve application: replicas on a cluster)"))
    info = commands.add_parser("info", help="load the model and print what was loaded where")
    info.add_argument("--environment", action="store_true",
                      help="print the Python, PyTorch and device facts only (no model is loaded)")
    fetch = commands.add_parser("fetch-weights", help="download the weights the configuration needs and lacks")
    _engine_arguments(fetch)
    _engine_arguments(info)
    check = commands.add_parser("check-weights", help="list missing weight files and where to put them "
                                "(exit code 3 when some are missing)")
    _engine_arguments(check)
    models = commands.add_parser("models", help="list the model presets, which are installed and where the "
                                 "missing weights go")
    models.add_argument("--cache-dir", help="downloads and text-embedding cache (SEGEARTH_CACHE_DIR)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    _eval_arguments(commands.add_parser("eval", help="evaluate on one of the paper's benchmarks (the authors' "
                                        "protocol, mmseg's mIoU)"))
    commands.add_parser("bench", help="speed and memory benchmark (see --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .speed_bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "models":
        return _models(args)
    try:
        if args.command == "check-weights":
            return _check_weights(args)
        if args.command == "fetch-weights":
            return _fetch_weights(args)
        if args.command == "eval":
            return _eval(args)
        return _serve(args) if args.command == "serve" else _info(args)
    except SegEarthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
