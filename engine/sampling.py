"""Sampling parameters (validated) and token selection: greedy, temperature, top-k, top-p, seed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "lark")
MAX_TOP_LOGPROBS = 20
SAMPLE_FAILED = -1  # the token of a row whose sampling raised: its request ends with an error
# a temperature this small is its limit, greedy (and float32 cannot scale by it)
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # structured output: (kind, spec), kind one of GRAMMAR_KINDS (spec: the schema's JSON text,
    # the regex, a Lark grammar, or "" for any JSON object); every token is then masked to
    # what it allows
    grammar: tuple[str, str] | None = None
    # OpenAI's penalties over the tokens generated so far, in [-2, 2]: presence subtracts once
    # from each token that appeared, frequency once per appearance
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100]) pairs
    min_tokens: int = 0  # end-of-sequence and stop tokens are banned until this many
    # None: no log probabilities; k >= 0: the chosen token's and the k most likely tokens'
    # (of the model's own distribution, before penalties, bias, grammar and temperature)
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_tokens, int)
            or isinstance(self.max_tokens, bool)
            or self.max_tokens < 1
        ):
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if (
            not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or self.temperature < 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be a non-empty string or a list of them")
        if self.grammar is not None and (
            not isinstance(self.grammar, tuple)
            or len(self.grammar) != 2
            or self.grammar[0] not in GRAMMAR_KINDS
            or not isinstance(self.grammar[1], str)
        ):
            raise ValueError(
                f"grammar must be (kind, spec) with kind one of {', '.join(GRAMMAR_KINDS)}, "
                f"got {self.grammar!r}"
            )

        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not -2 <= v <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {v!r}")
        if isinstance(self.logit_bias, dict):
            object.__setattr__(self, "logit_bias", tuple(sorted(self.logit_bias.items())))
        for pair in self.logit_bias:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not isinstance(pair[0], int)
                or pair[0] < 0
                or not isinstance(pair[1], int | float)
                or not -100 <= pair[1] <= 100
            ):
                raise ValueError(
                    f"logit_bias maps token ids to biases in [-100, 100], got {pair!r}"
                )
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS
        ):
            raise ValueError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def adjusts_logits(self) -> bool:
        return bool(
            self.presence_penalty or self.frequency_penalty or self.logit_bias or self.min_tokens
        )


@dataclass
class RowSampling:
    """What one row of a batch samples with: its parameters, its seeded generator, its grammar
    constraint, the tokens it has generated (for penalties) and the tokens it may not pick yet
    (end of sequence before min_tokens)."""

    params: SamplingParams
    generator: torch.Generator | None = None
    constraint: object | None = None
    output_ids: list[int] = field(default_factory=list)
    banned: tuple[int, ...] = ()
    # set by the sampler when params.logprobs is not None: (the chosen token's log probability,
    # [(token, log probability)] of the most likely ones, best first)
    logprob: tuple[float, list[tuple[int, float]]] | None = None

    def adjust(self, logits: torch.Tensor) -> None:
        """Penalties, logit bias, bans and the grammar's mask, in place on a [vocab] row."""
        p = self.params
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], device=logits.device)
            ids = ids.clamp(max=logits.numel() - 1)  # ids are checked against the vocab
            bias = torch.tensor([b for _, b in p.logit_bias], device=logits.device)
            logits.index_add_(0, ids, bias.to(logits.dtype))
        if (p.presence_penalty or p.frequency_penalty) and self.output_ids:
            seen = torch.tensor(self.output_ids, device=logits.device)
            counts = torch.bincount(seen, minlength=logits.numel())[: logits.numel()]
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
        banned = [t for t in self.banned if 0 <= t < logits.numel()]  # stop ids may be any int
        if banned:
            logits[banned] = float("-inf")
        if self.constraint is not None:
            self.constraint.mask(logits)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from a [vocab] float32 logits row."""
    if params.greedy:
        return int(logits.argmax())
    # shifted so the best is 0 before scaling: a tiny temperature sends the rest to -inf, never
    # the best to inf (inf - inf is a NaN distribution)
    # (a temperature past 1e4 is already uniform over what top-k / top-p keep; float32 cannot
    # divide by one near 1e308)
    if params.top_k:  # on the logits as given: the shift below can round near-ties together
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logits = (logits - logits.max()) / min(params.temperature, 1e4)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < params.top_p  # the smallest set reaching top_p
        keep[0] = True  # however small top_p is (5e-324 is 0 in float32): the best token stays
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p * keep)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
