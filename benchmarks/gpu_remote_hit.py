"""Remote hit against recompute on a GPU: is loading a prefix another engine computed faster than
computing it again? llama-3-8b shapes with dummy weights, bf16, one run.

Two engines (fresh trees, one process) share a file remote tier. Engine B serves a cold 4,096-
token prompt first (its recompute baseline, and its measured prefill speed). Then for each of
three shared prompts: engine A computes it and writes it through; engine B gets it. The first
remote read goes ahead (nothing measured yet); after it, B's load-or-recompute estimate decides.
The last prompt is loaded with the margin at 0 (forced), to time the load itself. Every B answer
is checked against A's token for the same prompt (greedy).

    python benchmarks/gpu_remote_hit.py [--model llama-3-8b] [--tokens 4096] [--remote-url URL]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radixkv import Engine  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--remote-url", default=None, help="default: a fresh directory")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="radixkv-gpu-remote-")
    url = args.remote_url or Path(tmp, "tier").as_uri()
    rng = random.Random(0)

    def prompt() -> list[int]:
        return [rng.randrange(1000, 100000) for _ in range(args.tokens)]

    common = dict(device="cuda", kv_memory_gb=8, host_memory_gb=8, remote_url=url)
    rows = []
    with Engine(args.model, **common) as a, Engine(args.model, **common) as b:
        for eng in (a, b):  # warm-up: kernels, allocator, the host tier's copy path
            eng.generate([prompt()[:512]], max_tokens=1)
        cold = b.generate([prompt()], max_tokens=1)[0]
        b.cache.wait_idle(timeout_s=120)  # its own write-through done: reads below run alone
        rows.append(("B: cold prompt (recompute)", cold, None))
        for i, label in enumerate(("first read", "estimate decides", "forced load (margin 0)")):
            shared = prompt()
            want = a.generate([shared], max_tokens=1)[0]
            a.cache.wait_idle(timeout_s=120)  # written through to the tier
            if i == 2:
                b.cache.cost.margin = 0.0
            got = b.generate([shared], max_tokens=1)[0]
            b.cache.wait_idle(timeout_s=120)
            assert got.token_ids == want.token_ids, "a remote hit changed the answer"
            rows.append((f"B: shared prompt #{i + 1}, {label}", got, b.cache.cost.as_dict()))
        # the read alone, no scheduler: arrival -> prefix verified on host
        shared = prompt()
        a.generate([shared], max_tokens=1)
        a.cache.wait_idle(timeout_s=120)
        t = time.perf_counter()
        ticket = b.cache.prefetch(shared[:-1])
        b.cache.wait_idle(timeout_s=120)
        read_s = time.perf_counter() - t
        moved = ticket.fetched_tokens
    print(f"{args.model}, {args.tokens}-token prompts, remote tier {url}")
    page_bytes = b.cache.layout.page_bytes
    mb = moved // b.cache.page_size * page_bytes / 1e6
    print(f"prefetch alone: {moved} tokens ({mb:.0f} MB) to host in {1000 * read_s:.0f} ms")
    print(f"{'request':<48}{'TTFT ms':>9}  cached by tier")
    for label, r, _ in rows:
        print(f"{label:<48}{1000 * r.ttft_s:>9.1f}  {r.cached_tokens_by_tier}")
    est = rows[-1][2]
    print(f"B's load-or-recompute estimate after the run: {est}")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {"request": label, "ttft_s": r.ttft_s, "by_tier": r.cached_tokens_by_tier}
                    for label, r, _ in rows
                ]
                + [{"estimate": est}],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
