"""`python -m radixkv.serve`: an OpenAI-compatible server over the embedded engine.

With no arguments it serves the default model (SmolLM2-135M-Instruct) on this machine's GPU if
it has one, else on CPU, with a file remote tier under ~/.cache/radixkv/remote-tier (capped at a
tenth of the disk's free space), on http://127.0.0.1:8000. It binds loopback unless `--host`
says otherwise. Its engine flags are generated from `engine.config.EngineConfig`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from engine.config_flags import add_config_flags, config_from_args
from engine.http.app import build_app
from radixkv.facade import Engine

log = logging.getLogger("radixkv.serve")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m radixkv.serve",
        description="Serve a model with radixkv's hierarchical prefix cache (OpenAI-compatible API).",
    )
    server = p.add_argument_group("server")
    server.add_argument(
        "--served-model-name", help="the model name clients send (default: from --model)"
    )
    server.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: loopback only)"
    )
    server.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    server.add_argument(
        "--api-key",
        default=os.environ.get("RADIXKV_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every route but /health (env RADIXKV_API_KEY)",
    )
    server.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    add_config_flags(p)
    return p


def build(args: argparse.Namespace):
    """(app, engine) from parsed arguments; raises ValueError for bad settings."""
    if args.port < 0 or args.port > 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    config = config_from_args(args)
    engine = Engine(config)
    name = args.served_model_name or engine.model_name
    cache = engine.cache
    log.info(
        "model %s on %s (%s attention); KV pages of %d tokens: device %d, host %d; remote tier %s; "
        "prefix caching %s",
        name,
        engine.device,
        engine.attention,
        cache.page_size,
        cache.device_pool.num_pages,
        cache.host_pool.num_pages,
        cache.store.describe() if cache.store else "off",
        "on" if config.prefix_caching else "off",
    )
    app = build_app(engine.loop, model_name=name, api_key=args.api_key)
    return app, engine


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s radixkv %(levelname)s %(message)s"
    )
    try:
        app, engine = build(args)
    except ValueError as err:
        print(f"radixkv.serve: {err}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        log.warning("binding %s without --api-key: anyone who can reach it can use it", args.host)
    log.info("serving on http://%s:%d (OpenAI API under /v1)", args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
