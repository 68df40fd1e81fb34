"""Overlap scheduling (`overlap_schedule`): a plain greedy decode step is queued on the last
step's tokens before the host reads them (`Scheduler.continue_decode`). On a CPU the steps run
one after the other, but the bookkeeping is the same as on a GPU: these tests force it on and
compare every token with the engine that reads each step before planning the next, with
requests that end mid-run (EOS, stop tokens, max_tokens), sampled rows beside greedy ones,
aborts while a continued step is queued, and a device tier too small to continue every step.
Page ownership is checked after every step, and nothing leaks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from tests.conftest import cpu_engine

transformers = pytest.importorskip("transformers")

from radixkv import Engine  # noqa: E402
from tests.paged_runner import hf_greedy  # noqa: E402
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402

SYSTEM = list(range(10, 42))  # a 32-token shared prefix (2 pages)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    return path, save_tiny_llama(path)


def engine(path, overlap: str, pages: int = 64, **kw) -> Engine:
    return cpu_engine(
        str(path),
        kv_memory_gb=gb(pages),
        check_integrity=True,
        overlap_schedule=overlap,
        **kw,
    )


def assert_no_leaks(eng: Engine) -> None:
    report = eng.cache.check_integrity()["device"]
    assert report["locked"] == 0 and report["request_or_inflight"] == 0
    assert report["free"] + report["evictable"] == report["capacity"]


def run(eng: Engine, jobs: list[tuple[list[int], dict]], abort_at: dict[int, int]) -> list:
    """Submit every job, step until done, aborting job i at step abort_at[i]; the tokens."""
    reqs = [eng.submit(prompt, **kw) for prompt, kw in jobs]
    steps = 0
    while eng.core.has_work:
        eng.step()
        steps += 1
        for i, at in abort_at.items():
            if at == steps:
                eng.scheduler.abort(reqs[i])
    return [(r.output_ids, r.finish_reason) for r in reqs]


def test_continued_steps_give_transformers_tokens_and_end_on_stop_tokens(tiny_dir):
    path, hf = tiny_dir
    prompts = [SYSTEM + [60 + i, 70 + i] for i in range(4)]
    want = [hf_greedy(hf, p, 16) for p in prompts]
    stop = want[1][5]  # request 1 stops at its 6th token while the others go on
    with engine(path, "on") as eng:
        got = eng.generate(prompts, max_tokens=16, ignore_eos=True, stop_token_ids=(stop,))
        assert eng.scheduler.continued_steps > 10
        assert_no_leaks(eng)
    for g, w in zip(got, want, strict=True):
        cut = w.index(stop) + 1 if stop in w else len(w)
        assert g.token_ids == w[:cut]
        assert g.finish_reason == ("stop" if stop in w else "length")


def test_overlap_is_off_on_a_cpu_by_default(tiny_dir):
    path, _ = tiny_dir
    with engine(path, "auto") as eng:
        eng.generate([SYSTEM + [1]], max_tokens=8, ignore_eos=True)
        assert not eng.core.overlap and eng.scheduler.continued_steps == 0
    with pytest.raises(ValueError, match="overlap_schedule"):
        engine(path, "sometimes")


job = st.tuples(
    st.integers(0, 2),  # how much of the shared prefix the prompt starts with (x 16 tokens)
    st.lists(st.integers(1, 100), min_size=1, max_size=12),  # its own tokens
    st.integers(1, 12),  # max_tokens
    st.sampled_from([None, 0.9]),  # temperature: greedy, or seeded sampling
    st.booleans(),  # stop at the end-of-sequence token (else ignore_eos)
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    jobs=st.lists(job, min_size=1, max_size=6),
    stop_at=st.tuples(st.integers(0, 5), st.integers(0, 11)),
    aborts=st.dictionaries(st.integers(0, 5), st.integers(1, 12), max_size=2),
    pages=st.sampled_from([12, 64]),
)
def test_overlap_on_and_off_give_the_same_tokens_and_leak_nothing(
    tiny_dir, jobs, stop_at, aborts, pages
):
    """The stop token is one a request really produces (request i's token j, from a first run
    without stops), so that requests end while a continued step is queued."""
    path, _ = tiny_dir

    def specs(stop: int | None) -> list:
        out = []
        for i, (shared, own, max_tokens, temperature, eos) in enumerate(jobs):
            kw = {"max_tokens": max_tokens, "ignore_eos": not eos}
            kw |= {"stop_token_ids": (stop,)} if stop is not None else {}
            kw |= {"temperature": temperature, "seed": i} if temperature is not None else {}
            out.append((SYSTEM[: 16 * shared] + own, kw))
        return out

    with engine(path, "off", pages=pages, max_running=4) as eng:
        first = run(eng, specs(None), {})
    tokens = first[stop_at[0] % len(jobs)][0]
    stop = tokens[stop_at[1] % len(tokens)]
    aborts = {i: at for i, at in aborts.items() if i < len(jobs)}
    results = {}
    for overlap in ("off", "on"):
        torch.manual_seed(0)
        with engine(path, overlap, pages=pages, max_running=4) as eng:
            results[overlap] = run(eng, specs(stop), aborts)
            assert_no_leaks(eng)
            if overlap == "on":
                target(float(eng.scheduler.continued_steps))
    # an abort lands at a step count, and the two engines count steps alike only up to the
    # first abort: compare the requests no abort touched
    for i, (off, on) in enumerate(zip(results["off"], results["on"], strict=True)):
        if i not in aborts:
            assert on == off


def test_streams_through_the_engine_thread_with_one_closed_early(tiny_dir):
    """The server's path: the engine loop's thread steps the core while streams read it; one
    stream is closed after two chunks (an abort while a continued step may be queued), the
    others get transformers' tokens, and every page comes back."""
    import asyncio
    import time

    path, hf = tiny_dir
    prompts = [SYSTEM + [60 + i, 70 + i] for i in range(4)]

    async def collect(eng, prompt, early: bool):
        tokens = []
        agen = eng.stream(prompt, max_tokens=24, ignore_eos=True)
        async for chunk in agen:
            tokens += chunk.token_ids
            if early and len(tokens) >= 2:
                await agen.aclose()
                break
        return tokens

    async def main(eng):
        return await asyncio.gather(*(collect(eng, p, i == 1) for i, p in enumerate(prompts)))

    with engine(path, "on") as eng:
        got = asyncio.run(main(eng))
        deadline = time.monotonic() + 10
        while eng.core.has_work and time.monotonic() < deadline:
            time.sleep(0.01)  # the loop thread finishes the aborted request's queued step
        assert not eng.core.has_work and eng.scheduler.continued_steps > 10
        assert_no_leaks(eng)
    assert [g for i, g in enumerate(got) if i != 1] == [
        hf_greedy(hf, p, 24) for i, p in enumerate(prompts) if i != 1
    ]
    assert 2 <= len(got[1]) < 24


def test_closing_with_a_continued_step_queued_reads_it_and_runs_no_more(tiny_dir):
    path, _ = tiny_dir
    eng = engine(path, "on")
    req = eng.submit(SYSTEM + [1, 2], max_tokens=200, ignore_eos=True)
    for _ in range(5):
        eng.step()
    assert eng.core._in_flight is not None  # the sixth step is queued
    eng.close()
    assert eng.core._in_flight is None and len(req.output_ids) == 6
