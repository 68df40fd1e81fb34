"""KV events: the cache's device and host residency, published in vLLM's KV-event format, so that
routers with an exact prefix index (SMG, NVIDIA Dynamo's KV router, llm-d) can follow it.

A block is a cached page; its hash is the page's chained key (16 bytes: `radixkv.cache.namespace`,
the same for every engine of one model, KV format, tenant and deployment). Events, as vLLM's
`vllm.distributed.kv_events` defines them (msgpack, array-like structs, tagged by class name):

    KVEventBatch [ts, [event, ...]]  (then data_parallel_rank, left out: None)
    BlockStored  ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
                  lora_id, medium]
    BlockRemoved ["BlockRemoved", block_hashes, medium]
    AllBlocksCleared ["AllBlocksCleared"]

`medium` says which tier: "GPU" for the device tier (also on a CPU-only engine: it is the tier
attention reads), "CPU" for the host tier. A page demoted from the device to the host is a
`BlockRemoved` on "GPU" (its host copy was announced when it was made), never a removal from the
engine. Transport as vLLM's `ZmqEventPublisher`: a PUB socket sends [topic, seq (8 bytes, big
endian), payload] per batch; a ROUTER replay socket answers a client's 8-byte start seq with
[seq, payload] for every batch still buffered from it, then [-1, b""].

Events are collected by the engine thread as the cache changes and sent once per step
(`flush`); the sockets are used from that thread only.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from radixkv.cache.tiers import DEVICE, HOST

log = logging.getLogger(__name__)

MEDIUM = {DEVICE: "GPU", HOST: "CPU"}
REPLAY_BATCHES = 10_000  # batches kept for replay
SEQ_BYTES = 8


class KVEventPublisher:
    """Publishes a cache's residency changes; `record` is the cache's `on_residency`."""

    def __init__(
        self, cache, endpoint: str, replay_endpoint: str | None = None, topic: str = ""
    ) -> None:
        import msgspec
        import zmq

        self.cache, self.topic = cache, topic.encode()
        self.encoder = msgspec.msgpack.Encoder()
        self.context = zmq.Context.instance()
        self.pub = self.context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.bind(endpoint)
        self.replay = None
        if replay_endpoint:
            self.replay = self.context.socket(zmq.ROUTER)
            self.replay.bind(replay_endpoint)
        self.pending: list = []
        self.seq = 0
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=REPLAY_BATCHES)
        self.zmq = zmq

    def record(self, node, tier: int, stored: bool) -> None:
        """A node's pages arrived on (`stored`) or left `tier` (the engine thread)."""
        if tier not in MEDIUM:
            return
        keys = list(self.cache.page_keys(node))
        if not stored:
            self.pending.append(["BlockRemoved", keys, MEDIUM[tier]])
            return
        parent = node.parent
        prev = None if parent is None or parent.is_root else self.cache.page_keys(parent)[-1]
        ps = self.cache.page_size
        self.pending.append(["BlockStored", keys, prev, list(node.key), ps, None, MEDIUM[tier]])

    def cleared(self) -> None:
        self.pending.append(["AllBlocksCleared"])

    def flush(self) -> None:
        """Send what was recorded since the last flush as one batch, and answer replays."""
        if self.pending:
            payload = self.encoder.encode([time.time(), self.pending])
            self.pending = []
            seq = self.seq.to_bytes(SEQ_BYTES, "big", signed=True)
            self.buffer.append((self.seq, payload))
            self.seq += 1
            try:
                self.pub.send_multipart([self.topic, seq, payload], flags=self.zmq.NOBLOCK)
            except self.zmq.Again:  # no subscriber keeps up: the batch stays replayable
                log.warning("KV event batch %d not sent: subscribers are too slow", seq)
        while self.replay is not None and self.replay.poll(0):
            identity, *frames = self.replay.recv_multipart()
            start = int.from_bytes(frames[-1], "big", signed=True) if frames else 0
            for s, payload in self.buffer:
                if s >= start:
                    wire = s.to_bytes(SEQ_BYTES, "big", signed=True)
                    self.replay.send_multipart([identity, b"", wire, payload])
            end = (-1).to_bytes(SEQ_BYTES, "big", signed=True)
            self.replay.send_multipart([identity, b"", end, b""])

    def close(self) -> None:
        self.flush()
        for sock in (self.pub, self.replay):
            if sock is not None:
                sock.close(linger=500)
