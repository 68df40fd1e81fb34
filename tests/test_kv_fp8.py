"""FP8 KV pages (`kv_cache_dtype="fp8_e4m3"`, CPU): they go through the host and remote tiers
and back with the same tokens, and engines with other KV pages never read them from a shared
tier (the dtype and scale scheme are part of the namespace)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from engine.attention.kv_write import FP8, check_fp8_capability, kv_cache_dtype, to_kv  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from radixkv import DEVICE, Engine  # noqa: E402
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402

PROMPT = [(7 * i + 3) % 97 + 1 for i in range(70)]  # 4 full pages and a tail


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-fp8")
    save_tiny_llama(path)
    return str(path)


def _engine(path: str, kv: str, remote: str | None = None) -> Engine:
    return Engine(
        path,
        device="cpu",
        kv_cache_dtype=kv,
        kv_memory_gb=gb(16),
        host_memory_gb=gb(16),
        remote_url=remote,
        remote_load_margin=0.0,  # the tiny model recomputes faster than any store loads
        check_integrity=True,
    )


def test_fp8_pages_saturate_and_round_trip_through_the_tiers(tiny):
    big = torch.tensor([1e4, -1e4, 3.0])
    assert to_kv(big, FP8).float().tolist() == [448.0, -448.0, 3.0]  # not NaN
    with _engine(tiny, "fp8_e4m3") as eng:
        assert eng.cache.layout.dtype == FP8
        first = eng.generate([PROMPT], max_tokens=6, ignore_eos=True, temperature=0)[0]
        eng.cache.wait_idle()
        eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)  # to host, as fp8 bytes
        again = eng.generate([PROMPT], max_tokens=6, ignore_eos=True, temperature=0)[0]
    assert again.cached_tokens_by_tier["host"] == 64 and again.token_ids == first.token_ids


def test_engines_with_other_kv_pages_never_read_each_others(tiny, tmp_path):
    remote = (tmp_path / "shared").as_uri()
    with _engine(tiny, "auto", remote) as plain:
        plain.generate([PROMPT], max_tokens=2, ignore_eos=True)
        plain.cache.wait_idle()  # its pages are in the shared tier
    with _engine(tiny, "fp8_e4m3", remote) as fp8:
        r = fp8.generate([PROMPT], max_tokens=2, ignore_eos=True)[0]
        fp8.cache.wait_idle()
    assert r.cached_tokens == 0  # the float32 pages are another namespace
    with _engine(tiny, "fp8_e4m3", remote) as other:
        r = other.generate([PROMPT], max_tokens=2, ignore_eos=True)[0]
    assert r.cached_tokens_by_tier["remote"] == 64  # an fp8 engine reads the fp8 pages
    with _engine(tiny, "auto", remote) as plain:
        r = plain.generate([PROMPT], max_tokens=2, ignore_eos=True)[0]
    assert r.cached_tokens_by_tier["remote"] == 64  # and a float32 one its own, not fp8's


def test_bad_kv_dtypes_are_refused():
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(kv_cache_dtype="fp4")
    with pytest.raises(ValueError, match="compute capability 8.9 or newer, this one is 8.0"):
        check_fp8_capability((8, 0))  # an A100: no float8 conversions
    check_fp8_capability((9, 0))  # an H100 or H200
    assert kv_cache_dtype("auto", torch.bfloat16, torch.device("cuda")) == torch.bfloat16
