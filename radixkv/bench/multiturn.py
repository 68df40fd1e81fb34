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
from dataclasses import asdict, dataclass, field

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


@dataclass(frozen=True)
class MultiturnSpec:
    clients: int = 4
    rounds: int = 4
    system_tokens: int = 1000
    question_tokens: int = 64
    output_tokens: int = 32
    rate: float = math.inf  # ready requests per second; inf: send as soon as ready
    arrival: str = "poisson"  # or "fixed"
    max_concurrency: int | None = None  # None: one per client
    seed: int = 0
    ignore_eos: bool = True  # every answer has output_tokens tokens (vLLM/SGLang accept it too)
    temperature: float = 0.0

    def __post_init__(self) -> None:
        for name in ("clients", "rounds", "system_tokens", "question_tokens", "output_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "system_tokens" else 1):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {v!r}"
                )
        if not self.rate > 0:
            raise ValueError(f"--rate must be > 0 (inf for no pacing), got {self.rate!r}")
        if self.arrival not in ("poisson", "fixed"):
            raise ValueError(f"--arrival must be poisson or fixed, got {self.arrival!r}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be >= 1, got {self.max_concurrency!r}")


@dataclass
class RequestRecord:
    client: int
    round: int
    ok: bool = False
    error: str | None = None
    sent_s: float | None = None  # when it was sent, seconds from the start of the run
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


async def _one_request(client, model: str, messages: list[dict], spec: MultiturnSpec, rec):
    """Send one streaming chat request; fills `rec`; returns the answer text."""
    extra = {"ignore_eos": True} if spec.ignore_eos else None
    t0 = time.perf_counter()
    last = None
    parts: list[str] = []
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=spec.output_tokens,
        temperature=spec.temperature,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
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


def _latency(values: list[float]) -> dict:
    return {
        "mean": sum(values) / len(values) if values else None,
        **{f"p{q}": percentile(values, q) for q in (50, 90, 99)},
    }


def _group(records: list[RequestRecord], duration: float | None) -> dict:
    ok = [r for r in records if r.ok]
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    reported = [r for r in ok if r.cached_tokens is not None and r.prompt_tokens]
    out = {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "ttft_s": _latency([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_s": _latency([x for r in ok for x in r.itl_s]),
        "e2e_s": _latency([r.e2e_s for r in ok if r.e2e_s is not None]),
        "prompt_tokens": prompt,
        "completion_tokens": sum(r.completion_tokens or 0 for r in ok),
        "cached_tokens": sum(r.cached_tokens or 0 for r in reported),
        # None when the server does not report cached tokens
        "cached_ratio": (
            sum(r.cached_tokens for r in reported) / sum(r.prompt_tokens for r in reported)
            if reported
            else None
        ),
    }
    if duration:
        out["input_tokens_per_s"] = prompt / duration
        out["output_tokens_per_s"] = out["completion_tokens"] / duration
        out["requests_per_s"] = len(ok) / duration
    return out


def summarize(records: list[RequestRecord], spec: MultiturnSpec, duration: float, **meta) -> dict:
    rounds = sorted({r.round for r in records})
    return {
        **meta,
        "spec": asdict(spec),
        "duration_s": duration,
        "overall": _group(records, duration),
        "by_round": {r: _group([x for x in records if x.round == r], None) for r in rounds},
        "errors": sorted({r.error for r in records if r.error}),
        "records": [asdict(r) for r in records],
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:,.0f}"


def format_report(report: dict) -> str:
    """The per-round and overall table, as text."""
    lines = [
        f"{'round':>6}{'reqs':>6}{'fail':>6}{'TTFT p50':>10}{'p90':>8}{'p99':>8}{'ITL p50':>9}"
        f"{'p99':>7}{'E2E p50':>9}{'prompt':>9}{'cached':>8}"
    ]

    def row(name, g):
        ratio = "-" if g["cached_ratio"] is None else f"{g['cached_ratio']:.1%}"
        return (
            f"{name:>6}{g['requests']:>6}{g['failed']:>6}{_ms(g['ttft_s']['p50']):>10}"
            f"{_ms(g['ttft_s']['p90']):>8}{_ms(g['ttft_s']['p99']):>8}{_ms(g['itl_s']['p50']):>9}"
            f"{_ms(g['itl_s']['p99']):>7}{_ms(g['e2e_s']['p50']):>9}{g['prompt_tokens']:>9,}{ratio:>8}"
        )

    for r, g in report["by_round"].items():
        lines.append(row(str(int(r) + 1), g))
    o = report["overall"]
    lines.append(row("all", o))
    lines.append(
        f"latencies in ms. {report['duration_s']:.1f} s; input {o['input_tokens_per_s']:,.0f} tok/s, "
        f"output {o['output_tokens_per_s']:,.1f} tok/s, {o['requests_per_s']:.2f} req/s"
    )
    for e in report["errors"]:
        lines.append(f"error: {e}")
    return "\n".join(lines)


def plot_report(report: dict, out_dir) -> list:
    """PNGs: TTFT CDF, TTFT by round (p50 and p90), cached ratio by round. Returns the paths."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ttfts = sorted(r["ttft_s"] * 1000 for r in report["records"] if r["ttft_s"] is not None)
    rounds = [int(r) + 1 for r in report["by_round"]]
    groups = list(report["by_round"].values())
    paths = []

    def save(fig, name: str) -> None:
        paths.append(out / name)
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], drawstyle="steps-post")
    ax.set(xlabel="time to first token (ms)", ylabel="fraction of requests", title="TTFT CDF")
    ax.grid(alpha=0.3)
    save(fig, "ttft_cdf.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for q in ("p50", "p90"):
        ax.plot(rounds, [(g["ttft_s"][q] or 0) * 1000 for g in groups], marker="o", label=q)
    ax.set(xlabel="round", ylabel="TTFT (ms)", title="TTFT by conversation round", xticks=rounds)
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "ttft_by_round.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(rounds, [(g["cached_ratio"] or 0) * 100 for g in groups])
    ax.set(
        xlabel="round",
        ylabel="cached prompt tokens (%)",
        title="Prompt tokens served from the cache, by round",
        ylim=(0, 100),
        xticks=rounds,
    )
    ax.grid(alpha=0.3, axis="y")
    save(fig, "hit_ratio_by_round.png")
    return paths
