"""Prefill/decode disaggregation through the shared tier: a prompt prefilled on engine P decodes
on engine D from P's pages (Redis and Mooncake Store), with the tokens one engine doing both
would give; without P, D computes the prompt itself after its handoff timeout."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("transformers")

from radixkv import Engine  # noqa: E402
from tests.paged_runner import hf_greedy  # noqa: E402
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402

PAGE = 16
PROMPT = [(i * 7 + 3) % 97 + 1 for i in range(150)]  # 149 prompt tokens before the last: 9 pages
ALIGNED = (len(PROMPT) - 1) // PAGE * PAGE
SIZES = dict(
    device="cpu",
    kv_memory_gb=gb(32),
    host_memory_gb=gb(48),
    remote_load_margin=0.0,
    check_integrity=True,  # every step: each page owned once, no hold left behind
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    hf = save_tiny_llama(path)
    return str(path), hf_greedy(hf, PROMPT, 8)


@pytest.fixture(params=["redis", "mooncake"])
def shared_tier(request, tmp_path):
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        return url + f"?prefix=handoff-{tmp_path.name}:"
    return request.getfixturevalue("mooncake_master").url


def test_a_prompt_prefilled_on_p_decodes_on_d_from_the_shared_tier(tiny, shared_tier):
    path, want = tiny
    with (
        Engine(path, role="prefill", remote_url=shared_tier, **SIZES) as p,
        Engine(
            path, role="decode", remote_url=shared_tier, handoff_timeout_ms=20_000, **SIZES
        ) as d,
    ):
        # D is asked first and waits; P's pages reach the shared tier while it does
        box = {}
        waiter = threading.Thread(
            target=lambda: box.update(r=d.generate([PROMPT], max_tokens=8, ignore_eos=True)[0])
        )
        waiter.start()
        time.sleep(0.3)
        first = p.generate([PROMPT], max_tokens=8, ignore_eos=True)[0]
        waiter.join(60)
        got = box["r"]
        handoffs = d.core.scheduler.handoffs.report()
        held = d.cache.reads.held_pages
    assert held == 0  # the handoff's holds all released
    assert len(first.token_ids) == 1 and first.token_ids == want[:1]  # P answers at once
    assert got.token_ids == want  # greedy tokens of one engine doing both
    assert got.cached_tokens == ALIGNED and got.cached_tokens_by_tier["remote"] == ALIGNED
    assert handoffs["completed"] == 1 and handoffs["timed_out"] == 0


def test_without_a_prefill_engine_d_computes_after_its_timeout(tiny, redis_server, tmp_path):
    path, want = tiny
    url = redis_server.url + f"?prefix=alone-{tmp_path.name}:"
    with Engine(path, role="decode", remote_url=url, handoff_timeout_ms=300, **SIZES) as d:
        t = time.monotonic()
        got = d.generate([PROMPT], max_tokens=8, ignore_eos=True)[0]
        waited = time.monotonic() - t
        handoffs = d.core.scheduler.handoffs.report()
    assert got.finish_reason == "length" and got.token_ids == want  # no error, same tokens
    assert got.cached_tokens == 0
    assert waited >= 0.3 and handoffs["timed_out"] == 1


def test_roles_need_a_shared_tier():
    from engine.config import EngineConfig

    with pytest.raises(ValueError, match="shared tier"):
        EngineConfig(role="decode", remote_url="none")
    with pytest.raises(ValueError, match="role"):
        EngineConfig(role="encode")
    with pytest.raises(ValueError, match="handoff_timeout_ms"):
        EngineConfig(handoff_timeout_ms=-1)
