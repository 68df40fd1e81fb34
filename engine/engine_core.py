"""`EngineCore`: a model, the hierarchical cache, the scheduler and the model runner, built from
one `EngineConfig`, and the one step loop every caller uses.

    step():    schedule -> run -> process outputs
    iterate(): a step; when nothing ran and only remote I/O is pending, block on its completion
               (or a `wake()`), never spin

`radixkv.Engine` (the library), the server's `EngineLoop` thread and the benchmarks all drive
the engine through `iterate()`. The core is single-threaded: one thread at a time owns it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time

import numpy as np
import torch

from engine.attention.flashinfer_backend import SHORT_EXTEND_TOKENS
from engine.attention.kv_write import kv_cache_dtype, kv_scheme
from engine.config import EngineConfig
from engine.generation_defaults import generation_defaults
from engine.hub import resolve_model
from engine.int4_linear import int4_available
from engine.model_loader import auto_dtype, load_model, load_tokenizer, model_name
from engine.model_runner import ModelRunner, make_backend
from engine.request import Request
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.triton_kernels import triton_kernels_wanted
from radixkv.cache.hicache import HiRadixCache
from radixkv.cache.namespace import CacheNamespace
from radixkv.cache.prefetch.hot_prefixes import publish as publish_hot_prefixes
from radixkv.cache.prefetch.hot_prefixes import warm as warm_hot_prefixes
from radixkv.cache.prefix_cache import NoPrefixCache, PrefixCache
from radixkv.cache.report import cache_report
from storage import KVLayout, open_remote_tier
from storage.page_auth import SECRET_ENV, PageAuth, read_secret

log = logging.getLogger(__name__)

IO_WAIT_S = 0.05  # longest block on remote I/O per iterate() (a `wake()` ends it early)
EXTEND_GRAPH_TOKENS = SHORT_EXTEND_TOKENS  # one sequence's extends up to this many replay a graph
HOT_PUBLISH_S = 60.0  # how often an engine sharing a remote tier publishes its hot prefixes


class EngineCore:
    """A model, its cache, runner and scheduler, built from one `EngineConfig` in four steps
    (model, cache, runner, scheduler), and the step loop."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_name = model_name(config.model)
        self._rids = itertools.count(1)  # next() is atomic: requests are made on any thread
        self._grammars = None  # engine.constraint.Grammars, built at the first structured request
        self._grammars_lock = threading.Lock()
        self._in_flight = None  # (batch, StepTokens, launched at): queued, its tokens unread
        dtype = self._build_model()
        self._build_cache(dtype)
        self._build_runner()
        self._build_scheduler()

    def _build_model(self) -> torch.dtype:
        """The device, the model's weights (4-bit on a CPU that has the kernel), the Triton
        kernels where they apply, and the tokenizer. Returns the model's dtype."""
        config = self.config
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        model = resolve_model(config.model)  # a Hub id: its local snapshot
        dtype = (
            auto_dtype(model, self.device)
            if config.dtype == "auto"
            else getattr(torch, config.dtype)
        )
        # A GGUF's 4-bit weights as they are, on a CPU with the kernel: in bfloat16, or in the
        # float32 `dtype=auto` picks where the CPU lacks bf16 (the kernel takes its activations
        # in bf16). An explicit float32 stays the dense reference.
        int4 = (
            config.cpu_int4
            and self.device.type == "cpu"
            and (dtype == torch.bfloat16 or config.dtype == "auto")
            and int4_available()
        )
        self.model, self.fingerprint, self.tokenizer = load_model(
            model, self.device, dtype, keep_q4=int4
        )
        self.model.fuse(int4)  # merged projections (and fused norms on CUDA): after loading
        if triton_kernels_wanted(config.triton_kernels, self.device, dtype):
            t = time.perf_counter()
            n = self.model.use_triton_kernels()  # autotunes now: before graphs are captured
            log.info(
                "Triton kernels: %d projections by the batch-1 GEMV, RoPE fused with the KV "
                "write; tuned in %.1f s",
                n,
                time.perf_counter() - t,
            )
        if config.tokenizer is not None:
            self.tokenizer = load_tokenizer(config.tokenizer, self.model.config.vocab_size)
        self.generation_defaults = generation_defaults(config.generation_config, model)
        # what keys the shared tier: the weights' bytes and the tokenizer's table and template
        tok = self.tokenizer.fingerprint if self.tokenizer is not None else "none"
        self.model_identity = f"{self.fingerprint};tokenizer={tok}"
        return dtype

    def _build_cache(self, dtype: torch.dtype) -> None:
        """The KV layout, the remote tier, the hierarchical cache and the engine's view of it;
        with a shared tier, the hot prefixes other processes read most are warmed now."""
        config, cfg = self.config, self.model.config
        kv_dtype = kv_cache_dtype(config.kv_cache_dtype, dtype, self.device)
        layout = KVLayout(
            cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, config.page_size, kv_dtype
        )
        store = open_remote_tier(config.remote_url, max_gb=config.remote_max_gb)
        secret = read_secret(config.remote_secret_file)
        auth = PageAuth(secret, config.tenant) if secret is not None else None
        if store is not None and auth is None:
            log.warning(
                "the shared tier (%s) is unauthenticated: anyone who can write to it can change "
                "this engine's answers; give every engine the same secret with "
                "--remote-secret-file or $%s",
                store.describe(),
                SECRET_ENV,
            )
        namespace = CacheNamespace(
            self.model_identity, layout, config.tenant, kv_scheme=kv_scheme(kv_dtype), auth=auth
        )
        self.cache = HiRadixCache(
            layout,
            config.cache_config(layout, has_store=store is not None),
            namespace=namespace,
            store=store,
            device=str(self.device),
        )
        self.prefix_cache = (PrefixCache if config.prefix_caching else NoPrefixCache)(self.cache)
        # cross-instance hot prefixes (radixkv.cache.prefetch.hot_prefixes): warmed now,
        # published every minute
        self.sharing_hot = bool(
            store is not None and config.share_hot_prefixes and config.prefix_caching
        )
        self.warming = warm_hot_prefixes(self.cache) if self.sharing_hot else None
        self._hot_published_at = time.monotonic()
        self.kv_events = None  # vLLM-format KV events of the device and host tiers (opt-in)
        if config.kv_events_endpoint is not None:
            from engine.kv_events import KVEventPublisher  # needs pyzmq and msgspec

            self.kv_events = KVEventPublisher(
                self.cache, config.kv_events_endpoint, config.kv_events_replay_endpoint
            )
            self.cache.on_residency = self.kv_events.record

    def _build_runner(self) -> None:
        """The attention backend, CUDA graphs where they apply, the model runner, and on a GPU
        every eager kernel compiled and loaded before the first request."""
        config = self.config
        backend, attention = make_backend(
            config.attention,
            self.cache.device_pool,
            self.model,
            prefix_kernel=config.prefix_attention_kernel,
        )
        graphs = []
        if config.cuda_graph and attention == "flashinfer":
            from engine.cuda_graph import DecodeGraphs  # needs CUDA and flashinfer
            from engine.extend_graph import ExtendGraphs

            context = self.model.config.max_position_embeddings
            pool = self.cache.device_pool
            graphs = [
                DecodeGraphs(self.model, pool, config.max_running, context),
                ExtendGraphs(self.model, pool, EXTEND_GRAPH_TOKENS, context),
            ]
        vocab = self.model.config.vocab_size
        tok_vocab = self.tokenizer.vocab_size if self.tokenizer else vocab
        self.runner = ModelRunner(
            self.model, backend, attention, graphs, tok_vocab if tok_vocab < vocab else None
        )
        self.warm_up_s = (
            self.runner.warm_up(self.cache.device_pool) if self.device.type == "cuda" else 0.0
        )

    def _build_scheduler(self) -> None:
        """The scheduler over the engine's view of the cache, and whether steps overlap."""
        config = self.config
        self.scheduler = Scheduler(
            self.prefix_cache,
            self.device,
            prefetch_pages=config.prefetch_pages if config.prefix_caching else 0,
            max_batch_tokens=config.max_batch_tokens,
            max_running=config.max_running,
            eos_token_ids=self._eos_ids(),
            detokenize=self.tokenizer.decode if self.tokenizer else None,
            check_integrity=config.check_integrity,
            # a decode engine waits for a prompt's pages to reach the shared tier
            handoff_timeout_s=config.handoff_timeout_ms / 1000 if config.role == "decode" else None,
        )
        # overlap scheduling: plain greedy decode steps are continued on the device's tokens
        # (Scheduler.continue_decode); on a CPU a step runs when launched, so nothing overlaps
        self.overlap = config.overlap_schedule == "on" or (
            config.overlap_schedule == "auto" and self.device.type == "cuda"
        )

    def _eos_ids(self) -> tuple[int, ...]:
        """The model's end-of-sequence ids, and its tokenizer's (a preset with a tokenizer)."""
        ids = set(self.model.config.eos_token_ids)
        if self.tokenizer is not None:
            eos = self.tokenizer.token_id(self.tokenizer.eos_token)
            ids |= {eos} if eos is not None else set()
        return tuple(sorted(ids))

    # ---- requests ------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        own = self.model.config.max_position_embeddings
        return min(own, self.config.max_model_len or own)

    @property
    def max_request_tokens(self) -> int:
        """Prompt plus output tokens one request may hold: the context, or the device tier's
        capacity where that is smaller."""
        cache = self.prefix_cache
        return min(self.context_length, cache.device_capacity_pages * cache.page_size)

    def encode(self, prompt) -> list[int]:
        """Token ids of a prompt (a string, or a list of ids that is checked)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token id lists")
            return self.tokenizer.encode(prompt)
        vocab = self.model.config.vocab_size
        try:  # checked in one vectorised pass: a Python loop costs ~1 ms per 4,096 ids
            arr = np.asarray(list(prompt))
        except (TypeError, ValueError):
            arr = np.asarray([], dtype=np.float64)
        if (
            arr.ndim != 1
            or arr.size == 0
            or arr.dtype.kind not in "iub"
            or arr.min() < 0
            or arr.max() >= vocab
        ):
            raise ValueError(
                f"a prompt must be a non-empty string or list of token ids in [0, {vocab})"
            )
        return arr.astype(np.int64).tolist()

    def make_request(self, prompt, *, session: str | None = None, **sampling) -> Request:
        """Validate a prompt and sampling options into a Request, not yet queued (thread-safe).

        Raises ValueError saying what is wrong: an empty or out-of-vocabulary prompt, invalid
        sampling values, a prompt plus max_tokens beyond the context or the device tier.
        `session` names the conversation it continues (the prefetcher learns when it returns).
        """
        unknown = set(sampling) - set(SamplingParams.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        params = SamplingParams(
            **{
                k: tuple(v) if k in ("stop", "stop_token_ids") and isinstance(v, list) else v
                for k, v in sampling.items()
            }
        )
        if self.config.role == "prefill":  # the prompt's pages are the answer; one token ends it
            params = dataclasses.replace(params, max_tokens=1, min_tokens=0)
        # a prompt too long is refused before its ids are checked one by one (a multi-megabyte
        # prompt's check would hold the GIL for a tenth of a second)
        if isinstance(prompt, (list, tuple)):
            self._check_length(len(prompt), params.max_tokens)
        ids = self.encode(prompt)
        vocab = self.model.config.vocab_size
        if any(t >= vocab for t, _ in params.logit_bias):
            raise ValueError(f"logit_bias names a token id outside the vocabulary [0, {vocab})")
        self._check_length(len(ids), params.max_tokens)
        if session is not None and (not isinstance(session, str) or not 0 < len(session) <= 256):
            raise ValueError("a session id must be a string of 1 to 256 characters")
        req = Request(next(self._rids), ids, params, session=session)
        if params.grammar is not None:
            req.constraint = self.grammars().constraint(*params.grammar)
        return req

    def _check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        """A prompt plus its output must fit the context and the device tier."""
        total = prompt_tokens + max_tokens
        if total > self.context_length:
            raise ValueError(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                f"{total} tokens, longer than the model's context ({self.context_length})"
            )
        device_tokens = self.prefix_cache.device_capacity_pages * self.prefix_cache.page_size
        if total > device_tokens:
            raise ValueError(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) needs "
                f"more KV memory than the device tier holds ({device_tokens} tokens)"
            )

    def grammars(self):
        """The grammar compiler for this model's tokenizer (built once, on first use)."""
        if self.tokenizer is None:
            raise ValueError("structured output needs a tokenizer: this model has none")
        with self._grammars_lock:
            if self._grammars is None:
                from engine.constraint import Grammars

                eos = self.tokenizer.token_id(self.tokenizer.eos_token)
                self._grammars = Grammars(self.tokenizer, self.model.config.vocab_size, eos)
            return self._grammars

    # ---- the step loop ---------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """One engine step; returns the requests that produced a token (or finished). The KV
        events it caused go out as one batch."""
        progressed = self._run_step()
        if self.kv_events is not None:
            self.kv_events.flush()
        return progressed

    def _run_step(self) -> list[Request]:
        if self.sharing_hot and time.monotonic() - self._hot_published_at > HOT_PUBLISH_S:
            self._hot_published_at = time.monotonic()
            publish_hot_prefixes(self.cache)  # one tree walk a minute; the I/O is asynchronous
        if self._in_flight is not None:  # a continued decode step, queued by the last call
            (batch, pending, started), self._in_flight = self._in_flight, None
        else:
            batch = self.scheduler.schedule()
            if batch is None:
                return []
            started = time.perf_counter()
            pending = self.runner.launch(batch.forward)
        if self.overlap and pending.ids is not None:
            # queue the next decode step on this one's tokens while the GPU still runs it: the
            # host work of a step (planning, page tables, launch) hides behind the kernels
            following = self.scheduler.continue_decode(batch, pending.ids)
            if following is not None:
                launched = time.perf_counter()
                self._in_flight = (following, self.runner.launch(following.forward), launched)
        tokens = pending.tolist()  # host ints: the step's one device sync
        return self.scheduler.process_outputs(batch, tokens, time.perf_counter() - started)

    def iterate(self) -> list[Request]:
        """A step; when it ran nothing and nothing is running, the waiting requests wait on remote
        prefetches: block until one completes (or `wake()`), at most IO_WAIT_S or until a waiting
        request's wait for its fetch ends."""
        progressed = self.step()
        if not progressed and not self.scheduler.running and self._in_flight is None:
            wait = IO_WAIT_S
            deadline = self.scheduler.next_prefetch_deadline()
            if deadline is not None:  # a request stops waiting for its fetch then
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            self.prefix_cache.wait_for_io(wait)
        return progressed

    def wake(self) -> None:
        """End an `iterate()` blocked on remote I/O now (thread-safe): new work arrived."""
        self.prefix_cache.wake()

    def cache_report(self, *, integrity: bool = False) -> dict:
        """The cache's state (see `radixkv.cache.report`); on the thread that owns the core."""
        return cache_report(self.cache, integrity=integrity)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self._in_flight is not None

    def close(self) -> None:
        """Publish hot prefixes, finish remote writes in flight, close the cache (and its store)."""
        self.overlap = False  # a step still queued is read (its tokens applied), none follows
        while self._in_flight is not None:
            self.step()
        if self.sharing_hot:
            publish_hot_prefixes(self.cache)
        self.cache.close()
        if self.kv_events is not None:
            self.kv_events.close()
