"""Two radixkv servers sharing a real Redis tier behind the real SMG gateway (`pip install smg`):
SMG identifies them with no warning, pins a conversation by its routing key, routes cache-aware,
and every later turn of a conversation finds its earlier prompt cached, from the routed engine's
own tiers or from the shared tier, also after the engine that held it is killed."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

from radixkv.bench.fleet import Fleet, Gateway, redis_binary, smg_binary  # noqa: E402

PAGE = 16
SYSTEM = (
    "You are the archivist of a small mountain library. You answer questions about its "
    "collection of maps, letters and diaries in one short sentence, and you always name the "
    "shelf where the item is kept."
)
QUESTIONS = [
    ["Which maps show the old pass?", "Who drew the oldest one?", "Is it on display?"],
    ["Do you keep letters from the miners?", "How many are there?", "Who wrote most of them?"],
    ["Are there diaries from the winter of 1907?", "Whose were they?", "Can I read them?"],
    ["What is the rarest item here?", "How did it arrive?", "Where is it stored?"],
]
SERVE = ["--kv-memory-gb", "0.1", "--host-memory-gb", "0.1", "--max-running", "8"]

pytestmark = pytest.mark.skipif(
    smg_binary() is None or redis_binary() is None,
    reason="needs the SMG gateway (pip install smg) and redis-server",
)


class Conversation:
    def __init__(self, key: str, questions: list[str]) -> None:
        self.key, self.questions = key, questions
        self.messages = [{"role": "system", "content": SYSTEM}]
        self.last_prompt = 0  # the previous turn's prompt tokens

    def turn(self, client, t: int) -> tuple[str, int, int, dict]:
        """One turn through the gateway: (routed worker, prompt tokens, cached, by tier)."""
        self.messages.append({"role": "user", "content": self.questions[t]})
        raw = client.chat.completions.with_raw_response.create(
            model="SmolLM2-135M-Instruct",
            messages=self.messages,
            max_tokens=8,
            temperature=0,
            extra_headers={"X-SMG-Routing-Key": self.key},
        )
        reply = raw.parse()
        self.messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        details = reply.usage.prompt_tokens_details
        by_tier = (details.model_extra or {}).get("cached_tokens_by_tier", {})
        return (
            raw.headers["x-smg-routed-worker-id"],
            reply.usage.prompt_tokens,
            details.cached_tokens,
            by_tier,
        )


def check_turn(conv: Conversation, prompt: int, cached: int) -> None:
    floor = conv.last_prompt // PAGE * PAGE
    assert cached >= floor, f"{conv.key}: {cached} cached tokens, its last prompt had {floor}"
    conv.last_prompt = prompt


def test_two_engines_behind_smg_share_one_redis_tier(tmp_path):
    with Fleet(tmp_path, 2, "consistent_hashing", SERVE, shared_tier=True) as fleet:
        gw = fleet.gateway
        assert gw.discovery_warnings() == []
        workers = gw.workers()
        assert {w["runtime_type"] for w in workers} == {"sglang"}
        assert {w["labels"]["served_model_name"] for w in workers} == {"SmolLM2-135M-Instruct"}

        # consistent hashing: a conversation's turns all go where its routing key points
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
        pinned = Conversation("pinned-0", QUESTIONS[0])
        seen = set()
        for t in range(3):
            worker, prompt, cached, by_tier = pinned.turn(client, t)
            seen.add(worker)
            check_turn(pinned, prompt, cached)
            assert by_tier.get("remote", 0) == 0 or t == 0  # its own engine held it
        assert len(seen) == 1

        # cache-aware routing in front of the same engines, then one of them killed
        gw.stop()
        urls = [s.url for s in fleet.servers]
        fleet.gateway = gw = Gateway(urls, "cache_aware", tmp_path / "smg-cache-aware.log")
        gw.wait_until(set(urls))
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
        convs = [Conversation(f"conv-{i}", q) for i, q in enumerate(QUESTIONS)]
        served: dict[str, list[str]] = {}
        for t in range(2):
            for conv in convs:
                worker, prompt, cached, _ = conv.turn(client, t)
                served.setdefault(worker, []).append(conv.key)
                check_turn(conv, prompt, cached)
        victim = max(served, key=lambda u: len(served[u]))
        moved = set(served[victim])  # conversations whose engine is about to die
        next(s for s in fleet.servers if s.url == victim).kill()
        gw.wait_until(set(urls) - {victim}, timeout_s=30)

        remote_hits = 0
        for conv in convs:  # the last turn: 0 failures, every prompt's history still cached
            worker, prompt, cached, by_tier = conv.turn(client, 2)
            assert worker != victim
            check_turn(conv, prompt, cached)
            if conv.key in moved:
                remote_hits += by_tier.get("remote", 0)
        assert remote_hits > 0  # what moved came back from the shared Redis tier
        assert gw.discovery_warnings() == []


def test_smg_prefill_decode_mode_drives_a_prefill_and_a_decode_engine(tmp_path):
    """SMG's --pd-disaggregation sends each request to the prefill and the decode engine at
    once (with its bootstrap fields, which radixkv ignores); the decode engine takes the
    prompt's pages from the shared tier, and its answer is what the client gets."""
    with Fleet(tmp_path, 2, "round_robin", SERVE, shared_tier=True, prefill=1) as fleet:
        gw = fleet.gateway
        assert gw.discovery_warnings() == []
        assert not [line for line in gw.log().splitlines() if "Bootstrap port" in line]
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
        conv = Conversation("pd", QUESTIONS[1])
        for t in range(3):
            _worker, prompt, cached, by_tier = conv.turn(client, t)
            aligned = (prompt - 1) // PAGE * PAGE
            # every full page of the prompt came from the prefill engine or D's own cache
            assert cached == aligned, (t, cached, aligned)
            if t == 0:
                assert by_tier["remote"] == aligned, by_tier  # the handoff itself
        decode = fleet.servers[1].url
        import httpx

        sched = httpx.get(decode + "/cache/stats", timeout=30).json()["scheduler"]
        assert sched["role"] == "decode" and sched["handoffs"]["timed_out"] == 0
        assert sched["handoffs"]["completed"] == 3
