"""`radixkv.Engine`: the embedded library: a model, the hierarchical cache and the scheduler
behind one object. The serving engine is imported here, inside functions, so that importing
radixkv alone never pulls in a model."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from radixkv.config import CacheConfig
from radixkv.hicache import HiRadixCache
from radixkv.namespace import CacheNamespace
from storage import KVLayout


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    prompt_tokens: int
    cached_tokens: int
    cached_tokens_by_tier: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None


def _load(model: str | None, device: torch.device, dtype: torch.dtype):
    """(model, fingerprint, tokenizer or None) for a path, a GGUF file, a preset or None."""
    from engine.default_model import default_model_path
    from engine.gguf_loader import load_gguf, open_gguf
    from engine.model_config import PRESETS
    from engine.tokenizer import Tokenizer
    from engine.weights import dummy_model, load_hf_directory

    if model is None:
        model = str(default_model_path())
    if model in PRESETS:
        m, fp = dummy_model(model, dtype=dtype, device=device)
        return m, fp, None
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        reader = open_gguf(path)  # parsed once for both the weights and the tokenizer
        m, fp, _ = load_gguf(reader, dtype=dtype, device=device)
        return m, fp, Tokenizer.from_gguf(reader)
    if path.is_dir():
        m, fp = load_hf_directory(path, dtype=dtype, device=device)
        return (
            m,
            fp,
            Tokenizer.from_hf_directory(path) if (path / "tokenizer.json").is_file() else None,
        )
    raise ValueError(
        f"model {model!r} is not a GGUF file, a Hugging Face directory or a preset ({', '.join(PRESETS)})"
    )


def _model_name(model: str | None) -> str:
    """The name a server reports: the default model's, a preset's, or the file or folder name."""
    if model is None:
        return "SmolLM2-135M-Instruct"
    path = Path(model)
    if path.suffix == ".gguf":
        return path.stem
    return path.name or model


@dataclass
class StreamChunk:
    token_ids: list[int]
    text: str  # the new text since the previous chunk
    finish_reason: str | None = None


class Session:
    """An agent's or a user's growing conversation.

    Each turn resends the whole context (the cache turns that into a prefix hit). Between turns
    the session asks the cache to prefetch its context from the remote tier into host memory and
    refreshes its recency, so the next turn finds it close by even after other traffic.
    """

    def __init__(self, engine: Engine, system: str | None) -> None:
        self.engine = engine
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def chat(self, content: str, **sampling) -> GenerationResult:
        self.messages.append({"role": "user", "content": content})
        result = self.engine.chat(self.messages, **sampling)
        self.messages.append({"role": "assistant", "content": result.text})
        self._keep_warm()
        return result

    def _keep_warm(self) -> None:
        tok = self.engine.tokenizer
        context = tok.encode(tok.apply_chat_template(self.messages, add_generation_prompt=False))
        self.engine.cache.match(context)  # recency: this context was just used
        self.engine.cache.prefetch(context)  # any remote part comes to host before the next turn


class Engine:
    """Generate with a hierarchical prefix cache. `model`: a HF directory, a .gguf file, a preset
    name (dummy weights) or None for SmolLM2-135M-Instruct (fetched on first use).

    `remote_url` picks the shared remote tier: file:///dir, redis://[:password@]host:port/db,
    rediss://..., or mooncake://master-host:port (see `storage.open_store` for query options).
    Remote calls slower than `remote_timeout_s` fail into a recompute; a read estimated slower
    than recomputing (times `remote_load_margin`) is skipped.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        page_size: int = 16,
        kv_memory_gb: float = 1.0,
        host_memory_gb: float = 0.0,
        remote_url: str | None = None,
        remote_pages: int = 1 << 20,
        remote_timeout_s: float = 10.0,
        remote_load_margin: float = 1.0,
        policy: str = "workload",
        write_policy: str = "write_through",
        tenant: str = "",
        prefix_caching: bool = True,
        max_batch_tokens: int = 2048,
        max_running: int = 64,
        check_integrity: bool = False,
        attention: str = "auto",
    ) -> None:
        from engine.attention import TorchPagedAttention
        from engine.attention.flashinfer_backend import (
            FlashInferPagedAttention,
            flashinfer_available,
        )
        from engine.scheduler import Scheduler

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model, self.fingerprint, self.tokenizer = _load(model, self.device, dtype)
        cfg = self.model.config
        layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, page_size, dtype)
        if kv_memory_gb <= 0 or host_memory_gb < 0:
            raise ValueError("kv_memory_gb must be > 0 and host_memory_gb >= 0")
        device_pages = max(1, int(kv_memory_gb * 2**30) // layout.page_bytes)
        host_pages = int(host_memory_gb * 2**30) // layout.page_bytes
        config = CacheConfig(
            device_pages=device_pages,
            host_pages=host_pages,
            remote_pages=remote_pages if remote_url else 0,
            remote_timeout_s=remote_timeout_s,
            remote_load_margin=remote_load_margin,
            policy=policy,
            write_policy=write_policy,
        )
        self.cache = HiRadixCache(
            layout,
            config,
            namespace=CacheNamespace(self.fingerprint, layout, tenant),
            remote_url=remote_url,
            device=str(self.device),
        )
        if attention == "auto":
            attention = (
                "flashinfer" if self.device.type == "cuda" and flashinfer_available() else "torch"
            )
        if attention not in ("torch", "flashinfer"):
            raise ValueError(f"attention must be auto, torch or flashinfer, got {attention!r}")
        backend_cls = FlashInferPagedAttention if attention == "flashinfer" else TorchPagedAttention
        backend = backend_cls(self.cache.device_pool, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.attention = attention
        self.scheduler = Scheduler(
            self.model,
            backend,
            self.cache,
            max_batch_tokens=max_batch_tokens,
            max_running=max_running,
            prefix_caching=prefix_caching,
            eos_token_ids=cfg.eos_token_ids,
            detokenize=self.tokenizer.decode if self.tokenizer else None,
            check_integrity=check_integrity,
        )
        self._rids = itertools.count(1)  # next() is atomic: requests are made on any thread
        self.model_name = _model_name(model)
        self._step_lock = asyncio.Lock()

    def _encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token id lists")
            return self.tokenizer.encode(prompt)
        ids = list(prompt)
        vocab = self.model.config.vocab_size
        if not ids or not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise ValueError(
                f"a prompt must be a non-empty string or list of token ids in [0, {vocab})"
            )
        return ids

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    def make_request(self, prompt, **sampling):
        """Validate a prompt and sampling options into a Request, not yet queued (thread-safe).

        Raises ValueError saying what is wrong: an empty or out-of-vocabulary prompt, invalid
        sampling values, a prompt plus max_tokens beyond the context or the device tier.
        """
        from engine.request import Request
        from engine.sampling import SamplingParams

        ids = self._encode(prompt)
        unknown = set(sampling) - set(SamplingParams.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        params = SamplingParams(
            **{
                k: tuple(v) if k in ("stop", "stop_token_ids") and isinstance(v, list) else v
                for k, v in sampling.items()
            }
        )
        total = len(ids) + params.max_tokens
        if total > self.context_length:
            raise ValueError(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) is "
                f"{total} tokens, longer than the model's context ({self.context_length})"
            )
        device_tokens = self.cache.device_pool.num_pages * self.cache.page_size
        if total > device_tokens:
            raise ValueError(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) needs "
                f"more KV memory than the device tier holds ({device_tokens} tokens)"
            )
        return Request(next(self._rids), ids, params)

    def submit(self, prompt, **sampling):
        """Queue one prompt; returns its Request (advance with `step()`)."""
        req = self.make_request(prompt, **sampling)
        self.scheduler.add(req)
        return req

    def step(self):
        return self.scheduler.step()

    def generate(self, prompts, **sampling) -> list[GenerationResult]:
        """Generate for each prompt (strings or token-id lists), batched; results in order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise ValueError("generate() takes a list of prompts")
        t0 = time.perf_counter()
        reqs = [self.submit(p, **sampling) for p in prompts]
        while any(r.finish_reason is None for r in reqs):
            if not self.scheduler.step() and not self.scheduler.running:
                self.scheduler.wait_for_remote()  # only prefetches are pending
        return [self._result(r, t0) for r in reqs]

    def chat(self, messages: list[dict], **sampling) -> GenerationResult:
        if self.tokenizer is None or not self.tokenizer.chat_template:
            raise ValueError("this model has no chat template")
        return self.generate([self.tokenizer.apply_chat_template(messages)], **sampling)[0]

    @staticmethod
    def _result(r, t0: float) -> GenerationResult:
        return GenerationResult(
            token_ids=list(r.output_ids),
            text=r.text,
            prompt_tokens=len(r.prompt_ids),
            cached_tokens=r.cached_tokens,
            cached_tokens_by_tier=dict(r.cached_by_tier),
            finish_reason=r.finish_reason,
            ttft_s=r.ttft_s,
            latency_s=time.perf_counter() - t0,
        )

    async def stream(self, prompt, **sampling):
        """Yield `StreamChunk`s (new token ids and text) as they are generated.

        Concurrent streams share the scheduler: whichever stream is awaiting steps the whole
        batch, so every stream advances together. A stream closed early aborts its request and
        frees its pages.
        """
        from engine.text_stream import TextStream

        req = self.submit(prompt, **sampling)
        text = TextStream(
            self.tokenizer.decode if self.tokenizer else lambda _: "", req.params.stop
        )
        sent_tokens = 0
        try:
            while True:
                if len(req.output_ids) > sent_tokens or req.finish_reason is not None:
                    new_ids = req.output_ids[sent_tokens:]
                    sent_tokens = len(req.output_ids)
                    if req.finish_reason is None:
                        yield StreamChunk(new_ids, text.push(req.output_ids))
                        continue
                    yield StreamChunk(new_ids, text.finish(req.text), req.finish_reason)
                    return
                progressed = True
                async with self._step_lock:
                    if req.finish_reason is None and len(req.output_ids) == sent_tokens:
                        progressed = bool(self.scheduler.step()) or bool(self.scheduler.running)
                await asyncio.sleep(0 if progressed else 0.002)  # only prefetches are pending
        finally:
            if req.finish_reason is None:
                self.scheduler.abort(req)

    def session(self, system: str | None = None) -> Session:
        """A conversation whose context stays cached between turns (see `Session`)."""
        return Session(self, system)

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
