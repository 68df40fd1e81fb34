"""The engine thread: one thread owns the `EngineCore`; asyncio callers talk to it.

The scheduler and the cache are single-threaded by design (one owner of every page). A server
(or `Engine.stream`) has many coroutines on an event loop, so they never touch either directly:
they send commands (add a request, abort one, run a function) through a queue, and the engine
thread sends each request's new tokens back to the caller's event loop. Between commands the
thread runs the core's step loop (`EngineCore.iterate`) as long as there is work, and sleeps
when there is none; a command wakes an iterate blocked on remote I/O.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.engine_core import EngineCore
from engine.metrics import Histogram
from engine.request import Request

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.05  # an idle engine still applies finished remote writes this often


@dataclass
class RequestOutput:
    """What one engine step produced for one request."""

    new_token_ids: list[int]
    num_output_tokens: int
    finish_reason: str | None = None  # "stop", "length", "abort", or "error"
    text: str | None = None  # the whole text once finished (trimmed at a stop string)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cached_by_tier: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    new_logprobs: list = field(default_factory=list)  # per new token, when asked for


class _Stream:
    """A request's channel back to the coroutine awaiting it (the engine thread's side)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.sent = 0
        self.last_token_at: float | None = None

    def send(self, out: RequestOutput) -> None:
        # a RuntimeError means the caller's loop is closed: nobody is listening any more
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, out)


class ServingStats:
    """Request-level counters and latency histograms (written by the engine thread)."""

    def __init__(self) -> None:
        self.ttft = Histogram("radixkv_time_to_first_token_seconds", "Time to first token.")
        self.itl = Histogram("radixkv_inter_token_latency_seconds", "Time between output tokens.")
        self.e2e = Histogram("radixkv_request_latency_seconds", "Arrival to last token.")
        self.finished: dict[str, int] = {}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens: dict[str, int] = {"device": 0, "host": 0, "remote": 0}
        self.step_errors = 0


class EngineLoop:
    """Runs an `EngineCore` on a dedicated thread (see the module docstring)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.scheduler = core.scheduler
        self.stats = ServingStats()
        self._commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._streams: dict[Request, _Stream] = {}  # engine thread only
        self._finished: list[Request] = []  # engine thread only: finished since the last publish
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> EngineLoop:
        if self._thread is not None:
            raise RuntimeError("the engine loop is already running")
        self.scheduler.on_finish = self._finished.append
        self._thread = threading.Thread(target=self._run, name="radixkv-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Abort what is in flight, stop the thread (the engine itself stays open)."""
        if self._thread is None:
            return
        self._command("stop")
        self._thread.join(timeout_s)
        self._thread = None
        self.scheduler.on_finish = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the asyncio side --------------------------------------------------------------------
    async def generate(self, req: Request) -> AsyncIterator[RequestOutput]:
        """Queue a request made by `Engine.make_request`; yield its outputs until it finishes.
        Closing the iterator early (a client gone) aborts the request and frees its pages."""
        if not self.alive:
            raise RuntimeError("the engine loop is not running")
        stream = _Stream(asyncio.get_running_loop())
        self._command("add", req, stream)
        finished = False
        try:
            while not finished:
                out = await stream.queue.get()
                finished = out.finish_reason is not None
                yield out
        finally:
            if not finished:
                self._command("abort", req)
                with contextlib.suppress(RuntimeError):  # the loop thread stopped meanwhile
                    await self.call(lambda: None)  # commands run in order: the abort is done

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the engine thread between two steps; its result or exception."""
        if not self.alive:
            raise RuntimeError("the engine loop is not running")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._command("call", fn, fut)
        return await asyncio.wrap_future(fut)

    def _command(self, *cmd) -> None:
        self._commands.put(cmd)
        self.core.wake()  # an iterate() blocked on remote I/O returns to take it

    # ---- the engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        core = self.core
        while True:
            if not self._drain_commands(block=not core.has_work):
                break
            if not core.has_work:
                core.prefix_cache.poll()  # finished remote writes unpin their pages when idle
                core.scheduler.prefetch()  # sessions due back while every client thinks
                if core.kv_events is not None:
                    core.kv_events.flush()  # what those moved, and replay requests
                continue
            try:
                progressed = core.iterate()
            except Exception:
                log.exception("engine step failed; the requests in flight are ended with an error")
                self.stats.step_errors += 1
                self._fail_all("the engine failed while running this request (see server log)")
                continue
            self._publish(progressed)
        self._fail_all("the server is shutting down")

    def _drain_commands(self, block: bool, timeout_s: float = _IDLE_POLL_S) -> bool:
        """Apply queued commands (waiting up to `timeout_s` for the first if `block`); returns
        False once asked to stop."""
        try:
            cmd = self._commands.get(timeout=timeout_s) if block else self._commands.get_nowait()
        except queue.Empty:
            return True
        while True:
            kind = cmd[0]
            if kind == "stop":
                return False
            if kind == "add":
                _, req, stream = cmd
                self._streams[req] = stream
                self.scheduler.add(req)
            elif kind == "abort":
                self.scheduler.abort(cmd[1])  # a no-op when it already finished
            elif kind == "call":
                _, fn, fut = cmd
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except Exception as err:
                        fut.set_exception(err)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
        self._publish([])  # aborted requests' final outputs
        return True

    def _publish(self, progressed: list[Request]) -> None:
        now = time.perf_counter()
        finished = self._finished[:]
        self._finished.clear()  # the same list: the scheduler's on_finish appends to it
        for req in progressed:
            if req.finish_reason is None:
                self._send(req, now)
        for req in finished:
            self._send(req, now)

    def _send(self, req: Request, now: float, error: str | None = None) -> None:
        stream = self._streams.get(req)
        if stream is None:
            return  # a request of the library API, not of this loop
        new = req.output_ids[stream.sent :]
        stats = self.stats
        if new:
            if stream.last_token_at is None:
                stats.ttft.observe(now - req.arrival)
            else:
                stats.itl.observe((now - stream.last_token_at) / len(new))
            stream.last_token_at = now
        out = RequestOutput(new, len(req.output_ids), prompt_tokens=len(req.prompt_ids))
        out.new_logprobs = req.output_logprobs[stream.sent : len(req.output_ids)]
        if req.finish_reason is not None or error is not None:
            del self._streams[req]
            out.finish_reason = "error" if error else req.finish_reason
            if error is None and req.finish_reason == "error":  # its own sampling failed
                error = "sampling failed for this request (see server log)"
            out.error, out.text = error, req.text
            out.cached_tokens, out.cached_by_tier = req.cached_tokens, dict(req.cached_by_tier)
            stats.finished[out.finish_reason] = stats.finished.get(out.finish_reason, 0) + 1
            stats.prompt_tokens += len(req.prompt_ids)
            stats.generation_tokens += len(req.output_ids)
            for tier, n in req.cached_by_tier.items():
                stats.cached_tokens[tier] += n
            if new or req.finish_reason != "abort":
                stats.e2e.observe(now - req.arrival)
        stream.sent = len(req.output_ids)
        stream.send(out)

    def _fail_all(self, message: str) -> None:
        """End every request this loop knows with an error; abort them in the scheduler (a
        step that raised may have left them half-scheduled: each abort is tried on its own)."""
        now = time.perf_counter()
        for req in list(self._streams):
            try:
                self.scheduler.abort(req)
            except Exception:
                log.exception("aborting request %d after a failure", req.rid)
            self._send(req, now, error=message)
        self._finished.clear()
