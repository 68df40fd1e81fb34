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
import signal
import sys
from pathlib import Path

from engine.config_flags import add_config_flags, config_from_args
from engine.http.app import build_app
from engine.http.limits import guarded_protocol, raise_fd_limit
from radixkv.facade import Engine
from storage.log_limits import limit_repeats

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
        help="require 'Authorization: Bearer KEY' on every route but /health (env "
        "RADIXKV_API_KEY; a value given here shows in `ps`: prefer --api-key-file)",
    )
    server.add_argument("--api-key-file", help="a file holding the API key")
    server.add_argument(
        "--admin-api-key-file",
        help="a file holding the key of the admin routes (/cache/flush, /cache/stats, /flush_cache); env "
        "RADIXKV_ADMIN_API_KEY. With an API key but no admin key, they are refused",
    )
    server.add_argument(
        "--max-body-mb",
        type=float,
        default=16.0,
        help="largest request body taken; a larger one is a 413 before it is read (default: 16)",
    )
    server.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="open connections at most; more are closed as they arrive (default: 1024)",
    )
    server.add_argument(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="a connection that sends no complete request headers in this time is closed "
        "(default: 10)",
    )
    server.add_argument(
        "--shutdown-timeout-s",
        type=float,
        default=30.0,
        help="on SIGTERM, how long running requests may finish before they are cut and the "
        "server exits (default: 30)",
    )
    server.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    add_config_flags(p)
    return p


def read_key(path: str | None, otherwise: str | None) -> str | None:
    """A key from a file (its text, stripped), else `otherwise` (a flag or the environment)."""
    if path is None:
        return otherwise or None
    try:
        key = Path(path).read_text().strip()
    except OSError as err:
        raise ValueError(f"cannot read key file {path}: {err.strerror}") from err
    if not key:
        raise ValueError(f"key file {path} is empty")
    return key


def build(args: argparse.Namespace):
    """(app, engine) from parsed arguments; raises ValueError for bad settings."""
    if args.port < 0 or args.port > 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    for flag, value in (
        ("--max-body-mb", args.max_body_mb),
        ("--max-connections", args.max_connections),
        ("--header-timeout-s", args.header_timeout_s),
    ):
        if not value > 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    if not args.shutdown_timeout_s >= 0:
        raise ValueError(f"--shutdown-timeout-s must be >= 0, got {args.shutdown_timeout_s}")
    api_key = read_key(args.api_key_file, args.api_key)  # the flag defaults to $RADIXKV_API_KEY
    admin_key = read_key(args.admin_api_key_file, os.environ.get("RADIXKV_ADMIN_API_KEY"))
    args.api_key = api_key  # what main() checks before binding a public address
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
    app = build_app(
        engine.loop,
        model_name=name,
        api_key=api_key,
        admin_key=admin_key,
        max_body_bytes=int(args.max_body_mb * 2**20),
    )
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
    if "--api-key" in (argv if argv is not None else sys.argv):
        log.warning("--api-key on the command line shows in `ps`: use --api-key-file instead")
    fds = raise_fd_limit()
    limit_repeats(logging.getLogger("asyncio"), "out of system resource", 10.0)
    log.info(
        "serving on http://%s:%d (OpenAI API under /v1); at most %d connections (%d files)",
        args.host,
        args.port,
        args.max_connections,
        fds,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=guarded_protocol(args.max_connections, args.header_timeout_s),
        timeout_graceful_shutdown=args.shutdown_timeout_s,
        timeout_keep_alive=5,
    )
    stopped_by: list[int] = []
    # uvicorn drains on SIGTERM / SIGINT (up to --shutdown-timeout-s), then raises the signal
    # again to the handler it found: this one, so the engine closes and the exit status is 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: stopped_by.append(number))
    try:
        uvicorn.Server(config).run()
    finally:
        engine.close()
    if stopped_by:
        log.info("stopped by %s", signal.Signals(stopped_by[0]).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
