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
from tests.store_servers import RedisServer, mooncake_master, redis_server  # noqa: E402, F401
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    return path, save_tiny_llama(path)


def _prompts(n: int) -> list[list[int]]:
    """n requests over 20 shared 64-token prefixes (4 pages), each with its own tail."""
    return [
        [(p * 13 + i * 7) % 97 + 1 for i in range(64)] + [(k * 5) % 97 + 1, 3, k % 50 + 1]
        for k, p in ((k, k % 20) for k in range(n))
    ]


def _run(eng: Engine, prompts, on_request=None) -> list:
    """Serve prompts 10 at a time (a busy server's mix of hits and misses)."""
    out = []
    for start in range(0, len(prompts), 10):
        if on_request is not None:
            on_request(start)
        out += eng.generate(prompts[start : start + 10], max_tokens=4, ignore_eos=True)
    return out


def test_redis_killed_mid_run_costs_no_request_and_no_token(tiny_dir):
    path, _ = tiny_dir
    prompts = _prompts(200)
    with Engine(str(path), device="cpu", kv_memory_gb=gb(24), host_memory_gb=gb(24)) as ref:
        want = [r.token_ids for r in _run(ref, prompts)]
    server = RedisServer().start()
    seen = {"degraded": False, "recovered": False}
    try:
        with Engine(
            str(path),
            device="cpu",
            kv_memory_gb=gb(24),  # small tiers: prefixes spill to the remote tier and come back
            host_memory_gb=gb(24),
            remote_url=server.url,
            check_integrity=True,
        ) as eng:
            status = eng.cache.remote_status

            def fault(start: int) -> None:
                if start == 60:
                    server.kill()  # mid-run: connections drop, new ones are refused
                if 60 < start <= 130 and status()["degraded"]:
                    seen["degraded"] = True
                if start == 130:
                    server.start()  # same port, empty
                    time.sleep(1.2)  # past the breaker's first back-off
                if start > 140 and not status()["degraded"]:
                    seen["recovered"] = True

            got = _run(eng, prompts, fault)
            eng.cache.wait_idle(timeout_s=30)
            final = status()
            puts_after = eng.cache.store.stats.puts
    finally:
        server.kill()
    assert all(r.finish_reason == "length" for r in got)  # zero failed requests
    assert [r.token_ids for r in got] == want  # and not one token changed
    assert seen["degraded"] and seen["recovered"], seen
    assert final["times_opened"] >= 1 and not final["degraded"]
    assert puts_after > 0
    assert sum(r.cached_tokens_by_tier["remote"] for r in got[:60]) > 0  # the tier was in use


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


@pytest.mark.parametrize("tier", ["file", "redis", "mooncake"])
def test_a_prefix_computed_by_one_process_is_a_remote_hit_in_another(
    tiny_dir, tmp_path, request, tier
):
    path, hf = tiny_dir
    if tier == "file":
        url = (tmp_path / "remote").as_uri()
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
