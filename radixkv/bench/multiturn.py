"""The multi-turn benchmark: clients hold conversations with any OpenAI-compatible server.

Every client shares one system prompt; each round appends the previous answer and a new question
and resends the whole conversation, the traffic where a prefix cache pays. A client's next round
becomes ready when its previous answer is complete; ready requests are sent at a fixed or Poisson
rate (or at once), at most `max_concurrency` in flight. Everything is measured from the client:
TTFT (request sent -> first content token), inter-token latency, end-to-end latency, throughput,
and the cached-token ratio the server reports in `usage.prompt_tokens_details.cached_tokens`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time

from radixkv.bench.multiturn_spec import MultiturnSpec, RequestRecord
from radixkv.bench.report import summarize

# Common short English words: each is about one token for BPE vocabularies, so N words is close
# to N prompt tokens on any model (the report uses the server's own token counts).
_WORDS = [
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "foot",
    "boy",
    "age",
    "policy",
    "process",
    "music",
    "market",
    "sense",
    "nation",
    "plan",
    "college",
    "interest",
    "death",
    "experience",
    "effect",
    "class",
    "control",
    "care",
    "field",
    "development",
    "role",
    "effort",
    "rate",
    "heart",
    "drug",
    "show",
    "leader",
    "light",
    "voice",
    "wife",
    "police",
    "mind",
    "price",
    "report",
    "decision",
    "son",
    "view",
    "relationship",
    "town",
    "road",
    "arm",
    "difference",
    "value",
    "building",
    "action",
    "model",
    "season",
    "society",
    "tax",
    "director",
    "position",
    "player",
    "record",
    "paper",
    "space",
    "ground",
    "form",
    "event",
    "official",
    "matter",
    "center",
    "couple",
    "site",
    "project",
    "activity",
    "star",
    "table",
    "need",
    "court",
    "oil",
    "situation",
    "cost",
    "industry",
    "figure",
    "street",
    "image",
    "phone",
    "data",
    "picture",
    "practice",
    "piece",
    "land",
    "product",
    "doctor",
    "wall",
    "patient",
    "worker",
    "news",
    "test",
    "movie",
    "north",
    "love",
]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


# the conversation's key, sent with each of its requests: a gateway's sticky routing reads
# it (SMG's consistent_hashing), and radixkv takes it as the request's session
ROUTING_KEY_HEADER = "X-SMG-Routing-Key"


async def _one_request(client, model: str, messages: list[dict], spec: MultiturnSpec, rec):
    """Send one streaming chat request; fills `rec`; returns the answer text."""
    extra = {"ignore_eos": True} if spec.ignore_eos else None
    t0 = time.perf_counter()
    last = None
    parts: list[str] = []
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages,
        max_tokens=spec.output_tokens,
        temperature=spec.temperature,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
        extra_headers={ROUTING_KEY_HEADER: f"conversation-{rec.client}"},
    )
    rec.worker = raw.headers.get("x-smg-routed-worker-id")
    stream = raw.parse()  # the legacy raw response parses synchronously
    async for chunk in stream:
        now = time.perf_counter()
        for choice in chunk.choices:
            text = choice.delta.content if choice.delta else None
            if text:
                parts.append(text)
                if last is None:
                    rec.ttft_s = now - t0
                else:
                    rec.itl_s.append(now - last)
                last = now
        if chunk.usage is not None:
            u = chunk.usage
            rec.prompt_tokens, rec.completion_tokens = u.prompt_tokens, u.completion_tokens
            details = getattr(u, "prompt_tokens_details", None)
            rec.cached_tokens = getattr(details, "cached_tokens", None) if details else None
            tiers = (getattr(details, "model_extra", None) or {}).get("cached_tokens_by_tier")
            rec.cached_by_tier = tiers if isinstance(tiers, dict) else None
    rec.e2e_s = time.perf_counter() - t0
    rec.ok = True
    return "".join(parts)


async def run_multiturn(
    base_url: str,
    spec: MultiturnSpec,
    *,
    model: str | None = None,
    api_key: str = "none",
    progress: bool = True,
    timeout_s: float = 3600.0,
) -> dict:
    """Run the benchmark against `base_url` (…/v1); returns the report (see `summarize`)."""
    import openai
    from tqdm import tqdm

    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s
    )
    if model is None:
        model = (await client.models.list()).data[0].id
    rng = random.Random(spec.seed)
    system = _words(rng, spec.system_tokens)
    conversations = [
        [{"role": "system", "content": system}] if spec.system_tokens else []
        for _ in range(spec.clients)
    ]
    questions = [
        [_words(rng, spec.question_tokens) for _ in range(spec.rounds)] for _ in range(spec.clients)
    ]
    records: list[RequestRecord] = []
    ready: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for c in range(spec.clients):
        ready.put_nowait((c, 0))
    slots = asyncio.Semaphore(spec.max_concurrency or spec.clients)
    total = spec.clients * spec.rounds
    bar = tqdm(total=total, desc="multiturn requests", unit="req", disable=not progress)
    finished = asyncio.Event()
    done_count = 0
    tasks: set[asyncio.Task] = set()

    async def converse(c: int, r: int) -> None:
        nonlocal done_count
        rec = RequestRecord(client=c, round=r, sent_s=time.perf_counter() - t_start)
        records.append(rec)
        conversations[c].append({"role": "user", "content": questions[c][r]})
        try:
            answer = await _one_request(client, model, conversations[c], spec, rec)
        except Exception as err:  # a failed request is reported, the run goes on
            rec.error = f"{type(err).__name__}: {err}"
            answer = ""
        finally:
            slots.release()
        conversations[c].append({"role": "assistant", "content": answer})
        bar.update(1)
        done_count += 1
        if r + 1 < spec.rounds:
            ready.put_nowait((c, r + 1))
        if done_count == total:
            finished.set()

    gap_rng = random.Random(spec.seed + 1)
    t_start = time.perf_counter()

    async def dispatch() -> None:
        for _ in range(total):
            c, r = await ready.get()
            await slots.acquire()
            task = asyncio.create_task(converse(c, r))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if math.isfinite(spec.rate):
                gap = gap_rng.expovariate(spec.rate) if spec.arrival == "poisson" else 1 / spec.rate
                await asyncio.sleep(gap)

    await asyncio.gather(dispatch(), finished.wait())
    duration = time.perf_counter() - t_start
    bar.close()
    await client.close()
    return summarize(records, spec, duration, model=model, base_url=base_url)
