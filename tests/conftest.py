"""Shared helpers: tiny layouts and page contents that are a pure function of their prefix."""

from __future__ import annotations

import hashlib
import os
from array import array

import pytest
import torch
from hypothesis import settings

from storage import KVLayout

# CI (`.ci/run` sets RADIXKV_CI) replays the same property-test examples on every run, so that a
# failure there is the change's and not the draw's; a run anywhere else draws new examples
settings.register_profile("ci", derandomize=True)
if os.environ.get("RADIXKV_CI"):
    settings.load_profile("ci")

# real Redis and Mooncake master servers on loopback, session-wide, for any test that names them
pytest_plugins = ["tests.store_servers"]

TINY = KVLayout(num_layers=2, num_kv_heads=1, head_dim=2, page_size=2, dtype=torch.float32)


def page_content(layout: KVLayout, prefix_tokens: tuple[int, ...]) -> torch.Tensor:
    """The KV a model would write for the last page of `prefix_tokens` (host layout)."""
    seed = int.from_bytes(
        hashlib.blake2b(array("q", prefix_tokens).tobytes(), digest_size=4).digest(), "little"
    )
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(layout.page_shape, generator=gen).to(layout.dtype)


def write_pages(cache, tokens, pages, first_page: int = 0) -> None:
    """Fill device pages[i] with the content of page (first_page + i) of `tokens`."""
    ps = cache.page_size
    for i, p in enumerate(pages):
        end = (first_page + i + 1) * ps
        cache.device_pool.data[:, p] = page_content(cache.layout, tuple(tokens[:end])).to(
            cache.device_pool.device
        )


def assert_pages_hold(cache, tokens, pages) -> None:
    """Device pages[i] hold exactly the content of page i of `tokens`."""
    ps = cache.page_size
    for i, p in enumerate(pages):
        want = page_content(cache.layout, tuple(tokens[: (i + 1) * ps]))
        got = cache.device_pool.data[:, p].cpu()
        assert torch.equal(got, want), f"page {i} of the prefix holds the wrong bytes"


@pytest.fixture
def tiny_layout() -> KVLayout:
    return TINY


def cpu_engine(model: str | None = None, **overrides):
    """A `radixkv.Engine` for a test: on CPU, device tier only (no host tier, no remote tier),
    unless the test asks for them (`host_memory_gb=...`, `remote_url=...`)."""
    from radixkv import Engine

    options = {"device": "cpu", "host_memory_gb": 0, "remote_url": None, **overrides}
    return Engine(model, **options) if model is not None else Engine(**options)
