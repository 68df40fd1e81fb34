"""`EngineConfig`: every engine and cache option, with its one default and its help, in one frozen
dataclass. The library (`Engine(config)` / `Engine(**overrides)`), `python -m radixkv.serve` and
`python -m radixkv.bench` all build from it: command-line flags are generated from its fields
(`engine.config_flags`), and `--config FILE` (YAML or JSON) fills the same fields.

Each field's metadata holds its help text and the flag names other engines' users type (vLLM's
and SGLang's), which map to the same field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.attention.flashinfer_backend import PREFIX_KERNELS
from engine.attention.kv_write import KV_DTYPE_NAMES
from engine.generation_defaults import parse_overrides
from radixkv.cache.config import (
    ENGINE_SETTINGS,
    CacheConfig,
    cache_default,
    check_engine_settings,
)
from storage.layout import KVLayout
from storage.open_store import DEFAULT_REMOTE

DTYPES = ("auto", "bfloat16", "float16", "float32")
KV_DTYPES = ("auto", *KV_DTYPE_NAMES)
ATTENTION = ("auto", "torch", "flashinfer")
TOOL_CALL_PARSERS = ("auto", "hermes", "llama3_json")
ROLES = ("both", "prefill", "decode")
SWITCH = ("auto", "on", "off")  # auto: on where it helps (each field says where)


def _opt(default: Any, help_text: str, *aliases: str, negative: tuple[str, ...] = ()) -> Any:
    """A field with its help and flag aliases (`negative`: flags that set a bool to False)."""
    return field(
        default=default, metadata={"help": help_text, "aliases": aliases, "negative": negative}
    )


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine is built from. Invalid values raise ValueError naming the field."""

    model: str | None = _opt(
        None,
        "a Hugging Face directory, a .gguf file, a Hub id (org/name: from the local Hugging Face "
        "cache, else downloaded) or a preset (llama-3-8b, qwen2.5-7b: dummy weights); default: "
        "SmolLM2-135M-Instruct, fetched on first use",
        "--model-path",
    )
    tokenizer: str | None = _opt(
        None,
        "a tokenizer for a model without one (a preset): a tokenizer.json, a Hugging Face "
        "directory, a .gguf file, or 'default' (the default model's); its vocabulary must fit the "
        "model's",
    )
    device: str = _opt("auto", "cuda, cuda:N, cpu, or auto (the GPU if there is one)")
    dtype: str = _opt(
        "auto",
        "weights and KV dtype (KV: unless --kv-cache-dtype): auto (bf16 on GPU; on a CPU with "
        "native bf16, bf16 unless the checkpoint is fp32; else fp32), " + ", ".join(DTYPES[1:]),
    )
    kv_cache_dtype: str = _opt(
        "auto",
        "KV page dtype: auto (the model's dtype), " + ", ".join(KV_DTYPES[1:]) + "; fp8_e4m3 "
        "holds twice bf16's tokens in every tier, values saturated at +-448 and unscaled (see "
        "docs/architecture.md); a CPU-only option for now",
    )
    attention: str = _opt(
        "auto", "attention backend: auto (flashinfer on GPU if installed), torch, flashinfer"
    )
    prefix_attention_kernel: str = _opt(
        "fa2",
        "flashinfer's kernel for a prefill chunk over a cached prefix: fa2, or auto (the Hopper "
        "kernel on an H100/H200; benchmarks/gpu_prefix_attention.py compares them)",
    )
    page_size: int = _opt(
        16, "tokens per KV page: the unit that is cached and shared", "--block-size"
    )
    kv_memory_gb: float = _opt(1.0, "device tier: GiB of KV pages on the device")
    host_memory_gb: float = _opt(
        2.0, "host tier: GiB of KV pages in (pinned) host memory; 0 disables it"
    )
    remote_url: str | None = _opt(
        DEFAULT_REMOTE,
        "remote tier shared across processes: file:///dir, redis://[:password@]host:port/db, "
        "rediss://..., mooncake://master-host:port, s3://bucket/prefix?endpoint=URL, 'default' "
        "(a file tier under "
        "$RADIXKV_CACHE or ~/.cache/radixkv) or 'none'; options as query parameters",
    )
    remote_max_gb: float | None = _opt(
        None,
        "size cap of a file remote tier, shared by every process using the directory "
        "(default: 10%% of the disk's free space when the engine starts)",
    )
    remote_pages: int = _opt(1 << 20, "remote pages the tree keeps track of")
    remote_timeout_s: float = _opt(
        cache_default("remote_timeout_s"),
        "a remote call slower than this fails and the request recomputes",
    )
    remote_load_margin: float = _opt(
        cache_default("remote_load_margin"),
        "load remote pages only if estimated load time x this < recompute time; 0: always",
    )
    policy: str = _opt(
        cache_default("policy"), "eviction policy: adaptive, workload, lru, lfu, slru"
    )
    write_policy: str = _opt(
        cache_default("write_policy"),
        "write_through, write_through_selective or write_back (device -> host -> remote)",
        "--hicache-write-policy",
    )
    remote_admission: float = _opt(
        cache_default("remote_admission"),
        "0: write every page copied down on to the remote tier; a share in (0, 1]: only pages "
        "of a kind read again at least that often, or read again already",
    )
    remote_write_backlog_gb: float | None = _opt(
        None,
        "remote writes not yet acknowledged, at most (GiB); past it new writes are shed and "
        "counted, the pages staying on host (default: an eighth of the host tier)",
    )
    tenant: str = _opt("", "salt that isolates this tenant's cache entries from other tenants'")
    kv_events_endpoint: str | None = _opt(
        None,
        "publish the device and host tiers' block events in vLLM's KV-event format (ZMQ PUB, "
        "msgpack) on this endpoint, e.g. tcp://*:5557, for routers with a prefix index; needs "
        "pip install 'radixkv[events]'",
    )
    kv_events_replay_endpoint: str | None = _opt(
        None, "ZMQ ROUTER endpoint answering replay requests of recent KV-event batches"
    )
    role: str = _opt(
        "both",
        "prefill: run prompts, write their pages through to the shared tier, answer without "
        "decoding (one token); decode: take a prompt's pages from the shared tier, waiting up to "
        "--handoff-timeout-ms for a prefill engine to write them; both: do everything here",
    )
    handoff_timeout_ms: float = _opt(
        5000.0,
        "a decode engine waits this long for a prompt's pages to reach the shared tier, then "
        "computes them itself",
    )
    remote_secret_file: str | None = _opt(
        None,
        "file (mode 600) holding the deployment's secret: every page and record written to the "
        "shared tier carries its MAC, and pages without a valid one are refused (default: "
        "$RADIXKV_REMOTE_SECRET, else unauthenticated pages)",
    )
    prefix_caching: bool = _opt(
        True,
        "reuse cached prefixes (off: every prompt is recomputed)",
        "--enable-prefix-caching",
        negative=(
            "--disable-radix-cache",
        ),  # --no-prefix-caching, --no-enable-prefix-caching: automatic
    )
    max_batch_tokens: int = _opt(
        2048,
        "tokens per forward step (long prompts are prefilled in chunks of this size)",
        "--max-num-batched-tokens",
        "--chunked-prefill-size",
    )
    max_model_len: int | None = _opt(
        None,
        "context length served: prompt plus output tokens at most (default: the model's own); "
        "may only shorten it",
        "--context-length",
    )
    max_running: int = _opt(
        64, "requests in the running batch at most", "--max-num-seqs", "--max-running-requests"
    )
    triton_kernels: str = _opt(
        "auto",
        "few-token decode kernels in Triton: batch-1 projections by a GEMV (the down projection "
        "computing its SwiGLU activation as it loads), RoPE fused with the KV write: auto (on "
        "CUDA in bf16/fp16 where they load, else off with a warning), on (needs CUDA and "
        "Triton), off",
    )
    cpu_int4: bool = _opt(
        True,
        "on a CPU in bfloat16 or the dtype auto picks, run a GGUF's Q4_1 weights as they are, "
        "in 4 bits (a quarter of the bytes a decode step reads); off, or an explicit float32: "
        "dequantized",
    )
    cuda_graph: bool = _opt(
        True,
        "replay CUDA graphs of the decode step and of one prompt's short extend (on CUDA with "
        "flashinfer; batch sizes up to max_running, extends up to 256 tokens; captured at "
        "start-up)",
        negative=("--disable-cuda-graph",),
    )
    overlap_schedule: str = _opt(
        "auto",
        "queue each plain greedy decode step on the last step's tokens before reading them, so "
        "that the host's work per step runs while the GPU computes: auto (on CUDA), on, off",
    )
    generation_config: str = _opt(
        "auto",
        "sampling for what a request leaves out: auto (the model's own generation settings), "
        "none (OpenAI's: temperature 1), or JSON such as '{\"temperature\": 0.7}'",
    )
    tool_call_parser: str = _opt(
        "auto",
        "how tool calls are read from the output: hermes (<tool_call> JSON blocks: Hermes, "
        "Qwen, and the fallback prompt), llama3_json, or auto (by the chat template)",
    )
    special_tokens_in_content: bool = _opt(
        False,
        "let special tokens typed in a chat message's content act as control tokens (off: "
        "they are text, so no message can forge a system turn or end another)",
    )
    prefetch_pages: int = _opt(
        256,
        "pages the prefetcher may promote between two steps: returning sessions' contexts "
        "(named by the X-Session-ID header or the user field) back to the device and host "
        "before their predicted return; 0: off",
    )
    share_hot_prefixes: bool = _opt(
        False,
        "with a remote tier: warm the host tier at start-up with the prefixes other processes "
        "sharing the tier read most, and publish this engine's every minute and at shutdown. "
        "The record holds those prefixes' token ids (a readable form of their text) in the "
        "shared tier: turn it on where every reader of the tier (the same tenant) may see them",
    )
    check_integrity: bool = _opt(False, "prove page ownership after every step (slow; for tests)")

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"EngineConfig.{name} {rule}, got {getattr(self, name)!r}")

        for name in ("page_size", "max_batch_tokens", "max_running", "remote_pages"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "must be an integer >= 1")
        if (
            not isinstance(self.prefetch_pages, int)
            or isinstance(self.prefetch_pages, bool)
            or (self.prefetch_pages < 0)
        ):
            raise bad("prefetch_pages", "must be an integer >= 0")
        if self.max_model_len is not None and (
            not isinstance(self.max_model_len, int)
            or isinstance(self.max_model_len, bool)
            or self.max_model_len < 2
        ):
            raise bad("max_model_len", "must be an integer >= 2 (or None: the model's own)")
        for name, low, strict in (
            ("kv_memory_gb", 0, True),
            ("host_memory_gb", 0, False),
        ):
            v = getattr(self, name)
            if (
                not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not math.isfinite(v)
                or (v <= low if strict else v < low)
            ):
                raise bad(name, f"must be a finite number {'>' if strict else '>='} {low}")
        if self.remote_max_gb is not None and not (
            isinstance(self.remote_max_gb, (int, float)) and 0 < self.remote_max_gb < math.inf
        ):
            raise bad("remote_max_gb", "must be a finite number > 0 (or None: automatic)")
        if self.remote_write_backlog_gb is not None and not (
            isinstance(self.remote_write_backlog_gb, (int, float))
            and not isinstance(self.remote_write_backlog_gb, bool)
            and 0 < self.remote_write_backlog_gb < math.inf
        ):
            raise bad("remote_write_backlog_gb", "must be a finite number > 0 (or None: automatic)")
        if self.dtype not in DTYPES:
            raise bad("dtype", f"must be one of {', '.join(DTYPES)}")
        if self.kv_cache_dtype not in KV_DTYPES:
            raise bad("kv_cache_dtype", f"must be one of {', '.join(KV_DTYPES)}")
        if self.attention not in ATTENTION:
            raise bad("attention", f"must be one of {', '.join(ATTENTION)}")
        if self.prefix_attention_kernel not in PREFIX_KERNELS:
            raise bad("prefix_attention_kernel", f"must be one of {', '.join(PREFIX_KERNELS)}")
        if not isinstance(self.device, str) or not self.device:
            raise bad("device", "must be a device name such as cuda or cpu")
        for name in (
            "prefix_caching",
            "cuda_graph",
            "cpu_int4",
            "check_integrity",
            "special_tokens_in_content",
        ):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        for name in ("kv_events_endpoint", "kv_events_replay_endpoint"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, str) and "://" in v):
                raise bad(name, "must be a ZMQ endpoint such as tcp://127.0.0.1:5557 (or None)")
        if self.kv_events_replay_endpoint is not None and self.kv_events_endpoint is None:
            raise bad("kv_events_replay_endpoint", "needs kv_events_endpoint")
        if self.remote_secret_file is not None and not (
            isinstance(self.remote_secret_file, str) and self.remote_secret_file
        ):
            raise bad("remote_secret_file", "must be a path (or None)")
        if self.remote_url is not None and not isinstance(self.remote_url, str):
            raise bad("remote_url", "must be a URL, 'default' or 'none'")
        if self.role not in ROLES:
            raise bad("role", f"must be one of {', '.join(ROLES)}")
        if self.role != "both" and (self.remote_url is None or self.remote_url.lower() == "none"):
            raise bad(
                "role", f"{self.role} hands pages over through the shared tier: give --remote-url"
            )
        if self.role != "both" and not self.prefix_caching:
            raise bad("role", f"{self.role} needs prefix caching (the handoff is a cached prefix)")
        if not (isinstance(self.handoff_timeout_ms, (int, float)) and self.handoff_timeout_ms >= 0):
            raise bad("handoff_timeout_ms", "must be >= 0")
        check_engine_settings("EngineConfig", {n: getattr(self, n) for n in ENGINE_SETTINGS})
        if self.generation_config not in ("auto", "none"):
            try:
                parse_overrides(self.generation_config)
            except (ValueError, TypeError) as err:
                raise bad("generation_config", str(err).split(", got")[0]) from None
        for name in ("overlap_schedule", "triton_kernels"):
            if getattr(self, name) not in SWITCH:
                raise bad(name, f"must be one of {', '.join(SWITCH)}")
        if self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise bad("tool_call_parser", f"must be one of {', '.join(TOOL_CALL_PARSERS)}")

    def cache_config(self, layout: KVLayout, *, has_store: bool) -> CacheConfig:
        """The cache's configuration for this engine: the one place engine settings become cache
        settings (sizes in GiB to pages of `layout`; the rest by the same names)."""

        def pages(gib: float) -> int:
            return int(gib * 2**30) // layout.page_bytes

        backlog = self.remote_write_backlog_gb
        return CacheConfig(
            device_pages=max(1, pages(self.kv_memory_gb)),
            host_pages=pages(self.host_memory_gb),
            remote_pages=self.remote_pages if has_store else 0,
            remote_write_backlog_pages=None if backlog is None else max(1, pages(backlog)),
            **{name: getattr(self, name) for name in ENGINE_SETTINGS},
        )

    def replace(self, **overrides: Any) -> EngineConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> EngineConfig:
        """Fields from a YAML or JSON file (names with - or _), then `overrides` on top."""
        return cls(**{**read_config_file(path), **overrides})


FIELDS = {f.name: f for f in fields(EngineConfig)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The fields a YAML (.yaml, .yml) or JSON file sets; unknown names are an error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # the parsers' own error types differ
        raise ValueError(f"config file {path} does not parse: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(out) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"config file {path}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(FIELDS)})"
        )
    return out
