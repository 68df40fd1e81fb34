"""The scheduler alone: a real `PrefixCache` over a small CPU cache, and a stand-in model runner
that needs no model and no transformers.

The stand-in writes each computed token's id into its KV slot (the page table's page and
offset, as attention kernels write K/V) and computes the next token from the ids it reads back
through the page table. So a wrong page table, a cache hit mapped to the wrong pages or a page
freed while in use changes the output, and each request's output is compared with the
reference continuation of its prompt. Integrity (every page owned exactly once) is proven after
every step.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.request import Request, State
from engine.sampling import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from radixkv.cache import CacheConfig, HiRadixCache
from radixkv.cache.prefix_cache import PrefixCache
from storage import KVLayout

PS = 4  # tokens per page
VOCAB = 997  # ids stay exact in float32 KV
LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=1, page_size=PS, dtype=torch.float32)


def next_token(ids: list[int]) -> int:
    """The stand-in model: a pure function of the whole context."""
    return sum((i + 1) * t for i, t in enumerate(ids)) * 2654435761 % VOCAB


def reference(prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(next_token(ids))
    return ids[len(prompt) :]


class KVRunner:
    """Runs a ScheduledBatch on the device pool: writes the new tokens' ids as their KV, then
    samples each sampling row from the ids read back through its page table."""

    def __init__(self, cache: HiRadixCache) -> None:
        self.kv = cache.device_pool.layer(0)  # [pages, 2, page_size, heads, dim]

    def run(self, batch: ScheduledBatch) -> list[int | None]:
        f = batch.forward
        self.kv[f.out_pages, 0, f.out_offsets, 0, 0] = f.input_ids.to(self.kv.dtype)
        tokens: list[int | None] = []
        rows = f.sampling or [None] * len(batch.plan)
        for i, row in enumerate(rows):
            if row is None:
                tokens.append(None)
                continue
            n = f.prefix_lens[i] + f.extend_lens[i]
            slots = torch.arange(n)
            pages = torch.tensor(f.page_tables[i])[slots // PS]
            ids = self.kv[pages, 0, slots % PS, 0, 0].to(torch.int64).tolist()
            tokens.append(next_token(ids))
        return tokens


def make(device_pages: int, host_pages: int = 0, **scheduler_options):
    cache = HiRadixCache(
        LAYOUT, CacheConfig(device_pages=device_pages, host_pages=host_pages), device="cpu"
    )
    scheduler = Scheduler(
        PrefixCache(cache), torch.device("cpu"), check_integrity=True, **scheduler_options
    )
    return cache, scheduler, KVRunner(cache)


def step(scheduler: Scheduler, runner: KVRunner) -> bool:
    batch = scheduler.schedule()
    if batch is None:
        return False
    scheduler.process_outputs(batch, runner.run(batch), 0.001)
    return True


def request(rid: int, prompt: list[int], max_tokens: int) -> Request:
    return Request(rid, list(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def run_all(scheduler: Scheduler, runner: KVRunner, limit: int = 10_000) -> None:
    for _ in range(limit):
        if not scheduler.has_work:
            return
        step(scheduler, runner)
    raise AssertionError("the scheduler did not finish its requests")


def assert_no_pages_held(cache: HiRadixCache) -> None:
    report = cache.check_integrity()
    assert report["device"]["locked"] == 0 and not cache.request_pages


def test_a_shared_prompt_is_computed_once_and_read_from_the_cache():
    cache, scheduler, runner = make(device_pages=64)
    prompt = list(range(1, 23))  # 22 tokens: 5 full pages of 4, the last token always computed
    first = request(1, prompt, 5)
    scheduler.add(first)
    run_all(scheduler, runner)
    second = request(2, prompt, 5)
    scheduler.add(second)
    run_all(scheduler, runner)
    assert first.output_ids == second.output_ids == reference(prompt, 5)
    assert first.cached_by_tier["device"] == 0
    assert second.cached_by_tier["device"] == 20  # page-aligned, short of the last token
    assert_no_pages_held(cache)


def test_a_pool_too_small_for_both_preempts_and_both_answers_stay_right():
    cache, scheduler, runner = make(device_pages=10, max_running=2, max_batch_tokens=64)
    prompts = [[7] * 17, [9] * 17]  # 17 + 12 tokens: 8 pages each of a 10-page pool
    reqs = [request(i, p, 12) for i, p in enumerate(prompts)]
    for r in reqs:
        scheduler.add(r)
    run_all(scheduler, runner)
    for r, p in zip(reqs, prompts, strict=True):
        assert r.finish_reason == "length" and r.output_ids == reference(p, 12)
    assert_no_pages_held(cache)


def test_an_aborted_request_gives_its_pages_back_and_its_prefix_stays_cached():
    cache, scheduler, runner = make(device_pages=32)
    prompt = list(range(40, 58))
    req = request(1, prompt, 50)
    scheduler.add(req)
    for _ in range(4):
        step(scheduler, runner)
    assert req.state == State.RUNNING
    scheduler.abort(req)
    assert req.finish_reason == "abort" and not scheduler.has_work
    assert_no_pages_held(cache)
    again = request(2, prompt, 3)
    scheduler.add(again)
    run_all(scheduler, runner)
    assert again.output_ids == reference(prompt, 3)
    assert again.cached_by_tier["device"] == 16


def test_a_prompt_larger_than_the_device_tier_is_aborted_not_looped_on():
    cache, scheduler, runner = make(device_pages=4)
    req = request(1, list(range(1, 30)), 2)  # 29 tokens > 4 pages of 4
    scheduler.add(req)
    run_all(scheduler, runner)
    assert req.finish_reason == "abort"
    assert_no_pages_held(cache)


BASES = [list(range(100, 124)), list(range(200, 212)), []]


@st.composite
def workloads(draw):
    reqs = []
    for rid in range(draw(st.integers(1, 8))):
        base = BASES[draw(st.integers(0, len(BASES) - 1))]
        suffix = draw(st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=12))
        arrive = draw(st.integers(0, 8))
        abort_at = draw(st.one_of(st.none(), st.integers(arrive, arrive + 10)))
        reqs.append((rid, base + suffix, draw(st.integers(1, 10)), arrive, abort_at))
    return reqs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workload=workloads(),
    device_pages=st.integers(12, 40),
    host_pages=st.sampled_from([0, 48]),
    max_running=st.integers(1, 4),
    max_batch_tokens=st.integers(4, 48),
)
def test_any_workload_gets_the_reference_answers_and_leaves_every_page_owned_once(
    workload, device_pages, host_pages, max_running, max_batch_tokens
):
    """Random arrivals, shared prefixes, aborts, chunked prefill and preemption: every request
    not aborted gets its reference continuation; integrity holds after every step; nothing is
    held at the end."""
    cache, scheduler, runner = make(
        device_pages,
        host_pages,
        max_running=max_running,
        max_batch_tokens=max_batch_tokens,
        starvation_steps=4,
    )
    reqs: dict[int, Request] = {}
    for now in range(2_000):
        for rid, prompt, max_tokens, arrive, abort_at in workload:
            if arrive == now:
                reqs[rid] = request(rid, prompt, max_tokens)
                scheduler.add(reqs[rid])
            if abort_at == now and rid in reqs:
                scheduler.abort(reqs[rid])
        step(scheduler, runner)
        if now > 20 and not scheduler.has_work:
            break
    assert not scheduler.has_work
    for rid, prompt, max_tokens, _, _ in workload:
        r = reqs[rid]
        assert r.state == State.FINISHED
        if r.finish_reason != "abort":
            assert r.finish_reason == "length"
            assert r.output_ids == reference(prompt, max_tokens)
    assert_no_pages_held(cache)


def test_the_scheduler_and_these_tests_run_without_transformers():
    """A fresh interpreter that cannot import transformers runs one of these scenarios."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from tests.test_scheduler import *\n"
        "test_a_shared_prompt_is_computed_once_and_read_from_the_cache()\n"
        "assert sys.modules['transformers'] is None\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
