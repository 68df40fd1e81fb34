"""The multi-turn harness against live servers: an in-process one (the report's numbers are
checked against what the server saw) and one it starts itself with `python -m radixkv.serve`."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import cpu_engine

pytest.importorskip("openai")

from radixkv.bench.__main__ import main as bench_main  # noqa: E402
from radixkv.bench.multiturn import MultiturnSpec, run_multiturn  # noqa: E402
from radixkv.bench.report import percentile  # noqa: E402
from tests.live_server import live_server  # noqa: E402


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.sampled_from([0, 50, 90, 99, 100])
)
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-9, abs=1e-6)


def test_spec_rejects_bad_values():
    for bad in ({"clients": 0}, {"rate": 0.0}, {"arrival": "burst"}, {"max_concurrency": 0}):
        with pytest.raises(ValueError):
            MultiturnSpec(**bad)


def test_harness_reports_growing_cache_hits_per_round(tmp_path):
    spec = MultiturnSpec(
        clients=3,
        rounds=3,
        system_tokens=120,
        question_tokens=12,
        output_tokens=6,
        rate=20.0,
        arrival="poisson",
        max_concurrency=2,
    )
    with (
        cpu_engine(kv_memory_gb=0.25) as eng,
        live_server(eng) as (url, _loop),
    ):
        report = asyncio.run(run_multiturn(url + "/v1", spec, progress=False))
        assert (
            bench_main(
                [
                    "multiturn",
                    "--url",
                    url,
                    "--clients",
                    "1",
                    "--rounds",
                    "2",
                    "--system-tokens",
                    "40",
                    "--question-tokens",
                    "8",
                    "--output-tokens",
                    "4",
                    "--json",
                    str(tmp_path / "r.json"),
                    "--plot",
                    str(tmp_path / "plots"),
                    "--quiet",
                ]
            )
            == 0
        )
    o = report["overall"]
    assert o["requests"] == 9 and o["failed"] == 0
    assert o["completion_tokens"] == 9 * 6  # ignore_eos: every answer is full length
    rounds = report["by_round"]
    assert rounds[0]["cached_ratio"] < 1.0
    # later rounds resend the whole conversation: most of it is cached
    assert rounds[1]["cached_ratio"] > 0.5 and rounds[2]["cached_ratio"] > 0.5
    assert all(r["ttft_s"] is not None and r["ttft_s"] <= r["e2e_s"] for r in report["records"])
    assert len({(r["client"], r["round"]) for r in report["records"]}) == 9
    sent = {(r["client"], r["round"]): r["sent_s"] for r in report["records"]}
    # a client's next round is sent after its previous answer is complete
    assert all(
        sent[c, k] + rec["e2e_s"] <= sent[c, k + 1] + 1e-6
        for rec in report["records"]
        for c, k in [(rec["client"], rec["round"])]
        if (c, k + 1) in sent
    )
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["overall"]["requests"] == 2
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "hit_ratio_by_round.png",
        "ttft_by_round.png",
        "ttft_cdf.png",
    ]


def test_harness_starts_its_own_server(tmp_path, capsys):
    code = bench_main(
        [
            "multiturn",
            "--clients",
            "2",
            "--rounds",
            "2",
            "--system-tokens",
            "40",
            "--question-tokens",
            "8",
            "--output-tokens",
            "4",
            "--quiet",
            "--json",
            str(tmp_path / "r.json"),
            "--serve-args",
            "--kv-memory-gb 0.25 --host-memory-gb 0.25",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["overall"]["failed"] == 0 and report["overall"]["requests"] == 4
    assert report["by_round"]["1"]["cached_ratio"] > 0.5
    assert "all" in capsys.readouterr().out
