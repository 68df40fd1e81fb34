"""The Engine end to end on a tiny random Llama: the same greedy tokens as transformers whether
a prefix came from nowhere, the device, the host, the remote tier or survived a preemption;
check_integrity() after every scheduler step; no page leaks after 1,000 mixed requests."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import threading

import pytest
import torch

from tests.conftest import cpu_engine

transformers = pytest.importorskip("transformers")

from radixkv import DEVICE, Engine  # noqa: E402
from tests.paged_runner import hf_greedy  # noqa: E402
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    return path, save_tiny_llama(path)


SYSTEM = list(range(10, 58))  # a 48-token shared prefix (3 pages)
PROMPTS = [SYSTEM + [60 + i, 70 + i, 80 + i] for i in range(4)]


def engine(path, pages=64, **kw) -> Engine:
    kw = {"host_memory_gb": 0, "remote_url": None, **kw}  # one tier unless a test asks for more
    return Engine(str(path), device="cpu", kv_memory_gb=gb(pages), check_integrity=True, **kw)


def test_engine_matches_transformers_batched(tiny_dir):
    path, hf = tiny_dir
    want = [hf_greedy(hf, p, 10) for p in PROMPTS]
    with engine(path) as eng:
        got = eng.generate(PROMPTS, max_tokens=10, ignore_eos=True)
    assert [g.token_ids for g in got] == want
    assert all(g.finish_reason == "length" and g.prompt_tokens == 51 for g in got)


def test_same_tokens_cold_device_host_remote_and_preempted(tiny_dir, tmp_path):
    path, hf = tiny_dir
    want = [hf_greedy(hf, p, 12) for p in PROMPTS]
    remote = f"file://{tmp_path / 'remote'}"
    with engine(path, host_memory_gb=gb(256), remote_url=remote) as eng:
        cold = eng.generate(PROMPTS[:1], max_tokens=12, ignore_eos=True)[0]
        assert cold.token_ids == want[0] and cold.cached_tokens == 0
        device = eng.generate(PROMPTS[1:2], max_tokens=12, ignore_eos=True)[
            0
        ]  # shares the 3-page system prompt
        assert device.token_ids == want[1] and device.cached_tokens_by_tier["device"] == 48
        eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
        host = eng.generate(PROMPTS[2:3], max_tokens=12, ignore_eos=True)[0]
        assert host.token_ids == want[2] and host.cached_tokens_by_tier["host"] == 48
    with engine(
        path, host_memory_gb=gb(256), remote_url=remote
    ) as other:  # a second process's view
        remote_hit = other.generate(PROMPTS[3:4], max_tokens=12, ignore_eos=True)[0]
        assert remote_hit.token_ids == want[3] and remote_hit.cached_tokens_by_tier["remote"] == 48
    with engine(path, pages=9) as small:  # 4 requests x 4 pages do not fit in 9: preemption
        # admission by memory would queue them; an admission that guesses too low (here: every
        # request expected to need nothing) leaves preemption as the safety net, tested here
        small.scheduler._expected_pages = lambda req, cached: 0
        got = small.generate(PROMPTS, max_tokens=12, ignore_eos=True)
        assert small.scheduler.preemptions > 0
        assert [g.token_ids for g in got] == want


def test_requests_arriving_together_share_a_prefix_being_prefilled(tiny_dir):
    """Four prompts over one 96-token prefix, submitted at once: the first computes it, the
    others wait for it to be cached, then reuse it while the first is still decoding."""
    path, hf = tiny_dir
    shared = [(7 * i) % 97 + 1 for i in range(96)]
    prompts = [shared + [90 + i, 3, 5 + i] for i in range(4)]
    with engine(path) as eng:
        got = eng.generate(prompts, max_tokens=8, ignore_eos=True)
    assert [g.token_ids for g in got] == [hf_greedy(hf, p, 8) for p in prompts]
    assert got[0].cached_tokens == 0
    assert all(g.cached_tokens_by_tier["device"] == 96 for g in got[1:])


def test_prefix_caching_off_gives_the_same_tokens_and_no_hits(tiny_dir):
    path, hf = tiny_dir
    with engine(path, prefix_caching=False) as eng:
        a = eng.generate(PROMPTS[:2], max_tokens=6, ignore_eos=True)
        b = eng.generate(PROMPTS[:2], max_tokens=6, ignore_eos=True)
    assert (
        [r.token_ids for r in a]
        == [r.token_ids for r in b]
        == [hf_greedy(hf, p, 6) for p in PROMPTS[:2]]
    )
    assert all(r.cached_tokens == 0 for r in a + b)


def test_a_thousand_mixed_requests_with_cancellations_leak_nothing(tiny_dir):
    path, _ = tiny_dir
    rng = random.Random(0)
    with cpu_engine(
        str(path),
        kv_memory_gb=gb(40),
        max_running=16,
        max_batch_tokens=256,
    ) as eng:
        live, done, aborted = [], 0, 0
        for i in range(1000):
            prompt = SYSTEM[: rng.choice([0, 16, 32, 48])] + [
                rng.randrange(101) for _ in range(rng.randint(1, 20))
            ]
            live.append(
                eng.submit(
                    prompt, max_tokens=rng.randint(1, 8), temperature=rng.choice([0.0, 0.9]), seed=i
                )
            )
            if rng.random() < 0.5:
                eng.step()
            if live and rng.random() < 0.2:
                eng.scheduler.abort(live.pop(rng.randrange(len(live))))
                aborted += 1
            if i % 50 == 0:
                eng.cache.check_integrity()
        while eng.scheduler.has_work:
            eng.step()
        done = sum(r.finish_reason in ("length", "stop") for r in live)
        report = eng.cache.check_integrity()
        assert done == len(live) and aborted > 100
        assert report["device"]["locked"] == 0 and report["device"]["request_or_inflight"] == 0
        assert (
            report["device"]["free"] + report["device"]["evictable"] == report["device"]["capacity"]
        )
        eng.cache.flush()
        assert eng.cache.check_integrity()["device"]["free"] == eng.cache.device_pool.num_pages


def test_seeded_sampling_is_reproducible(tiny_dir):
    path, _ = tiny_dir
    with engine(path) as eng:
        a = eng.generate(
            [PROMPTS[0]] * 2, max_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=5
        )
        b = eng.generate([PROMPTS[0]], max_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=5)
        c = eng.generate([PROMPTS[0]], max_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=6)
    assert a[0].token_ids == a[1].token_ids == b[0].token_ids != c[0].token_ids


def test_stop_tokens_end_generation(tiny_dir):
    path, hf = tiny_dir
    want = hf_greedy(hf, PROMPTS[0], 12)
    with engine(path) as eng:
        r = eng.generate([PROMPTS[0]], max_tokens=12, stop_token_ids=(want[4],), ignore_eos=True)[0]
    assert r.finish_reason == "stop" and r.token_ids == want[: want.index(want[4]) + 1]


@pytest.mark.parametrize(
    "prompt, kwargs, message",
    [
        ([], {}, "prompt"),
        ([5, 500], {}, "token ids"),
        ([5, -1], {}, "token ids"),
        ([5, 2.0], {}, "token ids"),
        ([[5, 6]], {}, "token ids"),
        ([5, "6"], {}, "token ids"),
        ("text", {}, "tokenizer"),
        ([1, 2], {"temperature": -1}, "temperature"),
        ([1, 2], {"top_p": 0}, "top_p"),
        ([1, 2], {"max_tokens": 0}, "max_tokens"),
        ([1, 2], {"max_tokens": 600}, "context"),
    ],
)
def test_bad_input_is_a_clear_value_error(tiny_dir, prompt, kwargs, message):
    path, _ = tiny_dir
    with engine(path) as eng, pytest.raises(ValueError, match=message):
        eng.generate([prompt], **kwargs)


def test_streams_run_concurrently_and_equal_generate(tiny_dir):
    import asyncio

    path, hf = tiny_dir

    async def collect(eng, prompt):
        tokens, finish = [], None
        async for chunk in eng.stream(prompt, max_tokens=8, ignore_eos=True):
            tokens += chunk.token_ids
            finish = chunk.finish_reason
        return tokens, finish

    async def main(eng):
        return await asyncio.gather(*(collect(eng, p) for p in PROMPTS))

    with engine(path) as eng:
        results = asyncio.run(main(eng))
    assert [t for t, _ in results] == [hf_greedy(hf, p, 8) for p in PROMPTS]
    assert all(f == "length" for _, f in results)


def test_a_stream_closed_early_aborts_and_frees_its_pages(tiny_dir):
    import asyncio

    path, _ = tiny_dir

    async def take_two(eng):
        agen = eng.stream(PROMPTS[0], max_tokens=50, ignore_eos=True)
        got = [await agen.__anext__(), await agen.__anext__()]
        await agen.aclose()
        return got

    with engine(path) as eng:
        asyncio.run(take_two(eng))
        report = eng.cache.check_integrity()
        assert report["device"]["locked"] == 0 and not eng.scheduler.has_work


def test_attention_backend_choice_is_validated_and_torch_on_cpu(tiny_dir):
    path, _ = tiny_dir
    with engine(path) as eng:
        assert eng.attention == "torch"
    with pytest.raises(ValueError, match="attention"):
        Engine(str(path), device="cpu", kv_memory_gb=gb(16), attention="fastest")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_host_hit_loads_layer_by_layer_with_the_same_tokens(tiny_dir):
    path, hf = tiny_dir
    with Engine(
        str(path),
        device="cuda",
        dtype=torch.float32,
        kv_memory_gb=gb(64),
        host_memory_gb=gb(256),
        remote_url=None,
        attention="torch",
        check_integrity=True,
    ) as eng:
        cold = eng.generate([PROMPTS[0]], max_tokens=8, ignore_eos=True)[0]
        eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
        handed = []
        take = eng.cache.controller.take_layer_events

        def spy():
            events = take()
            handed.append(events)
            return events

        eng.cache.controller.take_layer_events = spy
        host = eng.generate([PROMPTS[1]], max_tokens=8, ignore_eos=True)[0]
    assert cold.token_ids == hf_greedy(hf, PROMPTS[0], 8)
    assert host.cached_tokens_by_tier["host"] == 48
    assert host.token_ids == hf_greedy(hf, PROMPTS[1], 8)
    assert any(e is not None and len(e) == 2 for e in handed), "the forward got no per-layer events"


def test_admission_by_memory_keeps_preemption_rare_in_a_burst(tiny_dir):
    """60 requests at once into a device tier that holds a few of them: admission counts pages
    (running requests' own and locked, plus their expected decode growth) before it admits, so
    requests wait in the queue instead of being preempted. Admission by count alone (every
    request expected to need nothing) thrashes on the same burst."""
    path, _ = tiny_dir
    prompts = [[(13 * i + j) % 97 + 1 for j in range(20 + (i * 7) % 40)] for i in range(60)]
    preemptions = {}
    for by_memory in (True, False):
        with engine(path, pages=24, max_running=32) as eng:
            if not by_memory:
                eng.scheduler._expected_pages = lambda req, cached: 0
            out = eng.generate(prompts, max_tokens=16, ignore_eos=True)
            assert all(r.finish_reason == "length" and len(r.token_ids) == 16 for r in out)
            preemptions[by_memory] = eng.scheduler.preemptions
            report = eng.cache.check_integrity()
            assert report["device"]["locked"] == 0
    assert preemptions[True] <= 0.02 * len(prompts), preemptions
    assert preemptions[False] > 10 * max(1, preemptions[True]), preemptions


def test_multi_turn_sessions_whose_contexts_stay_on_the_device_are_never_preempted(tiny_dir):
    """Eight sessions x four rounds into a device tier that holds about two contexts: each
    round resends a session's context (left on the device, unlocked, by its last turn). Those
    hits leave the room admission counts once a request locks them, so admission charges them
    (counting every device hit as already committed preempted 6 of 32 requests here). Tokens
    equal a roomy tier's."""
    path, _ = tiny_dir

    def run(pages: int) -> tuple[list[list[int]], int]:
        rng = random.Random(0)
        ctx = [[rng.randrange(5, 100) for _ in range(40)] for _ in range(8)]
        got = []
        with engine(path, pages=pages, host_memory_gb=gb(256), max_running=16) as eng:
            for _ in range(4):
                asks = [c + [rng.randrange(5, 100) for _ in range(8)] for c in ctx]
                outs = eng.generate(asks, max_tokens=24, ignore_eos=True)
                ctx = [a + o.token_ids for a, o in zip(asks, outs, strict=True)]
                got += [o.token_ids for o in outs]
            return got, eng.scheduler.preemptions

    tight, preemptions = run(32)
    assert preemptions == 0
    assert tight == run(512)[0]


def test_a_prefill_adopts_its_remote_prefix_landing_after_admission(tiny_dir, tmp_path):
    """A request admitted before its remote fetch landed (computing rather than waiting longer)
    prefills in 16-token chunks; the fetched pages that land meanwhile are loaded between its
    chunks instead of computed, and its tokens still equal transformers'. The store's reads are
    held until the first chunk has run and handed its page to the tree, splitting the node the
    fetch fills: the read's tail lands in the part below."""
    path, hf = tiny_dir
    remote = f"file://{tmp_path / 'remote'}"
    prompt = [(11 * j) % 97 + 1 for j in range(150)]
    want = hf_greedy(hf, prompt, 8)
    with engine(path, host_memory_gb=gb(256), remote_url=remote) as first:
        first.generate([prompt[:130]], max_tokens=1, ignore_eos=True)
        first.cache.flush()  # 8 full pages (128 tokens) in the store
    with engine(path, host_memory_gb=gb(256), remote_url=remote, max_batch_tokens=16) as eng:
        store, gate = eng.cache.controller.store, threading.Event()
        real_get = store.get

        async def held_get(names, *bound):
            await asyncio.get_running_loop().run_in_executor(None, gate.wait)
            return await real_get(names, *bound)

        store.get = held_get
        req = eng.submit(prompt, max_tokens=8, ignore_eos=True)
        req.prefetch.wait_until = 0.0  # admitted at once
        eng.cache.reads.wait_one(timeout_s=30)  # the store says it holds 8 pages; their read waits
        assert eng.cache.match(prompt, touch=False).remote_tokens == 128
        eng.step()
        assert req.num_computed == 16 and req.cached_tokens == 0  # one chunk, computed
        gate.set()
        eng.cache.reads.wait_idle(timeout_s=30)  # the fetch lands on host
        while eng.scheduler.has_work:
            eng.step()
        assert req.output_ids == want
        # pages 1..7 loaded, not computed: the prompt's 150 tokens took 16 + 22 computed
        assert eng.scheduler.adopted_tokens == 128 - 16
        assert req.cached_by_tier["remote"] == 128 - 16 and req.cached_tokens == 112
        eng.cache.check_integrity()


@pytest.mark.parametrize("idle", [False, True], ids=["busy", "idle"])
def test_a_returning_session_finds_its_context_promoted_back_to_the_device(tiny_dir, idle):
    """Sessions named on their requests: the prefetcher learns how long they stay away, moves a
    session's context (pushed off the device by other traffic) back before it returns, and its
    next turn reads it from the device with the same tokens as transformers. The promotion runs
    between steps, and on an idle engine thread too (every client away thinking)."""
    import time

    from radixkv.cache.config import PrefetchConfig
    from radixkv.cache.prefetch.prefetcher import SESSION

    path, hf = tiny_dir
    with engine(path, pages=64, host_memory_gb=gb(256)) as eng:
        pf = eng.cache.prefetcher
        pf.config = PrefetchConfig(min_history=2, confidence=0.5, lead_quantile=0.0)
        turn1 = {
            s: eng.generate([PROMPTS[s]], max_tokens=4, ignore_eos=True, session=f"s{s}")[0]
            for s in range(3)
        }
        time.sleep(0.2)
        ctx = {s: PROMPTS[s] + turn1[s].token_ids + [90 + s, 91] for s in range(3)}
        for s in range(2):  # two returns: the gaps are learned
            eng.generate([ctx[s]], max_tokens=4, ignore_eos=True, session=f"s{s}")
        eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)  # other traffic's doing
        assert eng.cache.match(ctx[2], touch=False).device_tokens == 0
        s2 = pf._sessions["s2"]  # past its end by the shortest learned gap: its return is near
        time.sleep(max(0.0, s2.ended_at + min(pf._sorted_gaps) - time.monotonic()) + 0.05)
        if idle:  # no request at all: the engine thread's idle loop runs the prefetcher
            eng.loop.start()
            deadline = time.monotonic() + 10
            while not eng.on_engine_thread(lambda: pf.stats.moved_pages[SESSION]):
                assert time.monotonic() < deadline, "the idle engine promoted nothing"
                time.sleep(0.02)
        else:
            eng.generate([[5, 6, 7]], max_tokens=2, ignore_eos=True)  # steps run the prefetcher
        assert pf.stats.moved_pages[SESSION] > 0
        back = eng.generate([ctx[2]], max_tokens=6, ignore_eos=True, session="s2")[0]
        assert back.cached_tokens_by_tier["device"] >= len(PROMPTS[2]) // 16 * 16
        assert back.token_ids == hf_greedy(hf, ctx[2], 6)
        assert pf.stats.useful_pages[SESSION] > 0
        report = eng.on_engine_thread(eng.core.cache_report)["prefetch"]  # /cache/stats
        assert report["by_kind"]["session"]["useful_pages"] > 0


def test_a_new_engine_warms_its_host_tier_from_the_hot_prefixes_an_old_one_shared(
    tiny_dir, tmp_path
):
    """Two engines over one file tier, one after the other (a restart, or a new pod): the first
    publishes its hot prefixes when it closes; the second starts with them on host, and its
    first request hits them there with the same tokens as transformers."""
    path, hf = tiny_dir
    remote = f"file://{tmp_path / 'remote'}"
    shared = dict(host_memory_gb=gb(256), remote_url=remote, share_hot_prefixes=True)
    with engine(path, **shared) as first:
        for p in PROMPTS:  # the shared system prompt is read by three of them
            first.generate([p], max_tokens=2, ignore_eos=True)
    with engine(path, **shared) as second:
        second.cache.wait_idle()  # the warm-up's reads (a real engine serves meanwhile)
        assert second.core.warming.prefixes >= 1
        assert second.cache.match(SYSTEM, touch=False).host_tokens == len(SYSTEM)
        got = second.generate([PROMPTS[2]], max_tokens=8, ignore_eos=True)[0]
        assert got.cached_tokens_by_tier["host"] == len(SYSTEM)
        assert got.token_ids == hf_greedy(hf, PROMPTS[2], 8)
    with engine(path, host_memory_gb=gb(256), remote_url=remote) as off:  # the default: off
        off.cache.wait_idle()
        assert off.core.warming is None
        assert off.cache.match(SYSTEM, touch=False).cached_tokens == 0


def test_queued_requests_find_their_host_prefix_loaded_to_the_device_before_their_turn(tiny_dir):
    """With one request running at a time, the ones behind it wait; between steps the prefetcher
    loads each waiting request's host-resident prefix onto the device and holds it there, so its
    turn reads the prefix from the device (same tokens as transformers). Where the holds fill the
    device tier, running requests' growth takes the pages back before any preemption, with the
    same tokens, and nothing leaks."""
    from radixkv.cache.config import PrefetchConfig
    from radixkv.cache.prefetch.prefetcher import QUEUED

    path, hf = tiny_dir
    docs = [[(11 * d + 3 * j) % 97 + 1 for j in range(64)] for d in range(4)]  # 4 pages each
    prompts = [d + [90 + i, 91] for i, d in enumerate(docs)]
    want = [hf_greedy(hf, p, 6) for p in prompts]
    for budget in (0, 256):  # the prefetcher off, then on
        with engine(
            path, pages=40, host_memory_gb=gb(256), max_running=1, prefetch_pages=budget
        ) as eng:
            eng.generate(docs, max_tokens=1, ignore_eos=True)  # cached, then off the device
            eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
            got = eng.generate(prompts, max_tokens=6, ignore_eos=True)
            pf = eng.cache.prefetcher
            assert [g.token_ids for g in got] == want
            # the head is admitted on arrival and loads its own; the others wait behind it
            assert got[0].cached_tokens_by_tier["host"] == 64
            # each later turn's prefix came from host: loaded at its turn, or (the prefetcher
            # on) promoted while it waited, which the useful pages below show
            assert all(g.cached_tokens_by_tier["host"] == 64 for g in got[1:])
            assert pf.stats.moved_pages[QUEUED] == pf.stats.useful_pages[QUEUED]
            assert pf.stats.moved_pages[QUEUED] == (12 if budget else 0)
            assert eng.cache.check_integrity()["device"]["locked"] == 0
            assert pf.held_device_pages == 0
    # holds allowed the whole tier, two requests running, four waiting with 3-page host
    # prefixes: the holds fill the tier, and the running requests' growth takes it back
    docs = [[(7 * k + 5 * j) % 97 + 1 for j in range(48)] for k in range(6)]
    runs = {}
    for budget in (0, 256):
        with engine(
            path, pages=16, host_memory_gb=gb(256), max_running=2, prefetch_pages=budget
        ) as eng:
            eng.cache.prefetcher.config = PrefetchConfig(device_share=1.0)
            freed, reclaim = [], eng.scheduler._reclaim_holds
            eng.scheduler._reclaim_holds = lambda keep=None, seen=freed, run=reclaim: (
                seen.append(run(keep)) or seen[-1]
            )
            eng.generate(docs, max_tokens=1, ignore_eos=True)
            eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
            out = eng.generate([d + [5] for d in docs], max_tokens=40, ignore_eos=True)
            runs[budget] = [r.token_ids for r in out]
            assert (sum(freed) > 0) == bool(budget) and eng.scheduler.preemptions == 0
            report = eng.cache.check_integrity()["device"]
            assert report["locked"] == 0 and eng.cache.prefetcher.held_device_pages == 0
    assert runs[256] == runs[0]


def test_running_requests_growth_takes_back_a_returning_sessions_hold(tiny_dir):
    """A returning session's context promoted back to the device is a prediction: when running
    requests' growth needs its pages, the hold yields before any preemption, with the same tokens
    as transformers, and nothing leaks."""
    import time

    from radixkv.cache.config import PrefetchConfig

    path, hf = tiny_dir
    ctx = [(5 * j) % 97 + 1 for j in range(112)]  # 7 pages: the session's context
    doc = [(7 + 3 * j) % 97 + 1 for j in range(48)]
    want = hf_greedy(hf, doc, 120)  # 11 pages by the end
    with engine(path, pages=16, host_memory_gb=gb(256), max_running=2, prefetch_pages=256) as eng:
        pf = eng.cache.prefetcher
        pf.config = PrefetchConfig(
            device_share=1.0, min_history=2, confidence=0.5, lead_quantile=0.0, lead_s=30.0
        )
        now = time.monotonic()
        for i in range(4):  # sessions back after 30 s: one is due (lead_s) as its turn ends
            pf.turn_ended(("learn", i), [1, 2], now - 30)
            pf.turn_began(("learn", i), now)
        eng.generate([ctx], max_tokens=1, ignore_eos=True, session="s")
        eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
        assert eng.scheduler.prefetch() == 7  # back on the device, held: 9 pages left
        # admitted on its predicted output (9 pages), it needs two of the held pages to finish
        got = eng.generate([doc], max_tokens=120, ignore_eos=True)[0]
        assert got.token_ids == want
        assert eng.scheduler.preemptions == 0
        report = eng.cache.check_integrity()["device"]
        assert report["locked"] == pf.held_device_pages  # only a hold made again since
        pf.yield_session_holds()
        assert pf.held_device_pages == 0 and eng.cache.check_integrity()["device"]["locked"] == 0


def test_the_head_of_the_queue_gets_its_host_prefix_on_the_device_while_admission_waits(
    tiny_dir,
):
    """Two long requests fill the device tier's room, so admission waits for memory with a
    third at the head of the queue. Meanwhile its host-resident prefix is loaded onto the
    device and held for it (its own admission, not room taken from it): when it is admitted it
    reads the prefix from the device, with the tokens of transformers and no preemption."""
    from radixkv.cache.prefetch.prefetcher import QUEUED

    path, hf = tiny_dir
    doc = [(3 * j) % 97 + 1 for j in range(64)]  # 4 pages, cached then pushed to host
    long = [[(11 * k + 5 * j) % 97 + 1 for j in range(48 * (k + 1))] for k in range(2)]
    prompts, steps = [*long, doc + [90, 91]], (80, 20, 8)
    want = [hf_greedy(hf, p, n) for p, n in zip(prompts, steps, strict=True)]
    tiers, useful = {}, {}
    for budget in (0, 256):
        with engine(
            path, pages=18, host_memory_gb=gb(256), max_running=4, prefetch_pages=budget
        ) as eng:
            eng.generate([doc], max_tokens=1, ignore_eos=True)
            eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
            blocked, admit = [0], eng.scheduler._admit

            def counted(admit=admit, blocked=blocked, sched=eng.scheduler):
                admit()
                blocked[0] += sched._blocked_head is not None

            eng.scheduler._admit = counted
            reqs = [
                eng.core.make_request(p, max_tokens=n, ignore_eos=True)
                for p, n in zip(prompts, steps, strict=True)
            ]
            for r in reqs:
                eng.scheduler.add(r)
            while any(r.finish_reason is None for r in reqs):
                eng.core.iterate()
            assert [r.output_ids for r in reqs] == want
            assert blocked[0] > 0 and eng.scheduler.preemptions == 0
            assert eng.scheduler.admission_waits == blocked[0]
            tiers[budget] = dict(reqs[2].cached_by_tier)
            useful[budget] = eng.cache.prefetcher.stats.useful_pages[QUEUED]
            report = eng.cache.check_integrity()["device"]
            assert report["locked"] == 0 and eng.cache.prefetcher.held_device_pages == 0
    # its prefix came from host either way: loaded at its admission without the prefetcher;
    # with it, its 4 pages were on the device before its turn (and read there: useful)
    assert tiers[0]["host"] == 64 and tiers[256]["host"] == 64
    assert useful[0] == 0 and useful[256] == 4


def test_the_kernel_warm_up_writes_only_the_scratch_page(tiny_dir):
    """The start-up warm-up (run on a GPU; here with the torch backend) runs a decode step, a
    short extend and a long prefill on the scratch page alone: no page a request could own
    changes, and the engine's tokens after it still equal transformers'."""
    path, hf = tiny_dir
    with engine(path, pages=32) as eng:
        assert eng.core.warm_up_s == 0.0  # not run on a CPU at start-up
        pool = eng.cache.device_pool
        owned = pool.data[:, : pool.num_pages]
        owned.copy_(torch.randn(owned.shape, generator=torch.Generator().manual_seed(0)))
        before, scratch = owned.clone(), pool.data[:, pool.scratch_page].clone()
        assert eng.core.runner.warm_up(pool) > 0
        assert torch.equal(pool.data[:, : pool.num_pages], before)
        assert not torch.equal(pool.data[:, pool.scratch_page], scratch)  # it did run
        got = eng.generate(PROMPTS[:2], max_tokens=6, ignore_eos=True)
    assert [g.token_ids for g in got] == [hf_greedy(hf, p, 6) for p in PROMPTS[:2]]


def test_the_triton_kernels_are_refused_off_cuda_and_auto_leaves_them_off(tiny_dir):
    from engine.triton_kernels import triton_kernels_wanted

    path, _ = tiny_dir
    with pytest.raises(ValueError, match="triton_kernels needs a CUDA device"):
        engine(path, triton_kernels="on")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not triton_kernels_wanted("auto", cpu, torch.bfloat16)
    assert not triton_kernels_wanted("auto", cuda, torch.float32)  # the GEMV's tuning: half only
    assert not triton_kernels_wanted("off", cuda, torch.bfloat16)
    has_triton = importlib.util.find_spec("triton") is not None
    assert triton_kernels_wanted("auto", cuda, torch.bfloat16) == has_triton


def test_triton_kernels_that_cannot_load_leave_auto_off_with_a_warning(monkeypatch, caplog):
    """A Triton whose kernels fail to import (a build that does not match torch; here the
    module is blocked) must not stop an engine on auto: off, and the log says why; on: an error."""
    import logging
    import sys

    from engine.triton_kernels import triton_kernels_wanted

    monkeypatch.setitem(sys.modules, "engine.gemv_triton", None)  # its import now fails
    cuda = torch.device("cuda")
    with caplog.at_level(logging.WARNING, logger="engine.triton_kernels"):
        assert not triton_kernels_wanted("auto", cuda, torch.bfloat16)
    assert "the Triton decode kernels are off" in caplog.text
    with pytest.raises(ValueError, match="triton_kernels=on, but"):
        triton_kernels_wanted("on", cuda, torch.bfloat16)
