"""The timed replay: the serving clock's TTFT formula on hand-worked cases, and the CLI's timed
table, where a cache that hits shortens the modelled TTFT."""

from __future__ import annotations

import json

import pytest

from radixkv.bench.__main__ import main
from radixkv.bench.timed import CostModel, ServingClock
from tests.test_trace_replay import write_trace

COST = CostModel(
    prefill_tokens_per_s=1000.0,
    kv_bytes_per_token=1000,
    h2d_gbps=1e-3,  # 1 MB/s: 1,000 tokens a second
    remote_gbps=5e-4,  # 500 tokens a second
    remote_latency_ms=100.0,
)


def test_clock_charges_compute_loads_and_queueing_as_documented():
    clock = ServingClock(COST)
    # 2,000 tokens, none cached: 2 s of compute
    assert clock.serve(0.0, 2000) == pytest.approx(2.0)
    # arrives at 1 s while the GPU is busy until 2 s: queues 1 s, then 500 uncached tokens
    assert clock.serve(1.0, 500) == pytest.approx(1.5)
    # at 10 s, idle: 1,000 host tokens load in its turn (1 s) under 500 tokens of compute (0.5 s)
    assert clock.serve(10.0, 500, 1000) == pytest.approx(1.0)
    assert clock.gpu_free == pytest.approx(11.0)  # the turn held the GPU for the load
    # at 20 s: 500 remote tokens read on arrival (0.1 s latency + 1 s), then loaded (0.5 s)
    done = clock.read_remote(20.0, 500)
    assert done == pytest.approx(21.1)
    assert clock.serve(20.0, 0, 500, done) == pytest.approx(1.6)
    report = clock.report(duration_s=20.0)
    assert report["ttft_ms"]["p50"] == pytest.approx(1600)  # nearest rank of 1, 1.5, 1.6, 2 s
    assert report["queued_ms_mean"] == pytest.approx(1000 / 4)
    assert report["load_wait_ms_mean"] == pytest.approx((0.5 + 1.6) / 4 * 1000)
    assert report["utilisation"]["gpu"] == pytest.approx((2 + 0.5 + 0.5) / 21.6)


def test_attention_term_charges_the_new_tokens_pairs_with_all_before_them():
    cost = CostModel(prefill_tokens_per_s=1000.0, attention_pairs_per_s=1e6)
    # 2,000 new tokens after 1,000 cached: 2 s flat + (3000^2 - 1000^2) / 2 = 4M pairs = 4 s
    assert cost.prefill_s(3000, 2000) == pytest.approx(6.0)
    clock = ServingClock(cost)
    assert clock.serve(0.0, 2000, prompt_tokens=3000) == pytest.approx(6.0)
    assert clock.serve(100.0, 2000) == pytest.approx(2.0 + 2.0)  # no prompt given: all new
    with pytest.raises(ValueError, match="attention-pairs-per-s"):
        CostModel(attention_pairs_per_s=0)


def test_prefetches_use_only_the_link_time_before_the_next_turn():
    clock = ServingClock(COST)
    clock.serve(0.0, 2000)  # the GPU is busy until 2 s; the link is idle
    assert clock.idle_tokens(0.5, clock.gpu_free) == 1500  # 1.5 s at 1,000 tokens/s
    clock.book(0.5, 1500)  # a queued request's 1,500 host tokens go over before its turn
    assert clock.idle_tokens(1.0, clock.gpu_free) == 0
    # its turn at 2 s then has nothing left to load: only its 100 uncached tokens
    assert clock.serve(1.0, 100) == pytest.approx(1.1)
    assert clock.idle_tokens(0.0, 10.0, remote=True) == int((10.0 - 0.1) * 500)
    assert clock.report(2.1)["utilisation"]["host_link_prefetch"] == pytest.approx(1.5 / 2.1)


@pytest.mark.parametrize(
    "field, value",
    [("prefill_tokens_per_s", 0), ("h2d_gbps", -1.0), ("time_scale", float("nan"))],
)
def test_cost_model_refuses_bad_values(field, value):
    with pytest.raises(ValueError, match=field.replace("_", "-")):
        CostModel(**{field: value})


def test_timed_cli_reports_ttft_and_a_cache_shortens_it(tmp_path, capsys):
    trace = write_trace(tmp_path / "t.jsonl", n=120)
    runs = {}
    for name, frac in (("tiny", "0.01"), ("roomy", "1.0")):
        out = tmp_path / f"{name}.json"
        argv = ["trace", "--trace", str(trace), "--device-frac", frac, "--host-frac", "0"]
        argv += ["--policy", "lru", "--timed", "--prefill-tokens-per-s", "100000"]
        assert main([*argv, "--json", str(out), "--quiet"]) == 0
        runs[name] = json.loads(out.read_text())["policies"]["lru"]
    assert "modelled TTFT" in capsys.readouterr().out
    tiny, roomy = runs["tiny"], runs["roomy"]
    assert roomy["token_hit_rate"] > tiny["token_hit_rate"]
    assert roomy["timed"]["ttft_ms"]["mean"] < tiny["timed"]["ttft_ms"]["mean"]
    assert set(roomy["timed"]["ttft_ms"]) == {"mean", "p50", "p90", "p99"}


def test_prefetch_moves_queued_requests_host_hits_ahead_and_shortens_ttft(tmp_path, capsys):
    """A busy GPU (requests queue) and a small device tier over a host tier: the prefetcher
    loads queued requests' host hits in the link's idle time, every page it moves is read."""
    trace = write_trace(tmp_path / "t.jsonl", n=150, seed=3)
    out = tmp_path / "p.json"
    argv = ["trace", "--trace", str(trace), "--device-frac", "0.05", "--host-frac", "1.0"]
    argv += ["--policy", "lru", "--timed", "--prefetch", "--prefill-tokens-per-s", "20000"]
    argv += ["--h2d-gbps", "0.5", "--kv-bytes-per-token", "100000", "--check-every", "10"]
    assert main([*argv, "--json", str(out), "--quiet"]) == 0
    runs = json.loads(out.read_text())["policies"]
    off, on = runs["lru"], runs["lru +prefetch"]
    assert "prefetch" not in off
    p = on["prefetch"]
    assert p["moved_pages"] > 0 and p["precision"] == 1.0 and p["wasted_bytes"] == 0
    assert 0 < p["coverage"] <= 1
    assert on["hit_rate_by_tier"]["device"] > off["hit_rate_by_tier"]["device"]
    assert on["timed"]["ttft_ms"]["mean"] < off["timed"]["ttft_ms"]["mean"]
    assert on["timed"]["utilisation"]["host_link_prefetch"] > 0
    assert "precision" in capsys.readouterr().out


def test_prefetch_needs_the_timed_replay(tmp_path):
    trace = write_trace(tmp_path / "t.jsonl", n=10)
    with pytest.raises(SystemExit):
        main(["trace", "--trace", str(trace), "--prefetch", "--quiet"])


def test_measured_remote_timing_charges_the_store_time_in_place_of_the_latency_flag():
    measured = ServingClock(CostModel(**{**COST.__dict__, "remote_measured": True}))
    # 500 remote tokens that the real store read in 0.3 s: 0.3 s + 1 s of bytes, not 0.1 + 1
    assert measured.read_remote(0.0, 500, 0.3) == pytest.approx(1.3)
    measured.book(5.0, 500, remote=True, measured_s=0.2)
    assert measured.remote_free == pytest.approx(6.2)
    assert measured.report(10.0)["store_reads_measured"] == {"reads": 2, "mean_ms": 250.0}
    modelled = ServingClock(COST)  # the flag's latency, whatever the store took
    assert modelled.read_remote(0.0, 500, 0.3) == pytest.approx(1.1)
    assert modelled.report(10.0)["store_reads_measured"]["reads"] == 0


def test_timed_cli_measures_the_real_stores_reads(tmp_path):
    """A remote tier over the real file store: with --remote-timing measured, each remote read's
    fixed cost is the store's time for it (here far above the zero latency flag), so the
    modelled TTFT of the same replay is longer than with the flag."""
    trace = write_trace(tmp_path / "t.jsonl", n=150, seed=4)
    runs = {}
    for timing in ("model", "measured"):
        out = tmp_path / f"{timing}.json"
        argv = ["trace", "--trace", str(trace), "--device-frac", "0.02", "--host-frac", "0.02"]
        argv += ["--remote-frac", "1.0", "--policy", "lru", "--timed", "--no-bound"]
        argv += ["--remote-latency-ms", "0", "--remote-timing", timing]
        assert main([*argv, "--json", str(out), "--quiet"]) == 0
        runs[timing] = json.loads(out.read_text())["policies"]["lru"]
    model, measured = runs["model"], runs["measured"]
    assert model["hit_rate_by_tier"]["remote"] > 0
    reads = measured["timed"]["store_reads_measured"]
    assert reads["reads"] > 0 and reads["mean_ms"] > 0
    assert model["timed"]["store_reads_measured"]["reads"] == 0
    assert (
        measured["timed"]["utilisation"]["remote_link"]
        > model["timed"]["utilisation"]["remote_link"]
    )
