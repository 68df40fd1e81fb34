"""`python -m radixkv.serve`: an OpenAI-compatible server over the embedded engine.

With no arguments it serves the default model (SmolLM2-135M-Instruct) on this machine's GPU if
it has one, else on CPU, with a file remote tier under ~/.cache/radixkv/remote-tier, on
http://127.0.0.1:8000. It binds loopback unless `--host` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("radixkv.serve")


def default_remote_url() -> str:
    from engine.default_model import cache_dir

    return (cache_dir() / "remote-tier").resolve().as_uri()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m radixkv.serve",
        description="Serve a model with radixkv's hierarchical prefix cache (OpenAI-compatible API).",
    )
    p.add_argument(
        "--model", help="HF directory, .gguf file or preset (default: SmolLM2-135M-Instruct)"
    )
    p.add_argument(
        "--served-model-name", help="the model name clients send (default: from --model)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=os.environ.get("RADIXKV_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every route but /health (env RADIXKV_API_KEY)",
    )
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--kv-memory-gb", type=float, default=1.0, help="device KV pool size")
    p.add_argument(
        "--host-memory-gb", type=float, default=2.0, help="host KV pool size (0: no host tier)"
    )
    p.add_argument(
        "--remote-url",
        default=None,
        help="remote tier: file:///path (default: ~/.cache/radixkv/remote-tier), "
        "redis://[:password@]host:port/db, rediss://..., mooncake://master-host:port, or 'none'; "
        "options as query parameters (see the README)",
    )
    p.add_argument("--remote-pages", type=int, default=1 << 20, help="remote pages the tree tracks")
    p.add_argument(
        "--remote-timeout-s",
        type=float,
        default=10.0,
        help="a remote call slower than this fails and the request recomputes (default 10)",
    )
    p.add_argument(
        "--remote-load-margin",
        type=float,
        default=1.0,
        help="load remote pages only if estimated load time x this < recompute time; 0: always",
    )
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--policy", default="workload", help="eviction policy: workload, lru, lfu, slru")
    p.add_argument(
        "--write-policy",
        default="write_through",
        help="write_through, write_through_selective or write_back",
    )
    p.add_argument("--tenant", default="", help="salt that isolates this tenant's cache entries")
    p.add_argument("--no-prefix-caching", action="store_true", help="recompute every prompt")
    p.add_argument("--max-batch-tokens", type=int, default=2048)
    p.add_argument("--max-running", type=int, default=64)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def build(args: argparse.Namespace):
    """(app, engine) from parsed arguments; raises ValueError for bad settings."""
    from engine.engine_loop import EngineLoop
    from engine.http_app import build_app
    from radixkv.facade import Engine

    remote = args.remote_url if args.remote_url is not None else default_remote_url()
    remote = None if remote.lower() == "none" else remote
    if args.port < 0 or args.port > 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    engine = Engine(
        args.model,
        device=args.device,
        page_size=args.page_size,
        kv_memory_gb=args.kv_memory_gb,
        host_memory_gb=args.host_memory_gb,
        remote_url=remote,
        remote_pages=args.remote_pages,
        remote_timeout_s=args.remote_timeout_s,
        remote_load_margin=args.remote_load_margin,
        policy=args.policy,
        write_policy=args.write_policy,
        tenant=args.tenant,
        prefix_caching=not args.no_prefix_caching,
        max_batch_tokens=args.max_batch_tokens,
        max_running=args.max_running,
    )
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
        "off" if args.no_prefix_caching else "on",
    )
    app = build_app(EngineLoop(engine), model_name=name, api_key=args.api_key)
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
