"""Command line: ``segearth-backend info`` / ``bench`` (``serve`` comes with the service)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional

from .errors import SegEarthError


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="open_clip model name or JSON config path (SEGEARTH_MODEL)")
    parser.add_argument("--clip-weights", help="pretrained tag or checkpoint path (SEGEARTH_CLIP_WEIGHTS)")
    parser.add_argument("--upsampler-weights",
                        help="SimFeatUp checkpoint path, 'simfeatup' or 'none' (SEGEARTH_UPSAMPLER_WEIGHTS)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (SEGEARTH_DEVICE)")
    parser.add_argument("--cache-dir", help="downloads and text-embedding cache (SEGEARTH_CACHE_DIR)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _info(args: argparse.Namespace) -> int:
    from .config import EngineConfig
    from .segmenter import load_segmenter

    config = EngineConfig.from_env(model=args.model, clip_weights=args.clip_weights,
                                   upsampler_weights=args.upsampler_weights, device=args.device,
                                   cache_dir=args.cache_dir)
    segmenter = load_segmenter(config=config)
    print(json.dumps(segmenter.describe(), indent=2))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="segearth-backend", description="SegEarth-OV inference backend")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="load the model and print what was loaded where")
    _engine_arguments(info)
    commands.add_parser("bench", help="speed and memory benchmark (see --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _info(args)
    except SegEarthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
