"""Constrained decoding's cost: tokens/s with and without a JSON schema, same engine, same run.

The engine (the default model unless --model) generates for a batch of prompts asking for a
person's record, greedy, a fixed number of tokens (--tokens, `ignore_eos`), free and then under
`response_format`'s json_schema (every step masks the batch's logits with the grammar's allowed
tokens, computed by llguidance on the host). Each mode runs twice and the faster run counts (the
first pays compiling and warming up). Prints tokens/s of each, the ratio, and whether every
constrained output that finished parsed and validated.

    python benchmarks/constrained_decode.py [--model PATH] [--device cpu|cuda] [--batches 1,8]

A constrained output ends when its JSON does, so its batch thins out before the free one's;
batch 1 compares step for step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 40},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}},
    },
    "required": ["name", "age", "city", "languages"],
    "additionalProperties": False,
}


def valid(text: str) -> bool:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return False
    return set(obj) == set(SCHEMA["properties"]) and isinstance(obj["age"], int)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from radixkv import Engine

    eng = Engine(
        args.model, tokenizer=args.tokenizer, device=args.device, host_memory_gb=0, remote_url=None
    )
    grammar = ("json_schema", json.dumps(SCHEMA))
    report = {}
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = [
            eng.tokenizer.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": f"Describe person {i} as JSON: name, age, city, languages.",
                    }
                ]
            )
            for i in range(batch)
        ]
        results = {}
        for mode, extra in (("free", {"ignore_eos": True}), ("json_schema", {"grammar": grammar})):
            best, outs = float("inf"), []
            for _ in range(2):  # the faster of two: the first compiles and warms up
                t = time.perf_counter()
                outs = eng.generate(prompts, max_tokens=args.tokens, temperature=0, **extra)
                best = min(best, time.perf_counter() - t)
            tokens = sum(len(o.token_ids) for o in outs)
            results[mode] = {"seconds": best, "tokens": tokens, "tokens_per_s": tokens / best}
            if mode == "json_schema":  # a choice cut by max_tokens cannot have closed its JSON
                done = [o for o in outs if o.finish_reason == "stop"]
                results[mode]["finished"] = len(done)
                results[mode]["valid"] = sum(valid(o.text) for o in done)
        ratio = results["json_schema"]["tokens_per_s"] / results["free"]["tokens_per_s"]
        report[batch] = results | {"ratio": ratio}
        print(
            f"batch {batch} ({args.device}): free {results['free']['tokens_per_s']:,.1f} tokens/s, "
            f"json_schema {results['json_schema']['tokens_per_s']:,.1f} tokens/s -> {ratio:.2f}x; "
            f"valid JSON {results['json_schema']['valid']} of the "
            f"{results['json_schema']['finished']}/{batch} that finished within --tokens",
            flush=True,
        )
    eng.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
