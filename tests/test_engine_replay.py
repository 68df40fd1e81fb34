"""The cache simulator agrees with the engine: a trace replayed one request at a time through a
real Engine (tiny model, CPU) and through the simulator at the same capacities, policy and page
size gives the same token hit rate, with device, host and remote tiers all in play."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

from radixkv.bench.__main__ import main as bench_main  # noqa: E402
from radixkv.bench.engine_replay import (  # noqa: E402
    BlockTokens,
    EngineReplaySpec,
    busy_seconds,
    engine_replay,
    hit_differences,
    simulate,
)
from radixkv.bench.engine_replay_command import calibrated  # noqa: E402
from radixkv.bench.timed import CostModel  # noqa: E402
from radixkv.bench.trace_replay import ReplaySpec  # noqa: E402
from radixkv.bench.tracefile import BLOCK, TraceRequest  # noqa: E402
from tests.tiny_model import PAGE_BYTES, save_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# a made-up GPU's measured figures (radixkv.bench.floors.measure_floors' keys)
GPU = {"hbm_gbps": 3000.0, "matmul_tflops": 800.0, "h2d_pinned_gbps": 50.0}


def conversations(n: int, seed: int = 0) -> list[TraceRequest]:
    """Multi-turn traffic in the trace's shape: sessions sharing a system block, each turn
    resending the session's blocks and adding one or two, interleaved at random."""
    rng = random.Random(seed)
    next_id, sessions, out = 1, [], []
    for t in range(n):
        if not sessions or rng.random() < 0.3:
            sessions.append([0])  # block 0: the shared system prompt
        blocks = rng.choice(sessions)
        for _ in range(rng.choice((1, 2))):
            blocks.append(next_id)
            next_id += 1
        if len(blocks) >= 5:  # a long session ends; a new one starts next time
            sessions.remove(blocks)
        length = (len(blocks) - 1) * BLOCK + rng.randrange(100, BLOCK + 1)
        out.append(TraceRequest(t * 100, length, 4, tuple(blocks)))
    return out


def test_block_tokens_are_equal_for_equal_ids_and_cut_to_length():
    tokens = BlockTokens(vocab=101)
    a = tokens.prompt(TraceRequest(0, BLOCK + 10, 1, (7, 8)))
    b = tokens.prompt(TraceRequest(0, 2 * BLOCK, 1, (7, 9)))
    assert len(a) == BLOCK + 10 and a[:BLOCK] == b[:BLOCK] and a[BLOCK:] != b[BLOCK : BLOCK + 10]
    assert all(0 < t < 101 for t in a + b)


def _both(tmp_path, spec: ReplaySpec, **engine_options) -> tuple[dict, dict]:
    save_tiny_llama(tmp_path, max_positions=4096)
    requests = conversations(40)
    engine = engine_replay(
        requests,
        spec,
        EngineReplaySpec(mode="sequential", max_output=1),
        page_bytes=PAGE_BYTES,
        progress=False,
        model=str(tmp_path),
        device="cpu",
        remote_load_margin=0.0,  # the simulator always loads a remote hit
        check_integrity=True,
        floors=GPU,
        **engine_options,
    )
    assert engine["failed"] == 0 and engine["requests"] == 40
    parts = engine["floor_parts_s"]  # the run's work priced at GPU's figures
    assert engine["floor_s"] == pytest.approx(sum(parts.values())) and parts["prefill"] > 0
    loaded = engine["hit_rate_by_tier"]["host"] + engine["hit_rate_by_tier"]["remote"]
    assert (parts["loads"] > 0) == (loaded > 0)
    assert engine["ratio_to_floor"] == pytest.approx(engine["seconds"] / engine["floor_s"])
    loaded_rate = engine["hit_rate_by_tier"]["host"] + engine["hit_rate_by_tier"]["remote"]
    rows = engine["per_request"]  # each request's figures, in submission (= trace) order
    assert rows["prompt"] == [r.input_length for r in requests]
    cached, loaded = sum(rows["cached"]), sum(rows["loaded"])
    assert cached / sum(rows["prompt"]) == pytest.approx(engine["token_hit_rate"])
    assert loaded / sum(rows["prompt"]) == pytest.approx(loaded_rate) and loaded <= cached
    assert all(t > 0 for t in rows["ttft_s"]) and rows["arrival_s"] == sorted(rows["arrival_s"])
    assert all(
        a + t <= f
        for a, t, f in zip(rows["arrival_s"], rows["ttft_s"], rows["finish_s"], strict=True)
    )
    assert 0 < engine["busy_s"] <= engine["seconds"]
    moved = engine["cache_counters"]["pages_moved"]  # the engine's own cache counters
    assert (moved["device_to_host"] > 0) == (spec.host_pages > 0)
    # the timed model at the engine's measured speed charges the requests' prefills exactly
    # the time the engine had work (the floor's FLOPs at `prefill_efficiency` of the peak)
    model = calibrated(CostModel(), engine, GPU)
    charged = sum(
        model.prefill_s(p, p - c) for p, c in zip(rows["prompt"], rows["cached"], strict=True)
    )
    assert charged == pytest.approx(engine["busy_s"], rel=1e-9)
    return engine, simulate(requests, spec)


def test_hit_differences_name_the_requests_and_the_tokens_either_way():
    d = hit_differences([0, 512, 1024, 64], [0, 0, 1536, 64], show=1)
    assert d == {
        "requests": 2,
        "engine_more_tokens": 512,
        "engine_fewer_tokens": 512,
        "first": [[1, 512, 0]],
    }
    with pytest.raises(ValueError, match="3 engine requests against 2"):
        hit_differences([0, 0, 0], [0, 0])


def test_busy_time_is_the_union_of_the_requests_spans():
    done = [(SimpleNamespace(arrival=a), end) for a, end in ((0, 2), (1, 3), (5, 6), (5.5, 5.8))]
    assert busy_seconds(done) == pytest.approx(3 + 1)
    assert busy_seconds([]) == 0


@pytest.mark.parametrize(
    "policy, host", [("lru", 0), ("adaptive", 0), ("lru", 480), ("adaptive", 480)]
)
def test_engine_and_simulator_hit_rates_agree_on_device_and_host(tmp_path, policy, host):
    engine, sim = _both(tmp_path, ReplaySpec(16, 240, host, 0, policy))
    assert abs(engine["token_hit_rate"] - sim["token_hit_rate"]) <= 0.01, (engine, sim)
    for tier in ("device", "host"):
        assert abs(engine["hit_rate_by_tier"][tier] - sim["hit_rate_by_tier"][tier]) <= 0.01
    assert host == 0 or sim["hit_rate_by_tier"]["host"] > 0  # the host tier was in play


def test_the_simulator_caches_a_prompt_in_the_engines_prefill_chunks(tmp_path):
    """The engine hands a prompt's pages to the tree after every prefill chunk, so a long prompt
    is a chain of nodes whose tail leaves a tier before its head; the simulator given the same
    chunk (`prefill_chunk`) keeps the same tokens by tier."""
    spec = ReplaySpec(16, 240, 480, 20000, "lru", prefill_chunk=256)
    engine, sim = _both(tmp_path, spec, max_batch_tokens=256)
    for tier in ("device", "host", "remote"):
        assert abs(engine["hit_rate_by_tier"][tier] - sim["hit_rate_by_tier"][tier]) <= 0.01
    # request by request (the replay's table names how many differ)
    differ = hit_differences(engine["per_request"]["cached"], sim["per_request"])
    assert differ["requests"] == 0, differ
    assert sim["hit_rate_by_tier"]["host"] > 0 and sim["hit_rate_by_tier"]["remote"] > 0
    with pytest.raises(ValueError, match="max_batch_tokens"):
        _both(tmp_path, spec, max_batch_tokens=512)


def test_engine_and_simulator_hit_rates_agree_with_a_remote_tier(tmp_path):
    """The store is slower than the tiny model: in sequential mode the replay lets each
    request's writes finish before the next, as the simulator's inline calls do; a page a
    request's queued-time promotion brought up from host counts as a host hit."""
    engine, sim = _both(tmp_path, ReplaySpec(16, 240, 480, 20000, "lru"))
    assert abs(engine["token_hit_rate"] - sim["token_hit_rate"]) <= 0.01, (engine, sim)
    for tier in ("device", "host", "remote"):
        assert abs(engine["hit_rate_by_tier"][tier] - sim["hit_rate_by_tier"][tier]) <= 0.01
    assert sim["hit_rate_by_tier"]["host"] > 0 and sim["hit_rate_by_tier"]["remote"] > 0


def test_a_deadline_stops_submission_and_the_figures_cover_what_was_sent(tmp_path):
    """`--deadline-s`: a timed replay whose arrivals span 4 s, cut at 1 s, submits only what was
    due by then, finishes all of it, and prices the floor over those requests' span."""
    save_tiny_llama(tmp_path, max_positions=4096)
    requests = conversations(40)  # one every 100 ms
    out = engine_replay(
        requests,
        ReplaySpec(16, 240, 0, 0, "lru"),
        EngineReplaySpec(mode="timed", max_output=2, deadline_s=1.0),
        page_bytes=PAGE_BYTES,
        progress=False,
        model=str(tmp_path),
        device="cpu",
        floors=GPU,
    )
    sent = out["submitted"]
    assert 1 <= sent < 40 and out["requests"] == sent and out["failed"] == 0
    # the floor is at least the submitted requests' span, not the whole trace's 3.9 s
    assert (sent - 1) * 0.1 <= out["floor_s"] < 3.9
    with pytest.raises(ValueError, match="deadline"):
        EngineReplaySpec(deadline_s=0)


def test_the_trace_command_replays_through_the_engine_and_writes_its_table(tmp_path, capsys):
    """`python -m radixkv.bench trace --engine` end to end on the CPU: two configurations, the
    table with the simulator beside the engine, and the JSON the GPU runs are read from."""
    model, trace, out = tmp_path / "model", tmp_path / "t.jsonl", tmp_path / "r.json"
    save_tiny_llama(model, max_positions=4096)
    trace.write_text(
        "".join(
            json.dumps(
                {
                    "timestamp": r.timestamp_ms,
                    "input_length": r.input_length,
                    "output_length": r.output_length,
                    "hash_ids": list(r.hash_ids),
                }
            )
            + "\n"
            for r in conversations(12)
        )
    )
    args = ["trace", "--engine", "--model", str(model), "--device", "cpu", "--trace", str(trace)]
    args += ["--mode", "sequential", "--device-frac", "0.5", "--host-frac", "0.5"]
    args += ["--max-output", "2", "--configs", "device,device+host", "--json", str(out)]
    assert bench_main([*args, "--quiet", "--remote-load-margin", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("engine/simulator by tier") >= 2 and "device+host" in printed
    rows = json.loads(out.read_text())["configurations"]
    assert set(rows) == {"device", "device+host"}
    for row in rows.values():
        engine, sim = row["engine"], row["simulator"]
        assert engine["failed"] == 0 and engine["requests"] == len(sim["per_request"])
        assert row["differences"]["requests"] == 0, row["differences"]
        assert engine["token_hit_rate"] == pytest.approx(sim["token_hit_rate"])
    assert rows["device+host"]["tokens"]["host"] > 0 == rows["device"]["tokens"]["host"]
    # one table from runs of one configuration each (benchmarks/replay_table.py)
    whole = json.loads(out.read_text())
    assert whole["command"].startswith("python -m radixkv.bench trace --engine")
    assert whole["run"]["mode"] == "sequential"
    parts = []
    for name in rows:
        part = tmp_path / f"{name}.json"
        part.write_text(json.dumps(whole | {"configurations": {name: rows[name]}}))
        parts.append(str(part))
    table = [sys.executable, str(ROOT / "benchmarks" / "replay_table.py")]
    merged = subprocess.run([*table, *parts, "--markdown"], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert (
        merged.stdout.count("engine/simulator by tier") == 2 and "| device+host |" in merged.stdout
    )
    twice = subprocess.run([*table, parts[0], parts[0]], capture_output=True, text=True)
    assert twice.returncode == 2 and "in an earlier file too" in twice.stderr
