"""The trace replay harness: exact against its own analytic ceiling, all tiers, CLI and errors."""

from __future__ import annotations

import json
import random

import pytest

from engine.config import EngineConfig
from radixkv.bench.__main__ import main
from radixkv.bench.trace_replay import ReplaySpec, capacities, replay
from radixkv.bench.tracefile import (
    BLOCK,
    NextUseOracle,
    TraceRequest,
    ceiling_hit_tokens,
    load_trace,
    sample_conversations,
    unique_tokens,
)


def write_trace(path, n=80, seed=0):
    """Conversations over a few shared system prompts: each turn resends the previous turns."""
    rng = random.Random(seed)
    next_id = 0
    systems = [[i] for i in range(3)]
    next_id = 3
    convs: list[list[int]] = []
    lines = []
    for t in range(n):
        live = [c for c in convs if len(c) < 8]  # conversations of at most ~8 blocks
        if live and rng.random() < 0.6:
            ids = rng.choice(live)
        else:
            ids = list(rng.choice(systems))
            convs.append(ids)
        ids += list(range(next_id, next_id + rng.randint(1, 3)))
        next_id = ids[-1] + 1
        length = 512 * (len(ids) - 1) + rng.randint(1, 512)
        lines.append(
            json.dumps(
                {
                    "timestamp": t * 10,
                    "input_length": length,
                    "output_length": 10,
                    "hash_ids": list(ids),
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_unbounded_replay_hits_exactly_the_analytic_ceiling(tmp_path):
    reqs = load_trace(write_trace(tmp_path / "t.jsonl"))
    total = sum(r.input_length for r in reqs)
    pages = unique_tokens(reqs) // 16 + 4096
    result = replay(reqs, ReplaySpec(16, pages, 0, 0, "workload"), progress=False, check_every=1)
    assert result["token_hit_rate"] == pytest.approx(ceiling_hit_tokens(reqs, 16) / total, abs=0)
    assert result["evictions"]["device"] == 0


@pytest.mark.parametrize("policy", ["lru", "lfu", "slru", "workload", "adaptive"])
def test_small_tiers_stay_consistent_and_below_the_ceiling(tmp_path, policy):
    reqs = load_trace(write_trace(tmp_path / "t.jsonl", seed=1))
    total = sum(r.input_length for r in reqs)
    dev, host, _ = capacities(unique_tokens(reqs), 16, 0.2, 0.4, 0)
    result = replay(reqs, ReplaySpec(16, dev, host, 0, policy), progress=False, check_every=1)
    assert result["requests_too_long_for_device"] == 0
    assert 0 < result["token_hit_rate"] <= ceiling_hit_tokens(reqs, 16) / total
    assert result["evictions"]["device"] > 0 and result["hit_rate_by_tier"]["host"] > 0
    bound = replay(
        reqs,
        ReplaySpec(16, dev, host, 0, "lru"),
        oracle=NextUseOracle(reqs),
        progress=False,
        check_every=1,
    )
    assert bound["token_hit_rate"] <= ceiling_hit_tokens(reqs, 16) / total


def test_the_remote_tier_serves_what_the_small_tiers_dropped(tmp_path):
    reqs = load_trace(write_trace(tmp_path / "t.jsonl", seed=2))
    dev, host, remote = capacities(unique_tokens(reqs), 16, 0.2, 0.3, 2.0)
    result = replay(
        reqs, ReplaySpec(16, dev, host, remote, "workload"), progress=False, check_every=1
    )
    assert result["requests_too_long_for_device"] == 0
    assert result["hit_rate_by_tier"]["remote"] > 0
    assert (
        result["pages_moved"]["remote_to_host"] > 0 and result["pages_moved"]["host_to_remote"] > 0
    )


def test_cli_writes_the_promised_json(tmp_path, capsys):
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "trace",
                "--trace",
                str(trace),
                "--device-frac",
                "0.2",
                "--host-frac",
                "0.4",
                "--policy",
                "lru,workload",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    for key in (
        "token_hit_rate",
        "hit_rate_by_tier",
        "ceiling_token_hit_rate",
        "bound_token_hit_rate",
        "pages_moved",
        "evictions",
        "timings_us_per_request",
    ):
        assert key in r
    assert set(r["hit_rate_by_tier"]) == {"device", "host", "remote"}
    assert "never evicts" in capsys.readouterr().out
    # prompts are cached in the engine's own prefill chunks unless told otherwise
    assert r["prefill_chunk"] == EngineConfig().max_batch_tokens
    base = ["trace", "--trace", str(trace), "--json", str(out), "--quiet", "--no-bound"]
    assert main([*base, "--max-batch-tokens", "0"]) == 0
    assert json.loads(out.read_text())["prefill_chunk"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--page-size", "24"], "divide"),
        (["--device-frac", "0"], "device-frac"),
        (["--host-frac", "-1"], "host-frac"),
        (["--policy", "fifo"], "fifo"),
    ],
)
def test_cli_rejects_bad_options_clearly(tmp_path, capsys, args, message):
    trace = write_trace(tmp_path / "t.jsonl", n=5)
    with pytest.raises(SystemExit) as exc:
        main(["trace", "--trace", str(trace), "--quiet", *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_malformed_traces_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"timestamp": 0, "input_length": 600, "hash_ids": [1, 2]}\n{"input_length": 10}\n'
    )
    with pytest.raises(ValueError, match=":2:"):
        load_trace(bad)
    bad.write_text('{"timestamp": 0, "input_length": 2000, "hash_ids": [1]}\n')
    with pytest.raises(ValueError, match="do not cover"):
        load_trace(bad)


def test_sampled_conversations_keep_whole_conversations_and_their_reuse():
    # 60 conversations behind one shared system block (id 0): turns resend the conversation's
    # blocks and add one; sampling 1 in 4 keeps every turn of the conversations it keeps
    reqs, convs = [], {}
    for t in range(600):
        c = t % 60
        convs.setdefault(c, [0, 1000 + c])
        convs[c].append(10_000 + t)
        reqs.append(TraceRequest(t, len(convs[c]) * BLOCK, 1, tuple(convs[c])))
    kept = sample_conversations(reqs, 4)
    names = {r.hash_ids[1] for r in kept}
    assert 0 < len(names) < 60
    assert kept == [r for r in reqs if r.hash_ids[1] in names]  # whole conversations, in order
    assert sample_conversations(reqs, 1) is reqs
    with pytest.raises(ValueError, match="sample-conversations"):
        sample_conversations(reqs, 0)


def test_a_prompt_cached_in_chunks_is_written_to_remote_whole():
    """`prefill_chunk`: each chunk's node is written a tier down before the next chunk (as the
    engine's store writes while the next chunk computes), so none is shed: a prompt evicted from
    device and host by six others is found whole on remote, chunked or not."""
    first = TraceRequest(0, 2048, 1, (1, 2, 3, 4))
    others = [TraceRequest(0, 2048, 1, tuple(range(100 + 10 * i, 104 + 10 * i))) for i in range(6)]
    for chunk in (0, 512, 1024):
        r = replay(
            [first, *others, first],
            ReplaySpec(16, 128, 256, 10000, "lru", prefill_chunk=chunk),
            progress=False,
        )
        assert r["hits_per_request"][-1] == [0, 0, 2048], chunk
        assert r["pages_moved"]["host_to_remote"] == 7 * 128
    with pytest.raises(ValueError, match="prefill-chunk"):
        ReplaySpec(16, 128, 256, 0, "lru", prefill_chunk=-1)
