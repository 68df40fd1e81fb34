"""A real uvicorn server on a loopback port, in a thread of the test process (the tests can then
also look at the engine behind it)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import uvicorn

from engine.http.app import build_app
from radixkv.bench.local_server import free_port


@contextmanager
def live_server(engine, api_key: str | None = None):
    """Yields (base_url, EngineLoop); stops the server and the loop on exit."""
    loop = engine.loop
    app = build_app(loop, model_name=engine.model_name, api_key=api_key)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", loop
    finally:
        server.should_exit = True
        thread.join(30)
