"""KV events in vLLM's format: a subscriber written only from vLLM's documented schema (pyzmq and
msgspec; the structs below are vLLM's `vllm.distributed.kv_events`, nothing of radixkv's) follows
an engine through a random workload with evictions and rebuilds exactly its device-resident
pages, and its host-resident ones."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

zmq = pytest.importorskip("zmq")
msgspec = pytest.importorskip("msgspec")
pytest.importorskip("transformers")

from radixkv import Engine  # noqa: E402
from tests.live_server import free_port  # noqa: E402
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402


# ---- vLLM's event types, as its kv_events_subscriber example declares them ----------------------
class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    """Base class for all KV cache-related events."""


class BlockStored(KVCacheEvent):
    block_hashes: list[bytes | int]
    parent_block_hash: bytes | int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[bytes | int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


def follow(sub, decoder, blocks: dict[str, set], last_seq: list[int], timeout_s: float) -> None:
    """Apply every batch that arrives within `timeout_s` of the last one."""
    while sub.poll(int(timeout_s * 1000)):
        _topic, seq, payload = sub.recv_multipart()
        seq = int.from_bytes(seq, "big", signed=True)
        assert seq == last_seq[0] + 1, "a batch was lost"
        last_seq[0] = seq
        for event in decoder.decode(payload).events:
            if isinstance(event, BlockStored):
                blocks[event.medium].update(event.block_hashes)
            elif isinstance(event, BlockRemoved):
                blocks[event.medium].difference_update(event.block_hashes)
            else:
                for s in blocks.values():
                    s.clear()


def resident(cache, tier: str) -> set[bytes]:
    out: set[bytes] = set()
    stack = list(cache.tree.root.children.values())
    while stack:
        node = stack.pop()
        if (node.device if tier == "GPU" else node.host) is not None:
            out.update(cache.page_keys(node))
        stack.extend(node.children.values())
    return out


def test_a_subscriber_rebuilds_the_device_and_host_tiers_from_the_events(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    save_tiny_llama(path)
    endpoint, replay = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
    blocks: dict[str, set] = {"GPU": set(), "CPU": set()}
    last_seq = [-1]
    rng = random.Random(7)
    shared = [[rng.randrange(1, 97) for _ in range(48)] for _ in range(6)]
    with Engine(
        str(path),
        device="cpu",
        kv_memory_gb=gb(24),  # small: requests evict each other's pages on device and host
        host_memory_gb=gb(40),
        remote_url=None,
        check_integrity=True,
        kv_events_endpoint=endpoint,
        kv_events_replay_endpoint=replay,
    ) as eng:
        sub.connect(endpoint)
        time.sleep(0.3)  # a PUB socket drops what it sends before the subscription arrives
        for _ in range(12):
            prompts = [
                rng.choice(shared) + [rng.randrange(1, 97) for _ in range(rng.randrange(1, 40))]
                for _ in range(rng.randrange(1, 5))
            ]
            eng.generate(prompts, max_tokens=rng.randrange(1, 8), ignore_eos=True)
            follow(sub, decoder, blocks, last_seq, 0.05)
        eng.cache.flush()  # every unheld page dropped: removals for all of it
        eng.core.kv_events.flush()
        follow(sub, decoder, blocks, last_seq, 0.5)
        assert blocks["GPU"] == resident(eng.cache, "GPU") == set()
        eng.generate([shared[0] + [5, 6, 7]], max_tokens=3, ignore_eos=True)
        follow(sub, decoder, blocks, last_seq, 0.5)
        stored_before_flush = last_seq[0]
        gpu, cpu = resident(eng.cache, "GPU"), resident(eng.cache, "CPU")
        evicted = eng.cache.counters.evicted_pages
        assert blocks["GPU"] == gpu and blocks["CPU"] == cpu and gpu
        assert evicted[0] > 0  # the workload did evict from the device tier

        # a subscriber that joined late asks the replay socket for everything from seq 0
        late = context.socket(zmq.DEALER)
        late.connect(replay)
        late.send_multipart([b"", (0).to_bytes(8, "big", signed=True)])
        time.sleep(0.2)
        eng.core.kv_events.flush()  # served between steps (the engine thread's; here this one)
        replayed: dict[str, set] = {"GPU": set(), "CPU": set()}
        while True:
            assert late.poll(5000), "the replay socket did not answer"
            _, seq, payload = late.recv_multipart()
            if int.from_bytes(seq, "big", signed=True) == -1:
                break
            for event in decoder.decode(payload).events:
                if isinstance(event, BlockStored):
                    replayed[event.medium].update(event.block_hashes)
                elif isinstance(event, BlockRemoved):
                    replayed[event.medium].difference_update(event.block_hashes)
        assert replayed["GPU"] == gpu and replayed["CPU"] == cpu
        assert stored_before_flush >= 12
    sub.close(linger=0)
    late.close(linger=0)
    context.term()


def test_a_serving_engine_answers_replay_requests_while_idle(tmp_path):
    """Under the server's engine thread the replay socket is served between steps and while
    nothing runs (no test thread flushes here)."""
    from tests.live_server import live_server

    path = tmp_path / "model"
    path.mkdir()
    save_tiny_llama(path)
    replay = f"tcp://127.0.0.1:{free_port()}"
    with (
        Engine(
            str(path),
            device="cpu",
            kv_memory_gb=gb(24),
            host_memory_gb=0,
            remote_url=None,
            kv_events_endpoint=f"tcp://127.0.0.1:{free_port()}",
            kv_events_replay_endpoint=replay,
        ) as eng,
        live_server(eng) as (url, loop),
    ):
        import httpx

        r = httpx.post(url + "/generate", json={"input_ids": list(range(1, 40))}, timeout=60)
        assert r.status_code == 200
        time.sleep(0.5)  # idle now
        context = zmq.Context()
        late = context.socket(zmq.DEALER)
        late.connect(replay)
        late.send_multipart([b"", (0).to_bytes(8, "big", signed=True)])
        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        stored = set()
        while True:
            assert late.poll(5000), "the idle engine did not answer the replay request"
            _, seq, payload = late.recv_multipart()
            if int.from_bytes(seq, "big", signed=True) == -1:
                break
            for event in decoder.decode(payload).events:
                if isinstance(event, BlockStored):
                    stored.update(event.block_hashes)
        import asyncio

        on_device = asyncio.run(loop.call(lambda: resident(eng.cache, "GPU")))
        assert stored == on_device and len(stored) >= 2  # the prompt's full pages at least
        late.close(linger=0)
        context.term()
