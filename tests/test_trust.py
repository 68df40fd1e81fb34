"""The shared tier serves only the right model's pages, and only pages its own deployment wrote.

Engines on the tiny Llama share a real Redis or a directory. Every "0 hits across" assertion has
a control beside it (the same model and secret on a second engine does hit), so it cannot pass
because the tier was never read.
"""

from __future__ import annotations

import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from radixkv import Engine  # noqa: E402
from storage import encode_page  # noqa: E402
from storage.layout import CODE_DTYPES  # noqa: E402
from tests.paged_runner import hf_greedy  # noqa: E402
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402

PROMPT = [(i * 11) % 97 + 1 for i in range(150)]  # 9 full pages of 16
SECRET = "a-deployment-secret-of-32-bytes!"


def variant(a, path, change):
    """A copy of checkpoint `a` with `change(state)` applied to its tensors; (path, HF model)."""
    import transformers
    from safetensors.torch import load_file, save_file

    for f in a.iterdir():
        shutil.copy(f, path / f.name)
    (weights,) = path.glob("*.safetensors")
    state = load_file(weights)
    change(state)
    save_file(state, weights, metadata={"format": "pt"})
    return path, transformers.LlamaForCausalLM.from_pretrained(path).float().eval()


def redraw(state) -> None:
    gen = torch.Generator().manual_seed(11)
    for t in state.values():
        t.copy_(torch.randn(t.shape, generator=gen) * t.std())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoints of one config and shapes: `a`; `b`, `a` with one weight moved by 0.5 (a
    fine-tune's smallest step); `c`, every weight drawn again (another seed)."""
    a = tmp_path_factory.mktemp("model-a")
    hf_a = save_tiny_llama(a)

    def nudge(state) -> None:
        state["model.layers.0.self_attn.k_proj.weight"][0, 0] += 0.5

    b = variant(a, tmp_path_factory.mktemp("model-b"), nudge)
    c = variant(a, tmp_path_factory.mktemp("model-c"), redraw)
    return (a, hf_a), b, c


def engine(path, url: str, **overrides) -> Engine:
    """Host and remote tiers, every remote load forced (the tiny model recomputes faster)."""
    options = dict(
        device="cpu",
        kv_memory_gb=gb(32),
        host_memory_gb=gb(48),
        remote_url=url,
        remote_load_margin=0.0,
        check_integrity=True,
    )
    return Engine(str(path), **{**options, **overrides})


def serve(path, url: str, **overrides):
    """One request on a fresh engine; its writes reach the store before it closes."""
    with engine(path, url, **overrides) as eng:
        r = eng.generate([PROMPT], max_tokens=6, ignore_eos=True)[0]
        eng.cache.wait_idle(timeout_s=30)
        return r, eng.cache.store.stats.as_dict(), eng.core.model_identity


@pytest.fixture
def redis_url(redis_server, request):
    return f"{redis_server.url}?prefix=trust-{request.node.name[:40]}:"


@pytest.mark.parametrize("other", ["one weight moved", "another seed"])
def test_checkpoints_of_one_shape_share_no_page(checkpoints, redis_url, other):
    (a, hf_a), *variants = checkpoints
    b, hf_b = variants[0] if other == "one weight moved" else variants[1]
    want_a, want_b = hf_greedy(hf_a, PROMPT, 6), hf_greedy(hf_b, PROMPT, 6)
    if other == "another seed":
        assert want_a != want_b  # a's pages would change b's answer
    first, _, id_a = serve(a, redis_url)
    other, _, id_b = serve(b, redis_url)
    control, _, _ = serve(a, redis_url)
    assert id_a != id_b
    assert first.token_ids == control.token_ids == want_a
    assert other.token_ids == want_b  # its own cold answer
    assert other.cached_tokens_by_tier["remote"] == 0  # nothing of a's was read
    assert control.cached_tokens_by_tier["remote"] == 144  # the tier does serve a's own pages


def test_a_bfloat16_and_a_float32_engine_share_no_page(checkpoints, redis_url):
    (a, hf_a), *_ = checkpoints
    f32, _, _ = serve(a, redis_url, dtype="float32")
    bf16, _, _ = serve(a, redis_url, dtype="bfloat16")
    again, _, _ = serve(a, redis_url, dtype="bfloat16")
    assert f32.token_ids == hf_greedy(hf_a, PROMPT, 6)
    assert bf16.cached_tokens_by_tier["remote"] == 0
    assert again.cached_tokens_by_tier["remote"] == 144 and again.token_ids == bf16.token_ids


def stored_pages(url: str, tmp_path) -> list[tuple[object, bytes]]:
    """(where, blob) of every page in the store, as an attacker with write access sees them."""
    if url.startswith("file://"):
        root = Path(url[len("file://") :])
        return [(p, p.read_bytes()) for p in sorted(root.glob("??/*"))]
    import redis

    client = redis.Redis.from_url(url.split("?")[0])
    prefix = url.split("prefix=")[1]
    return [(k, client.get(k)) for k in client.scan_iter(match=prefix + "*")]


def key_of_first_page(path, url: str) -> str:
    """The stored name of PROMPT's first page under the engine's namespace."""
    with engine(path, url) as eng:
        ns = eng.cache.namespace
        return ns.page_keys(None, PROMPT, 1)[0].hex()


def overwrite(url: str, where, blob: bytes) -> None:
    if url.startswith("file://"):
        where.write_bytes(blob)
    else:
        import redis

        redis.Redis.from_url(url.split("?")[0]).set(where, blob)


def forge(blob: bytes, downgrade: bool) -> bytes:
    """The page with other KV: its tag kept (`downgrade` False), or re-framed as a plain page
    with a valid CRC, which anyone can compute."""
    # the header's documented layout (storage/codec.py): the attacker knows the format
    _, _, dtype_code, ndim, ns, key, nbytes = struct.unpack_from("<4sHBB16s16sQ", blob, 0)
    dims = struct.unpack_from(f"<{ndim}I", blob, len(blob) - nbytes - 4 * ndim)
    evil = torch.full((nbytes // 4,), 3.0).numpy().tobytes()
    if downgrade:
        dtype = CODE_DTYPES[dtype_code]
        return encode_page(evil, namespace=ns, key=key, shape=tuple(dims), dtype=dtype)
    return blob[: len(blob) - nbytes] + evil


@pytest.mark.parametrize("tier", ["file", "redis"])
def test_pages_rewritten_by_anyone_without_the_secret_are_never_served(
    checkpoints, tier, tmp_path, request, monkeypatch
):
    (a, hf_a), *_ = checkpoints
    monkeypatch.setenv("RADIXKV_REMOTE_SECRET", SECRET)
    url = (tmp_path / "tier").as_uri() if tier == "file" else request.getfixturevalue("redis_url")
    serve(a, url)
    pages = stored_pages(url, tmp_path)
    assert len(pages) == 9
    for i, (where, blob) in enumerate(pages):
        overwrite(url, where, forge(blob, downgrade=i % 2 == 1))
    r, stats, _ = serve(a, url)
    assert r.token_ids == hf_greedy(hf_a, PROMPT, 6)  # a cold run's answer
    assert r.cached_tokens_by_tier["remote"] == 0  # not one forged page served
    reasons = stats["corrupt_reasons"]
    assert reasons.get("authentication failed", 0) >= 1
    assert reasons.get("unauthenticated page (this engine requires a MAC)", 0) >= 1
    again, _, _ = serve(a, url)  # the engine wrote the real pages back
    assert again.cached_tokens_by_tier["remote"] == 144


def test_engines_with_another_secret_share_no_page(checkpoints, redis_url, monkeypatch):
    (a, _), *_ = checkpoints
    monkeypatch.setenv("RADIXKV_REMOTE_SECRET", SECRET)
    serve(a, redis_url)
    monkeypatch.setenv("RADIXKV_REMOTE_SECRET", "another-deployment-entirely-0123")
    other, _, _ = serve(a, redis_url)
    monkeypatch.delenv("RADIXKV_REMOTE_SECRET")
    unauthenticated, _, _ = serve(a, redis_url)
    monkeypatch.setenv("RADIXKV_REMOTE_SECRET", SECRET)
    control, _, _ = serve(a, redis_url)
    assert other.cached_tokens_by_tier["remote"] == 0
    assert unauthenticated.cached_tokens_by_tier["remote"] == 0
    assert control.cached_tokens_by_tier["remote"] == 144


@pytest.mark.parametrize("tier", ["file", "redis"])
def test_a_planted_64_mb_entry_is_never_read(checkpoints, tier, tmp_path, request):
    """The prompt's first page replaced by 64 MB: the read allocates what a page takes."""
    (a, hf_a), *_ = checkpoints
    url = (tmp_path / "tier").as_uri() if tier == "file" else request.getfixturevalue("redis_url")
    serve(a, url)
    first_key = key_of_first_page(a, url)
    names = {
        w: w.decode() if isinstance(w, bytes) else str(w) for w, _ in stored_pages(url, tmp_path)
    }
    (where,) = [w for w, name in names.items() if name.endswith(first_key)]
    overwrite(url, where, b"\0" * (64 << 20))
    with engine(a, url) as eng:
        tracemalloc.start()
        r = eng.generate([PROMPT], max_tokens=6, ignore_eos=True)[0]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        reasons = eng.cache.store.stats.as_dict()["corrupt_reasons"]
    assert r.token_ids == hf_greedy(hf_a, PROMPT, 6)
    assert r.cached_tokens_by_tier["remote"] == 0
    assert reasons.get("entry larger than a page", 0) >= 1
    assert peak < 50 << 20, f"the request allocated {peak / 2**20:.0f} MiB"


def test_a_secret_file_must_be_private_and_long_enough(tmp_path):
    from storage.page_auth import read_secret

    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    f.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_secret(f)
    f.chmod(0o600)
    assert read_secret(f) == SECRET.encode()
    f.write_text("short")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        read_secret(f)


def test_the_file_tier_is_private_to_its_user(checkpoints, tmp_path):
    (a, _), *_ = checkpoints
    root = tmp_path / "tier"
    serve(a, root.as_uri())
    modes = {p.name: p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}
    assert modes and all(m in (0o700, 0o600) for m in modes.values()), modes


def test_an_engine_starts_and_serves_over_a_planted_bad_hot_prefix_record(
    checkpoints, tmp_path, monkeypatch
):
    """The three shapes that killed the engine thread, each framed with the right key (an
    insider's bug, not a forgery): the engine starts, serves, counts and removes each."""
    import json

    from radixkv.cache.prefetch.hot_prefixes import frame_record, publish, record_key

    (a, hf_a), *_ = checkpoints
    monkeypatch.setenv("RADIXKV_REMOTE_SECRET", SECRET)
    url = (tmp_path / "tier").as_uri()
    want = hf_greedy(hf_a, PROMPT, 6)
    for record in ({"v": 1}, {"v": 1, "prefixes": [5]}, {"v": 1, "prefixes": [[[2**64], 3]]}):
        with engine(a, url) as eng:
            cache = eng.cache
            blob = frame_record(cache, json.dumps(record).encode())
            path = tmp_path / "tier" / record_key(cache).hex()[:2] / record_key(cache).hex()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        with engine(a, url, share_hot_prefixes=True) as eng:
            r = eng.generate([PROMPT], max_tokens=6, ignore_eos=True)[0]
            eng.generate([PROMPT, PROMPT], max_tokens=1)  # read again: a hot prefix to publish
            path.write_bytes(blob)  # planted again: the minutely publish reads it too
            publish(eng.cache)
            eng.cache.wait_idle(timeout_s=30)
            again = eng.generate([PROMPT[:40]], max_tokens=2, ignore_eos=True)[0]
            reasons = eng.cache.store.stats.as_dict()["corrupt_reasons"]
        assert r.token_ids == want and again.finish_reason == "length"
        assert sum(n for why, n in reasons.items() if why.startswith("hot-prefix")) == 2
