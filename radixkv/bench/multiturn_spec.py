"""What a multi-turn run is asked to do (`MultiturnSpec`) and what each request did
(`RequestRecord`): the harness fills records, the report summarizes them."""

from __future__ import annotations

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
