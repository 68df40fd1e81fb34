"""Multi-turn chat over a long shared context, with and without the prefix cache.

Eight turns over a ~1,500-token document with the default model (SmolLM2-135M-Instruct) on
CPU. Each turn resends the whole conversation, as chat clients do; with the cache only the new
tokens are computed. Prints each turn's time to first token for both engines, side by side.

    python examples/multiturn.py [--turns 8] [--context-tokens 1500] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import sys

from radixkv import Engine

FACTS = [
    "The observatory on the ridge was built in {y} and its main mirror is {m} centimetres wide.",
    "In {y} the river flooded the lower town, and the new levee rose {m} centimetres that spring.",
    "The library's oldest atlas, printed in {y}, lists {m} harbours along the northern coast.",
    "A ferry service began in {y}; by the next decade it carried {m} passengers on a busy day.",
]
QUESTIONS = [
    "When was the observatory built?",
    "How wide is its main mirror?",
    "What happened to the river?",
    "How old is the library's atlas?",
    "How many harbours does it list?",
    "When did the ferry service begin?",
    "Summarise the town's history in one sentence.",
    "Which fact did you find most surprising?",
]


def document(engine: Engine, tokens: int) -> str:
    lines, i = [], 0
    while len(engine.tokenizer.encode(" ".join(lines))) < tokens:
        lines.append(FACTS[i % len(FACTS)].format(y=1800 + 7 * i, m=40 + 13 * i))
        i += 1
    return " ".join(lines)


def conversation(
    engine: Engine, doc: str, turns: int, max_tokens: int
) -> list[tuple[float, int, int]]:
    messages = [{"role": "system", "content": "Answer from this town record:\n" + doc}]
    out = []
    for t in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[t % len(QUESTIONS)]})
        r = engine.chat(messages, max_tokens=max_tokens)
        messages.append({"role": "assistant", "content": r.text})
        out.append((r.ttft_s, r.prompt_tokens, r.cached_tokens))
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--context-tokens", type=int, default=1500)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    with (
        Engine(device=args.device, remote_url=None) as cached,
        Engine(device=args.device, remote_url=None, prefix_caching=False) as uncached,
    ):
        doc = document(cached, args.context_tokens)
        conversation(cached, "warm-up", 1, 2)  # first-call costs out of the measurement
        conversation(uncached, "warm-up", 1, 2)
        cached.cache.flush()
        with_cache = conversation(cached, doc, args.turns, args.max_tokens)
        without = conversation(uncached, doc, args.turns, args.max_tokens)
    print(
        f"\n{'turn':>4} {'prompt tokens':>14} {'cached':>7} {'TTFT cached':>12} {'TTFT no cache':>14} {'speed-up':>9}"
    )
    for t, ((a, n, c), (b, _, _)) in enumerate(zip(with_cache, without, strict=True), 1):
        print(f"{t:>4} {n:>14,} {c:>7,} {a * 1000:>10.0f}ms {b * 1000:>12.0f}ms {b / a:>8.1f}x")
    later = slice(1, None)
    mean_a = sum(x[0] for x in with_cache[later]) / (args.turns - 1)
    mean_b = sum(x[0] for x in without[later]) / (args.turns - 1)
    print(
        f"turns 2..{args.turns}: mean TTFT {mean_a * 1000:.0f} ms with the cache, {mean_b * 1000:.0f} ms without ({mean_b / mean_a:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
