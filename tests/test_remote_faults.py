"""The remote tier failing and coming back under a live engine, and two engine processes sharing
it. A failing store must never cost a request or change a token."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("transformers")

from radixkv import Engine  # noqa: E402
from tests.paged_runner import hf_greedy  # noqa: E402
from tests.store_servers import RedisServer, start_s3  # noqa: E402
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    return path, save_tiny_llama(path)


def _prompts(n: int) -> list[list[int]]:
    """n requests over 40 shared 64-token prefixes (4 pages), each with its own tail."""
    return [
        [(p * 13 + i * 7 + i * i * p) % 97 + 1 for i in range(64)]
        + [(k * 5) % 97 + 1, 3, k % 50 + 1]
        for k, p in ((k, k % 40) for k in range(n))
    ]


# An engine for fault tests. The host holds one batch's prefixes (10 x 4 pages), not all 40: they
# spill to the remote tier and come back. The tiny model recomputes 4 pages faster than any store
# loads them, so the load-or-recompute estimate would (rightly) skip the tier: force loads here.
FAULT_ENGINE = dict(
    device="cpu",
    kv_memory_gb=gb(32),
    host_memory_gb=gb(48),
    remote_timeout_s=2.0,
    remote_load_margin=0.0,
    check_integrity=True,
)


def _traffic_until_recovered(eng: Engine, prompts, deadline_s: float = 100.0) -> list:
    """Traffic after a pause, again and again, until the breaker's probe has closed it or the
    deadline; the last results. Its back-off doubles 1, 2, 4, 8, 16, 30 s: the deadline lets
    two 30 s probes come after the 31 s of the first five, on a loaded machine too."""
    deadline = time.monotonic() + deadline_s
    while True:
        time.sleep(1.0)
        out = _run(eng, prompts)
        eng.cache.wait_idle(timeout_s=30)
        if not eng.cache.remote_status()["degraded"] or time.monotonic() > deadline:
            return out


def _run(eng: Engine, prompts, on_request=None) -> list:
    """Serve prompts 10 at a time (a busy server's mix of hits and misses)."""
    out = []
    for start in range(0, len(prompts), 10):
        if on_request is not None:
            on_request(start)
        out += eng.generate(prompts[start : start + 10], max_tokens=4, ignore_eos=True)
    return out


@pytest.mark.parametrize("tier", ["redis", "s3"])
def test_the_store_killed_mid_run_costs_no_request_and_no_token(tiny_dir, tmp_path, tier):
    path, _ = tiny_dir
    prompts = _prompts(200)
    with Engine(
        str(path), device="cpu", kv_memory_gb=gb(32), host_memory_gb=gb(48), remote_url=None
    ) as ref:
        want = [r.token_ids for r in _run(ref, prompts)]
    # redis comes back empty; SeaweedFS on its data directory, with what it held
    server = RedisServer().start() if tier == "redis" else start_s3(tmp_path / "seaweedfs")
    seen = {"degraded": False, "recovered": False}
    try:
        with Engine(str(path), remote_url=server.url, **FAULT_ENGINE) as eng:
            status = eng.cache.remote_status

            def fault(start: int) -> None:
                if start == 60:
                    server.kill()  # mid-run: connections drop, new ones are refused
                if 60 < start <= 130 and status()["degraded"]:
                    seen["degraded"] = True
                if start == 130:
                    server.start()  # same port
                    time.sleep(1.2)  # past the breaker's first back-off

            got = _run(eng, prompts, fault)
            again = _traffic_until_recovered(eng, prompts[:10])
            seen["recovered"] = not status()["degraded"]
            final = status()
            puts_after = eng.cache.store.stats.puts
            held_after = eng.cache.reads.held_pages
            locked_after = eng.cache.check_integrity()["host"]["locked"]
    finally:
        server.kill()
    assert all(r.finish_reason == "length" for r in got + again)  # zero failed requests
    assert [r.token_ids for r in got] == want  # and not one token changed
    assert [r.token_ids for r in again] == want[:10]
    assert seen["degraded"] and seen["recovered"], seen
    assert final["times_opened"] >= 1 and not final["degraded"]
    assert puts_after > 0
    assert held_after == 0 and locked_after == 0  # every prefetch hold was released
    # the tier was in use before it went down. Not asserted on SeaweedFS: there the tiny model's
    # pages came back from it 0 times before the kill (its writes lag the replay; issue 29's
    # note), what is checked for S3 is that its failure costs nothing
    if tier == "redis":
        assert sum(r.cached_tokens_by_tier["remote"] for r in got[40:60]) > 0


_PROCESS_A = textwrap.dedent(
    """
    import json, sys
    from radixkv import Engine
    path, url, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with Engine(path, device="cpu", kv_memory_gb=0.01, host_memory_gb=0.01, remote_url=url) as eng:
        r = eng.generate([prompt], max_tokens=6, ignore_eos=True)[0]
        eng.cache.wait_idle(timeout_s=30)  # every page written through to the store
        print(json.dumps({"tokens": r.token_ids, "cached": r.cached_tokens}), flush=True)
        sys.stdin.read()  # stay up until told: a Mooncake client's pages live in its memory
    """
)


@pytest.mark.parametrize("tier", ["file", "redis", "mooncake", "s3"])
def test_a_prefix_computed_by_one_process_is_a_remote_hit_in_another(
    tiny_dir, tmp_path, request, tier
):
    path, hf = tiny_dir
    if tier == "file":
        url = (tmp_path / "remote").as_uri()
    elif tier == "s3":
        url = request.getfixturevalue("s3_server").url.replace("/pages?", f"/{tmp_path.name}?")
    else:
        url = request.getfixturevalue(
            f"{tier}_master" if tier == "mooncake" else "redis_server"
        ).url
        if tier == "redis":
            url += f"?prefix=two-process-{tmp_path.name}:"
    prompt = [(i * 11) % 97 + 1 for i in range(150)]
    a = subprocess.Popen(
        [sys.executable, "-c", _PROCESS_A, str(path), url, json.dumps(prompt)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(a.stdout.readline())
        assert first["cached"] == 0
        with Engine(
            str(path), device="cpu", kv_memory_gb=0.01, host_memory_gb=0.01, remote_url=url
        ) as b:
            r = b.generate([prompt], max_tokens=6, ignore_eos=True)[0]
    finally:
        a.communicate("", timeout=60)
    want = hf_greedy(hf, prompt, 6)
    assert first["tokens"] == want
    assert r.token_ids == want  # identical to a cold run
    assert r.cached_tokens_by_tier["remote"] == 144  # 9 full pages of 16, prefetched and loaded


def test_a_remote_load_estimated_slower_than_recompute_is_skipped():
    from radixkv.cache.cost_model import LoadCostModel

    cost = LoadCostModel()
    assert cost.worth_loading(4096, 100 << 20)  # nothing measured yet: try the tier
    cost.observe_remote_read(4096, 0.002, small_bytes=8192)  # 2 ms per call
    cost.observe_remote_read(100 << 20, 0.502, small_bytes=8192)  # 200 MB/s
    cost.observe_prefill(2048, 0.1)  # 20k tokens/s
    assert cost.load_seconds(100 << 20) == pytest.approx(0.502, rel=1e-6)
    assert not cost.worth_loading(4096, 100 << 20)  # 0.50 s to load vs 0.20 s to recompute
    assert cost.worth_loading(4096, 10 << 20)  # 0.05 s to load: worth it
    assert cost.skipped == 1
    first = LoadCostModel()  # a large read before any small one: all of it counts as transfer
    first.observe_remote_read(100 << 20, 0.5, small_bytes=8192)
    assert first.load_seconds(100 << 20) == pytest.approx(0.5, rel=1e-6)


def test_serve_flags_choose_and_tune_the_remote_tier(tiny_dir, redis_server, capsys):
    from radixkv.serve import build, main, parser

    path, _ = tiny_dir
    common = ["--model", str(path), "--device", "cpu", "--kv-memory-gb", "0.01"]
    args = parser().parse_args(
        common
        + ["--remote-url", redis_server.url + "?prefix=flags:", "--remote-timeout-s", "3"]
        + ["--remote-load-margin", "0.5"]
    )
    _, engine = build(args)
    try:
        cache = engine.cache
        assert "redis" in cache.store.describe()
        assert cache.config.remote_timeout_s == 3.0 and cache.cost.margin == 0.5
        assert engine.generate([[5, 6, 7]], max_tokens=2)[0].finish_reason == "length"
    finally:
        engine.close()
    assert main(common + ["--remote-load-margin", "-1"]) == 2
    assert "remote_load_margin must be a finite number >= 0" in capsys.readouterr().err
    assert main(common + ["--remote-url", "ftp://bucket"]) == 2
    assert "unsupported remote store scheme 'ftp'" in capsys.readouterr().err
    assert main(common + ["--remote-url", "s3://bucket?endpoint=http://x&speed=9"]) == 2
    assert "unknown s3 URL options ['speed']" in capsys.readouterr().err


def test_generate_waits_for_a_slow_prefetch_without_spinning(tiny_dir, tmp_path):
    """While the only request waits for its remote read, generate() must block on the read's
    completion: spinning on step() burns a core and starves the I/O thread of the GIL (on the
    H100 a 535 MB remote hit took 11.8 s that way)."""
    import asyncio

    path, _ = tiny_dir
    url = (tmp_path / "remote").as_uri()
    prompt = [(i * 11) % 97 + 1 for i in range(150)]
    small = dict(device="cpu", kv_memory_gb=0.01, host_memory_gb=0.01, remote_url=url)
    with Engine(str(path), **small) as a:
        want = a.generate([prompt], max_tokens=2, ignore_eos=True)[0].token_ids
        a.cache.wait_idle(timeout_s=30)
    with Engine(str(path), **small) as b:
        store, get = b.cache.store, b.cache.store.get

        async def slow_get(keys, *bound):
            await asyncio.sleep(0.5)
            return await get(keys, *bound)

        store.get = slow_get
        steps, step = [0], b.scheduler.schedule

        def counted():
            steps[0] += 1
            return step()

        b.scheduler.schedule = counted
        r = b.generate([prompt], max_tokens=2, ignore_eos=True)[0]
    assert r.token_ids == want and r.cached_tokens_by_tier["remote"] == 144
    assert steps[0] < 100, f"{steps[0]} scheduler steps while waiting 0.5 s for one read"


def test_a_stuck_remote_tier_delays_a_request_no_longer_than_recomputing(tiny_dir, tmp_path):
    """A queued request waits for its remote lookup only as long as recomputing its uncached
    prompt would take (the measured prefill speed). On the GPU a burst of write-through traffic
    queued the lookups behind the writes and left the engine idle for 18 of 35 s."""
    import asyncio

    path, hf = tiny_dir
    prompt = [(i * 11) % 97 + 1 for i in range(150)]
    options = dict(
        device="cpu",
        kv_memory_gb=0.01,
        host_memory_gb=0.01,
        remote_url=(tmp_path / "remote").as_uri(),
        remote_timeout_s=8.0,
    )
    with Engine(str(path), **options) as eng:
        warm = [(i * 7) % 97 + 1 for i in range(200)]
        eng.generate([warm], max_tokens=2, ignore_eos=True)  # measures the prefill speed
        assert eng.cache.cost.prefill_tokens_per_s
        eng.cache.wait_idle(timeout_s=30)

        async def stuck(keys, *bound):
            await asyncio.sleep(4.0)
            return [False] * len(keys)

        eng.cache.store.exists = eng.cache.store.get = stuck
        t = time.perf_counter()
        r = eng.generate([prompt], max_tokens=4, ignore_eos=True)[0]
        took = time.perf_counter() - t
    assert r.token_ids == hf_greedy(hf, prompt, 4)
    assert r.cached_tokens_by_tier["remote"] == 0
    assert took < 2.0, f"{took:.1f} s behind a remote tier that answers in 4 s"


@pytest.mark.parametrize("backlog_pages", [None, 8], ids=["default", "8-pages"])
def test_a_store_slower_than_the_pages_computed_sheds_writes_and_keeps_serving_reads(
    tiny_dir, tmp_path, backlog_pages
):
    """A file tier that stores one write at a time, 0.2 s each, under a burst of new prompts
    (before, the write-through queued behind it until calls timed out and the breaker marked the
    tier down, refusing its reads too). Writes past the backlog (in pages, or once the oldest has
    waited a quarter of the remote timeout) are shed and counted: no call times out, the tier
    stays up, the tokens equal transformers', and nothing stays pinned."""
    import asyncio

    path, hf = tiny_dir
    prompts = _prompts(40)[:30]  # 30 distinct 4-page prefixes: 30 write-throughs
    backlog = {} if backlog_pages is None else {"remote_write_backlog_gb": gb(backlog_pages)}
    with Engine(
        str(path),
        device="cpu",
        kv_memory_gb=gb(32),
        host_memory_gb=gb(256),
        remote_url=(tmp_path / "remote").as_uri(),
        remote_timeout_s=2.0,
        check_integrity=True,
        **backlog,
    ) as eng:
        store, put = eng.cache.store, eng.cache.store.put
        one_at_a_time, in_store, peak = asyncio.Lock(), [0], [0]

        async def slow_put(items):
            in_store[0] += len(items)
            peak[0] = max(peak[0], in_store[0])
            try:
                async with one_at_a_time:
                    await asyncio.sleep(0.2)
                    return await put(items)
            finally:
                in_store[0] -= len(items)

        store.put = slow_put
        out = _run(eng, prompts)
        eng.cache.wait_idle(timeout_s=60)
        status, counters = eng.cache.remote_status(), eng.cache.counters
        assert status["times_opened"] == 0 and not status["degraded"], status["last_error"]
        assert 0 < counters.remote_writes_shed < 30 * 4
        assert counters.remote_write_failures == 0
        assert peak[0] <= eng.cache.config.write_backlog_pages
        assert eng.cache.controller.write_pages_inflight == 0
        report = eng.core.cache_report()
        assert report["counters"]["remote_writes_shed"] == counters.remote_writes_shed
    for r, p in zip(out, prompts, strict=True):
        assert r.token_ids == hf_greedy(hf, p, 4)
