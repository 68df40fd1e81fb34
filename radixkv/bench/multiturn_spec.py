"""What a multi-turn run is asked to do (`MultiturnSpec`) and what each request did
(`RequestRecord`): the harness fills records, the report summarizes them."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field


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
    cached_by_tier: dict[str, int] | None = None  # radixkv's split of cached_tokens
    worker: str | None = None  # the engine a gateway routed it to (SMG's x-smg-routed-worker-id)


def add_workload_flags(p: argparse.ArgumentParser, **defaults) -> None:
    """The multi-turn workload's flags (`defaults` overrides MultiturnSpec's by field name)."""
    d = {**{f: getattr(MultiturnSpec, f) for f in MultiturnSpec.__dataclass_fields__}, **defaults}
    p.add_argument("--clients", type=int, default=d["clients"], help="conversations at once")
    p.add_argument("--rounds", type=int, default=d["rounds"], help="turns per conversation")
    p.add_argument(
        "--system-tokens", type=int, default=d["system_tokens"], help="shared system prompt"
    )
    p.add_argument(
        "--question-tokens", type=int, default=d["question_tokens"], help="new text per turn"
    )
    p.add_argument(
        "--output-tokens", type=int, default=d["output_tokens"], help="answer length (max_tokens)"
    )
    p.add_argument("--rate", type=float, default=None, help="requests/s (default: no pacing)")
    p.add_argument("--arrival", choices=["poisson", "fixed"], default=d["arrival"])
    p.add_argument("--max-concurrency", type=int, default=None, help="default: --clients")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument(
        "--no-ignore-eos", action="store_true", help="let answers end early at EOS (lengths vary)"
    )


def spec_from_args(args: argparse.Namespace) -> MultiturnSpec:
    return MultiturnSpec(
        clients=args.clients,
        rounds=args.rounds,
        system_tokens=args.system_tokens,
        question_tokens=args.question_tokens,
        output_tokens=args.output_tokens,
        rate=math.inf if args.rate is None else args.rate,
        arrival=args.arrival,
        max_concurrency=args.max_concurrency,
        seed=args.seed,
        ignore_eos=not args.no_ignore_eos,
    )
