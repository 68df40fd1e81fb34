"""The HTTP app: OpenAI-compatible completions and chat, native `/generate`, health, Prometheus
metrics and cache administration, over an `EngineLoop`. The routes live in `engine.http`: one
router for the OpenAI API, one for the native API, one for operations.

Every error is a JSON body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
with a 4xx status for bad input and 5xx only for the server's own failures. A client that goes
away mid-request has its request aborted and its pages freed.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.engine_loop import EngineLoop
from engine.http.admin_routes import admin_router
from engine.http.api_schema import install_openapi
from engine.http.common import (
    ADMIN_PATHS,
    APIError,
    ServingContext,
    error_response,
    validation_message,
)
from engine.http.limits import BodyLimit
from engine.http.native_routes import native_router
from engine.http.openai_routes import openai_router
from engine.http.worker_routes import worker_router

log = logging.getLogger(__name__)

_OPEN_PATHS = ("/health",)  # answered without an API key (load balancers probe it)
MAX_BODY_BYTES = 16 << 20


def bearer_token(header: str) -> str:
    """The token of an `Authorization: Bearer TOKEN` header (the scheme in any case)."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def key_matches(header: str, key: str) -> bool:
    return secrets.compare_digest(bearer_token(header).encode(), key.encode())


def build_app(
    loop: EngineLoop,
    *,
    model_name: str,
    api_key: str | None = None,
    admin_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app; starts the engine loop on startup and stops it on shutdown. With
    `api_key`, every route but /health needs it; the admin routes (`ADMIN_PATHS`) need
    `admin_key` instead, and are refused when a key guards inference but none guards them."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if not loop.alive:
            loop.start()
        yield
        loop.stop()

    app = FastAPI(title="radixkv", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_req: Request, err: APIError) -> JSONResponse:
        return error_response(err.status, err.message, err.kind, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(err)
        return error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(req: Request, err: Exception) -> JSONResponse:
        rid = uuid.uuid4().hex[:12]  # in the log and the answer: a report can be matched to it
        log.exception("unhandled error in %s %s (error id %s)", req.method, req.url.path, rid)
        message = f"internal error {rid}: {type(err).__name__} (see the server log)"
        return error_response(500, message, "server_error")

    if api_key or admin_key:

        @app.middleware("http")
        async def _auth(request: Request, call_next):
            path, given = request.url.path, request.headers.get("authorization", "")
            if path in ADMIN_PATHS:
                if admin_key is None:
                    return error_response(
                        403,
                        "admin routes are off: this server has an API key but no admin key "
                        "(--admin-api-key-file)",
                        "permission_error",
                    )
                if not key_matches(given, admin_key):
                    return error_response(
                        401,
                        "missing or wrong admin key (Authorization: Bearer ...)",
                        "authentication_error",
                    )
            elif path not in _OPEN_PATHS and api_key and not key_matches(given, api_key):
                return error_response(
                    401,
                    "missing or wrong API key (Authorization: Bearer ...)",
                    "authentication_error",
                )
            return await call_next(request)

    ctx = ServingContext(loop, model_name)
    for router in (openai_router(ctx), native_router(ctx), admin_router(ctx), worker_router(ctx)):
        app.include_router(router)
    install_openapi(
        app,
        model_name=model_name,
        vocab_size=loop.core.model.config.vocab_size,
        api_key=bool(api_key),
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
