"""Command line: ``segearth-backend serve`` / ``info`` / ``check-weights`` / ``bench``."""

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


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="open_clip model name or JSON config path (SEGEARTH_MODEL)")
    parser.add_argument("--clip-weights", help="pretrained tag or checkpoint path (SEGEARTH_CLIP_WEIGHTS)")
    parser.add_argument("--upsampler-weights",
                        help="SimFeatUp checkpoint path, 'simfeatup' or 'none' (SEGEARTH_UPSAMPLER_WEIGHTS)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (SEGEARTH_DEVICE)")
    parser.add_argument("--cache-dir", help="downloads and text-embedding cache (SEGEARTH_CACHE_DIR)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    from .config import EngineConfig

    return EngineConfig.from_env(model=args.model, clip_weights=args.clip_weights,
                                 upsampler_weights=args.upsampler_weights, device=args.device,
                                 cache_dir=args.cache_dir)


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .service import ENV_TOKEN, ServiceSettings, read_token_file, serve

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
    given = {"max_queue": args.max_queue}  # None: the setting's own default
    settings = ServiceSettings(
        engine=_engine_config(args), host=args.host, port=args.port, token=token,
        max_request_bytes=int(args.max_request_mb * 2**20),
        ready_file=Path(args.ready_file) if args.ready_file else None,
        warmup=not args.no_warmup, exit_with_parent=args.exit_with_parent,
        **{key: value for key, value in given.items() if value is not None},
    )
    return serve(settings)


def _info(args: argparse.Namespace) -> int:
    from .segmenter import load_segmenter

    segmenter = load_segmenter(config=_engine_config(args))
    print(json.dumps(segmenter.describe(), indent=2))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
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
    serve.add_argument("--max-request-mb", type=float, default=512, help="largest request body (default 512)")
    serve.add_argument("--max-queue", type=int,
                       help="requests that may wait while one runs; more get 503 with Retry-After (default 4)")
    serve.add_argument("--ready-file", help="write {url, pid} here (JSON) once the model is loaded")
    serve.add_argument("--no-warmup", action="store_true", help="skip the warm-up inference at start")
    serve.add_argument("--exit-with-parent", action="store_true",
                       help="shut down when the process that started this one ends (used by the plugin)")
    info = commands.add_parser("info", help="load the model and print what was loaded where")
    _engine_arguments(info)
    check = commands.add_parser("check-weights", help="list missing weight files and where to put them "
                                "(exit code 3 when some are missing)")
    _engine_arguments(check)
    commands.add_parser("bench", help="speed and memory benchmark (see --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "check-weights":
        from .weights_check import describe_missing, missing_weights

        missing = missing_weights(_engine_config(args))
        print(describe_missing(missing) if missing else "All weight files are present.")
        return 3 if missing else 0
    try:
        return _serve(args) if args.command == "serve" else _info(args)
    except SegEarthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
