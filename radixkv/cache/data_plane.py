"""The data plane: it moves page bytes between tiers (`HiRadixCache` decides which, and when).

Device <-> host copies run in the caller's thread (synchronous on this portable path). Remote
I/O runs on an asyncio loop in a background thread, so it never blocks the caller: every
remote call returns at once with a future, and completed futures are handed back by
`completed()` for the owner of the tree to apply. The I/O thread only reads host pages pinned
for it and writes host pages reserved for it; it never touches the tree.

With `inline=True` there is no I/O thread: a remote call is queued and runs to completion on the
owner's thread, oldest first, when the owner waits (`wait_one`). What completes when is then a
function of the call sequence alone, which property tests and simulated replays need.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any

import torch

from storage import (
    DevicePool,
    HostPool,
    RemoteStore,
    copy_device_to_host,
    copy_host_to_device,
    encode_page,
)
from storage.breaker import CircuitBreaker, StoreUnavailable
from storage.page_auth import PageAuth
from storage.remote import read_pages
from storage.transfer import copy_host_to_device_by_layer, fastest_host_to_device, host_ready

log = logging.getLogger(__name__)

Callback = Callable[[concurrent.futures.Future], None]
_WAKE = (None, None)  # put on the completion queue by `wake()`: no operation finished


class DataPlane:
    def __init__(
        self,
        device_pool: DevicePool,
        host_pool: HostPool,
        store: RemoteStore | None,
        namespace: bytes,
        timeout_s: float = 10.0,
        *,
        inline: bool = False,
        auth: PageAuth | None = None,
    ) -> None:
        self.device_pool = device_pool
        self.host_pool = host_pool
        self.store = store
        self.namespace = namespace
        self.auth = auth  # pages written carry its MAC; pages read must (storage.page_auth)
        self.timeout_s = timeout_s
        self.moved = {
            "device_to_host": 0,
            "host_to_device": 0,
            "host_to_remote": 0,
            "remote_to_host": 0,
        }
        self._done: queue.SimpleQueue[tuple[concurrent.futures.Future, Callback]] = (
            queue.SimpleQueue()
        )
        self._inflight = 0
        self.write_pages_inflight = 0  # pages of puts not yet completed (the owner's count)
        self._writes_started: OrderedDict[int, float] = OrderedDict()  # in flight, oldest first
        self._write_ids = itertools.count()
        # Blobs whose put is still in flight, by key: a get issued meanwhile is served from here.
        self._writing: dict[str, bytes] = {}
        self._layer_events: list | None = None
        self.breaker = CircuitBreaker(store.describe() if store is not None else "none")
        # (bytes, seconds) of each complete remote read, for the load-or-recompute estimate
        self.read_observer: Callable[[int, float], None] | None = None
        cuda = device_pool.device.type == "cuda"
        self._side_stream = torch.cuda.Stream(device_pool.device) if cuda else None
        # host -> device: the faster of the UVA kernel and a staged copy on this card, timed now
        # while the pools hold nothing (storage.transfer.fastest_host_to_device)
        self.h2d_method, self.h2d_gbps = (
            fastest_host_to_device(device_pool, host_pool) if cuda else ("uva", {})
        )
        if self.h2d_gbps:
            log.info(
                "host-to-device page loads: %s (measured at start-up: %s)",
                "the copy engine, staged" if self.h2d_method == "staged" else "the UVA kernel",
                ", ".join(f"{m} {g:.1f} GB/s" for m, g in self.h2d_gbps.items()),
            )
        self._deferred_event = None  # the latest prefetch load's, until joined
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # inline mode: calls submitted and not yet run, oldest first (see the module docstring)
        self._deferred: deque[tuple[Callable[[], Coroutine], Callable]] | None = None
        if store is not None:
            self._loop = asyncio.new_event_loop()
            if inline:
                self._deferred = deque()
            else:
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="radixkv-remote-io", daemon=True
                )
                self._thread.start()

    # ---- device <-> host ---------------------------------------------------------------------
    def device_to_host(self, device_pages: list[int], host_pages: list[int]) -> None:
        copy_device_to_host(self.device_pool, device_pages, self.host_pool, host_pages)
        self.moved["device_to_host"] += len(device_pages)

    def host_to_device(
        self,
        host_pages: list[int],
        device_pages: list[int],
        overlap: bool = False,
        defer: bool = False,
    ) -> None:
        """Load pages. On GPU: layer by layer on a side stream. With `overlap` the per-layer events
        wait for the next forward (`take_layer_events`); with `defer` (a prefetch) nothing waits
        until `join_deferred` (before the pages are read or given up); otherwise the current
        stream waits for the whole load (a stream wait, not a CPU sync)."""
        self.moved["host_to_device"] += len(device_pages)
        if self._side_stream is not None:
            events = copy_host_to_device_by_layer(
                self.host_pool,
                host_pages,
                self.device_pool,
                device_pages,
                self._side_stream,
                self.h2d_method,
            )
            if events is not None:
                if overlap:
                    self._layer_events = events  # the latest load's event i covers earlier loads
                elif defer:
                    self._deferred_event = events[-1]  # covers earlier loads (one side stream)
                else:
                    torch.cuda.current_stream(self.device_pool.device).wait_event(events[-1])
                return
        copy_host_to_device(
            self.host_pool, host_pages, self.device_pool, device_pages, self.h2d_method
        )

    def join_deferred(self) -> None:
        """The current stream waits for prefetch loads (`defer`) issued so far (a stream wait,
        not a CPU sync; nothing when none is pending)."""
        event, self._deferred_event = self._deferred_event, None
        if event is not None:
            torch.cuda.current_stream(self.device_pool.device).wait_event(event)

    def take_layer_events(self) -> list | None:
        """The per-layer events of overlapped loads, once (for the next forward to wait on)."""
        events, self._layer_events = self._layer_events, None
        return events

    # ---- remote ------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return self._inflight

    def encode(self, host_pages: list[int], keys: list[bytes]) -> list[tuple[str, bytes]]:
        """Snapshot host pages as framed blobs (a copy: the pages may be freed afterwards)."""
        host_ready(self.device_pool)  # device -> host copies of these pages may still be queued
        layout = self.host_pool.layout
        return [
            (
                key.hex(),
                encode_page(
                    self.host_pool.page_bytes_view(p),
                    namespace=self.namespace,
                    key=key,
                    shape=layout.page_shape,
                    dtype=layout.dtype,
                    auth=self.auth,
                ),
            )
            for p, key in zip(host_pages, keys, strict=True)
        ]

    def _submit(self, coro_fn: Callable[[], Any], on_done: Callback, empty: bool = False) -> None:
        """Run a store call on the I/O thread under the timeout and the circuit breaker; while the
        breaker is open the call fails at once with StoreUnavailable (never reaching the store)."""
        assert self._loop is not None, "no remote store configured"
        self._inflight += 1
        if empty:  # answered without the store: must not count as the breaker's probe
            fut: concurrent.futures.Future = concurrent.futures.Future()
            fut.set_result([])
            self._done.put((fut, on_done))
            return
        permit = self.breaker.allow()
        if permit is None:
            fut = concurrent.futures.Future()
            fut.set_exception(StoreUnavailable(f"remote tier {self.breaker.name} is degraded"))
            self._done.put((fut, on_done))
            return

        async def guarded():
            return await asyncio.wait_for(coro_fn(), self.timeout_s)

        def finished(f: concurrent.futures.Future) -> None:  # on the I/O thread
            err = None if f.cancelled() else f.exception()
            if err is None:
                self.breaker.success(permit)
            else:
                self.breaker.failure(permit, err if str(err) else type(err).__name__)
            self._done.put((f, on_done))

        if self._deferred is not None:
            self._deferred.append((guarded, finished))
            return
        asyncio.run_coroutine_threadsafe(guarded(), self._loop).add_done_callback(finished)

    def _run_deferred(self) -> None:
        """Inline mode: run the oldest queued call to completion on this thread."""
        coro_fn, finished = self._deferred.popleft()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            fut.set_result(self._loop.run_until_complete(coro_fn()))
        except Exception as err:  # the store's failure, delivered like the I/O thread's
            fut.set_exception(err)
        finished(fut)

    def put_blobs(self, items: list[tuple[str, bytes]], on_done: Callback) -> None:
        """Store framed blobs; `on_done` gets a future of per-item success flags."""
        self.moved["host_to_remote"] += len(items)

        async def run():
            # registered on the I/O loop, before any get submitted after this put can run
            for k, b in items:
                self._writing[k] = b
            try:
                return await self.store.put(items)
            finally:
                for k, b in items:
                    if self._writing.get(k) is b:
                        del self._writing[k]

        self._submit(run, self._counted_write(len(items), on_done), empty=not items)

    def _counted_write(self, pages: int, on_done: Callback) -> Callback:
        """`on_done` for a put of `pages` pages, after which they leave the write backlog."""
        self.write_pages_inflight += pages
        wid = next(self._write_ids)
        self._writes_started[wid] = time.monotonic()

        def done(fut: concurrent.futures.Future) -> None:  # the owner's thread
            self.write_pages_inflight -= pages
            del self._writes_started[wid]
            on_done(fut)

        return done

    @property
    def inline(self) -> bool:
        """Remote calls run on the owner's thread when it waits (see the module docstring)."""
        return self._deferred is not None

    @property
    def write_calls_inflight(self) -> int:
        """Remote put calls submitted and not yet completed."""
        return len(self._writes_started)

    def oldest_write_age_s(self) -> float:
        """Seconds the oldest write still in flight has waited (0 with none): how far the
        store is behind the pages written to it."""
        if not self._writes_started:
            return 0.0
        return time.monotonic() - next(iter(self._writes_started.values()))

    def put_from_host(self, host_pages: list[int], keys: list[bytes], on_done: Callback) -> None:
        """Encode pinned host pages on the I/O thread and store them."""

        async def run():
            return await self.store.put(self.encode(host_pages, keys))

        self.moved["host_to_remote"] += len(host_pages)  # counters: the owner's thread only
        self._submit(run, self._counted_write(len(host_pages), on_done), empty=not host_pages)

    def get_into_host(self, keys: list[bytes], host_pages: list[int], on_done: Callback) -> None:
        """Read and verify pages into reserved host pages; the future gives per-page success."""
        layout = self.host_pool.layout

        async def run():
            pending = [i for i, k in enumerate(keys) if k.hex() not in self._writing]
            payloads: list = [None] * len(keys)
            for i, k in enumerate(keys):
                if k.hex() in self._writing:
                    blob = self._writing.get(k.hex())
                    payloads[i] = (
                        memoryview(blob)[-layout.page_bytes :] if blob is not None else None
                    )
            if pending:
                got = await read_pages(
                    self.store,
                    [keys[i] for i in pending],
                    namespace=self.namespace,
                    shape=layout.page_shape,
                    dtype=layout.dtype,
                    auth=self.auth,
                )
                for i, payload in zip(pending, got, strict=True):
                    payloads[i] = payload
            ok = []
            host_ready(self.device_pool)  # a queued device -> host copy must not land after us
            for page, payload in zip(host_pages, payloads, strict=True):
                if payload is not None:
                    self.host_pool.write_page_bytes(page, payload)
                ok.append(payload is not None)
            timing[1] = time.perf_counter()  # not when the owner gets round to polling
            return ok

        timing = [time.perf_counter(), 0.0]  # submitted, pages on host

        def counted(fut: concurrent.futures.Future) -> None:  # runs in the owner's thread
            if fut.exception() is None:
                got = sum(fut.result())
                self.moved["remote_to_host"] += got
                if self.read_observer is not None and got == len(keys):
                    self.read_observer(got * layout.page_bytes, timing[1] - timing[0])
            on_done(fut)

        self._submit(run, counted, empty=not keys)

    def get_blobs(self, keys: list[str], max_bytes: int, on_done: Callback) -> None:
        """Read framed blobs as stored (None where absent, `Oversize` past `max_bytes`, unread);
        the caller verifies them."""
        self._submit(lambda: self.store.get(keys, max_bytes), on_done, empty=not keys)

    def delete_blobs(self, keys: list[str], on_done: Callback) -> None:
        """Remove entries (a bad shared record, say); the future gives how many existed."""
        self._submit(lambda: self.store.delete(keys), on_done, empty=not keys)

    def exists(self, keys: list[bytes], on_done: Callback) -> None:
        self._submit(lambda: self.store.exists([k.hex() for k in keys]), on_done, empty=not keys)

    def wake(self) -> None:
        """Make a `wait_one` in progress return now (thread-safe): the owner has new work."""
        self._done.put(_WAKE)

    def completed(self) -> list[tuple[concurrent.futures.Future, Callback]]:
        """Finished remote operations, in completion order (non-blocking)."""
        out = []
        while True:
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                break
            if item is not _WAKE:
                out.append(item)
        self._inflight -= len(out)
        return out

    def wait_one(
        self, timeout: float | None = None
    ) -> tuple[concurrent.futures.Future, Callback] | None:
        """Block until one remote operation finishes (for flushes, tests and the replay)."""
        if self._deferred and self._done.empty():
            self._run_deferred()
        try:
            item = self._done.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _WAKE:
            return None
        self._inflight -= 1
        return item

    def close(self) -> None:
        if self._loop is None:
            return
        if self._deferred is not None:
            while self._deferred:  # the owner normally waited for these already
                self._run_deferred()
            self._loop.run_until_complete(self.store.close())
            self._loop.close()
            self._loop = None
            return
        if self.store is not None:
            asyncio.run_coroutine_threadsafe(self.store.close(), self._loop).result(
                timeout=self.timeout_s
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = None
