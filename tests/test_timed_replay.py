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
    assert clock.serve(0.0, 2000, [0, 0, 0]) == pytest.approx(2.0)
    # arrives at 1 s while the GPU is busy until 2 s: queues 1 s, then 0.5 s of compute
    assert clock.serve(1.0, 1000, [500, 0, 0]) == pytest.approx(1.5)
    # at 10 s, idle: 1,000 host tokens load in 1 s while 500 tokens compute in 0.5 s
    assert clock.serve(10.0, 1500, [0, 1000, 0]) == pytest.approx(1.0)
    # at 20 s: 500 remote tokens: 0.1 s latency + 1 s remote link + 0.5 s over the host link
    assert clock.serve(20.0, 500, [0, 0, 500]) == pytest.approx(1.6)
    report = clock.report(duration_s=20.0)
    assert report["ttft_ms"]["p50"] == pytest.approx(1600)  # nearest rank of 1, 1.5, 1.6, 2 s
    assert report["queued_ms_mean"] == pytest.approx(1000 / 4)
    assert report["utilisation"]["gpu"] == pytest.approx((2 + 0.5 + 0.5) / 21.6)


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
