"""What a gateway probes to discover and balance a worker, in SGLang's shapes (SMG, the SGLang
router and their kin read them): /server_info, /model_info, /v1/loads and /flush_cache, with the
deprecated /get_* spellings.

Loads are read from the engine thread's state without waiting for a step (a prefill may run for
seconds; a gateway's load poll gives up after a few): lengths and counters, read whole.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from engine.http.common import ServingContext
from engine.model_config import SUPPORTED_ARCHITECTURES

try:
    VERSION = version("radixkv")
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"


def worker_router(ctx: ServingContext) -> APIRouter:
    router = APIRouter()
    core = ctx.core
    throughput = _Throughput()

    def server_info() -> dict:
        cache, config = core.cache, core.config
        page = cache.page_size
        events = None
        if config.kv_events_endpoint is not None:
            events = json.dumps(
                {
                    "publisher": "zmq",
                    "endpoint": config.kv_events_endpoint,
                    "replay_endpoint": config.kv_events_replay_endpoint,
                    "topic": "",
                }
            )
        return {
            "engine": "radixkv",
            "version": VERSION,
            "model_path": config.model or ctx.model_name,
            "served_model_name": ctx.model_name,
            "tokenizer_path": config.tokenizer or config.model or ctx.model_name,
            "tp_size": 1,
            "dp_size": 1,
            "pp_size": 1,
            "is_embedding": False,
            "context_length": core.context_length,
            "max_total_num_tokens": cache.device_pool.num_pages * page,
            "max_running_requests": config.max_running,
            "page_size": page,
            "disaggregation_mode": "null" if config.role == "both" else config.role,
            "kv_events_config": events,
            # the tiers behind the device's (tokens); the store's address stays private
            "cache_tiers": {
                "device_tokens": cache.device_pool.num_pages * page,
                "host_tokens": cache.host_pool.num_pages * page,
                "remote": None if cache.store is None else type(cache.store).__name__,
            },
        }

    def model_info() -> dict:
        model_type = core.model.config.arch  # "llama", "qwen2", ...
        architectures = [a for a, t in SUPPORTED_ARCHITECTURES.items() if t == model_type]
        return {
            "model_path": core.config.model or ctx.model_name,
            "tokenizer_path": core.config.tokenizer or core.config.model or ctx.model_name,
            "is_generation": True,
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": model_type,
            "architectures": architectures,
            "weight_version": core.fingerprint,
        }

    def loads() -> dict:
        return {
            "timestamp": time.time(),
            "version": VERSION,
            "dp_rank_count": 1,
            "loads": [_load(ctx, throughput)],
        }

    for path in ("/server_info", "/get_server_info"):
        router.add_api_route(path, server_info, methods=["GET"])
    for path in ("/model_info", "/get_model_info"):
        router.add_api_route(path, model_info, methods=["GET"])
    router.add_api_route("/v1/loads", loads, methods=["GET"])

    @router.get("/get_load")
    async def get_load() -> list[dict]:  # the SGLang router's older poll
        load = _load(ctx, throughput)
        return [
            {
                "dp_rank": 0,
                "num_reqs": load["num_running_reqs"] + load["num_waiting_reqs"],
                "num_waiting_reqs": load["num_waiting_reqs"],
                "num_tokens": load["num_used_tokens"],
            }
        ]

    @router.post("/flush_cache")
    async def flush_cache() -> dict:  # SGLang answers text; a gateway reads the status only
        nodes = await ctx.loop.call(core.cache.flush)
        return {"message": "Cache flushed.", "flushed_nodes": nodes}

    return router


class _Throughput:
    """Generated tokens per second between two load polls."""

    def __init__(self) -> None:
        self.at, self.tokens, self.rate = time.monotonic(), 0, 0.0

    def update(self, tokens: int) -> float:
        now = time.monotonic()
        if now - self.at >= 0.5:  # polls closer than this keep the last rate
            self.rate = (tokens - self.tokens) / (now - self.at)
            self.at, self.tokens = now, tokens
        return self.rate


def _load(ctx: ServingContext, throughput: _Throughput) -> dict:
    """One rank's load in SGLang's `/v1/loads` fields. Used tokens are those of running
    requests (cached pages nobody holds are evictable, not load)."""
    sched, cache = ctx.loop.scheduler, ctx.core.cache
    running = list(sched.running)  # a copy: the engine thread edits the list
    waiting = list(sched.waiting)
    capacity = cache.device_pool.num_pages * cache.page_size
    used = sum(r.num_tokens for r in running)
    c = cache.counters
    return {
        "dp_rank": 0,
        "num_running_reqs": len(running),
        "num_waiting_reqs": len(waiting),
        "num_used_tokens": used,
        "max_total_num_tokens": capacity,
        "num_total_tokens": used + sum(len(r.prompt_ids) for r in waiting),
        "token_usage": min(used / capacity, 1.0) if capacity else 0.0,
        "gen_throughput": throughput.update(ctx.loop.stats.generation_tokens),
        "cache_hit_rate": sum(c.tokens_hit) / max(c.tokens_queried, 1),
        "utilization": min(len(running) / sched.max_running, 1.0),
        "max_running_requests": sched.max_running,
    }
