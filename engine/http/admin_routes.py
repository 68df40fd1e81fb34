"""Operations routes: /health, Prometheus /metrics, /cache/stats and /cache/flush."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from engine.engine_loop import EngineLoop
from engine.http.common import ServingContext, error_response
from engine.metrics import ServingCollector, exposition


def admin_router(ctx: ServingContext) -> APIRouter:
    router = APIRouter()
    loop = ctx.loop

    @router.get("/health")
    async def health():
        if not loop.alive:
            return error_response(503, "the engine thread is not running", "server_error")
        remote = ctx.core.cache.remote_status()  # thread-safe reads: answers while steps run
        # open to anyone: states only, never the store's address or its errors (/cache/stats)
        return {
            "status": "ok",  # degraded remote tier: still ready, requests recompute
            "model": ctx.model_name,
            "remote_tier": "off" if remote is None else "degraded" if remote["degraded"] else "ok",
        }

    @router.get("/metrics")
    async def metrics() -> Response:
        report = await loop.call(lambda: cache_report(loop, integrity=False))
        page_bytes = ctx.core.cache.layout.page_bytes
        body = exposition(ServingCollector(report, loop.stats, page_bytes))
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/cache/stats")
    async def cache_stats() -> dict:
        return await loop.call(lambda: cache_report(loop, integrity=True))

    @router.post("/cache/flush")
    async def cache_flush() -> dict:
        def flush() -> dict:
            cache = ctx.core.cache
            nodes = cache.flush()
            return {"flushed_nodes": nodes, "integrity": cache.check_integrity()}

        return await loop.call(flush)

    return router


def cache_report(loop: EngineLoop, integrity: bool) -> dict:
    """The cache's and the scheduler's state, on the engine thread."""
    sched = loop.scheduler
    report = loop.core.cache_report(integrity=integrity)
    report["scheduler"] = {
        "running": len(sched.running),
        "waiting": len(sched.waiting),
        "preemptions": sched.preemptions,
        "finished_requests": sum(loop.stats.finished.values()),
        "role": loop.core.config.role,
        "handoffs": None if sched.handoffs is None else sched.handoffs.report(),
    }
    return report
