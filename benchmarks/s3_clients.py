"""Which S3 client the S3 store uses, by measurement: obstore (Rust, native asyncio) against
boto3 (threads), on a real SeaweedFS started here (or --endpoint with AWS_* credentials).

Per client and page size: put and get throughput of N pages in batches (the store's access
pattern), the latency of one small get, and how long a batch takes to fail against a dead
endpoint (a port nobody listens on, and one that accepts and never answers).

    python benchmarks/s3_clients.py [--pages 256] [--page-kb 360,2048] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radixkv.bench.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedS3  # noqa: E402


class Obstore:
    name = "obstore"

    def __init__(self, endpoint: str, bucket: str, timeout_s: float) -> None:
        from obstore.store import S3Store

        self.store = S3Store(
            bucket,
            endpoint=endpoint,
            region="us-east-1",
            access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            client_options={"allow_http": True, "timeout": f"{timeout_s}s"},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=timeout_s)},
        )

    async def put(self, items, limit):
        import obstore as obs

        sem = asyncio.Semaphore(limit)

        async def one(k, v):
            async with sem:
                await obs.put_async(self.store, k, v)

        await asyncio.gather(*(one(k, v) for k, v in items))

    async def get(self, keys, limit):
        import obstore as obs

        sem = asyncio.Semaphore(limit)

        async def one(k):
            async with sem:
                r = await obs.get_async(self.store, k)
                return bytes(await r.bytes_async())

        return await asyncio.gather(*(one(k) for k in keys))


class Boto3:
    name = "boto3 (threads)"

    def __init__(self, endpoint: str, bucket: str, timeout_s: float) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            config=Config(
                max_pool_connections=64,
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"max_attempts": 1},
            ),
        )
        self.pool = ThreadPoolExecutor(64)

    async def put(self, items, limit):
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(
                    self.pool,
                    lambda k=k, v=v: self.client.put_object(Bucket=self.bucket, Key=k, Body=v),
                )
                for k, v in items
            )
        )

    async def get(self, keys, limit):
        loop = asyncio.get_running_loop()

        def one(k):
            return self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read()

        return await asyncio.gather(*(loop.run_in_executor(self.pool, one, k) for k in keys))


def silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s, s.getsockname()[1]


async def measure(client, pages: int, page_bytes: int, limit: int) -> dict:
    payload = os.urandom(page_bytes)
    items = [(f"bench/{page_bytes}/{i:06d}", payload) for i in range(pages)]
    t = time.perf_counter()
    await client.put(items, limit)
    put_s = time.perf_counter() - t
    t = time.perf_counter()
    got = await client.get([k for k, _ in items], limit)
    get_s = time.perf_counter() - t
    assert all(g == payload for g in got)
    one = []
    for k, _ in items[:20]:
        t = time.perf_counter()
        await client.get([k], 1)
        one.append(time.perf_counter() - t)
    total = pages * page_bytes
    return {
        "put_MBps": total / put_s / 1e6,
        "get_MBps": total / get_s / 1e6,
        "one_get_ms": statistics.median(one) * 1000,
    }


async def fail_time(cls, endpoint: str, bucket: str, timeout_s: float) -> str:
    client = cls(endpoint, bucket, timeout_s)
    t = time.perf_counter()
    try:
        await asyncio.wait_for(client.get([f"k{i}" for i in range(16)], 16), 60)
        what = "answered?"
    except Exception as err:  # what a dead store raises, by client
        what = type(err).__name__
    return f"{time.perf_counter() - t:.2f} s ({what})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--page-kb", default="360,2048", help="page sizes (KiB), comma-separated")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--timeout-s", type=float, default=2.0, help="the clients' request timeout")
    ap.add_argument("--endpoint", help="an S3 endpoint to use instead of a local SeaweedFS")
    ap.add_argument("--bucket", default="radixkv")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3-clients-") as tmp:
        server = None
        endpoint = args.endpoint
        if endpoint is None:
            server = SeaweedS3(Path(tmp), args.bucket).start()
            endpoint = server.endpoint
        try:
            print(
                f"S3 endpoint {endpoint}; {args.pages} pages per size, {args.concurrency} at once"
            )
            print(f"{'client':<18}{'page':>8}{'put MB/s':>10}{'get MB/s':>10}{'1 get ms':>10}")
            for kb in (int(x) for x in args.page_kb.split(",")):
                for cls in (Obstore, Boto3):
                    client = cls(endpoint, args.bucket, args.timeout_s)
                    r = asyncio.run(measure(client, args.pages, kb * 1024, args.concurrency))
                    print(
                        f"{cls.name:<18}{kb:>6}KB{r['put_MBps']:>10.0f}{r['get_MBps']:>10.0f}"
                        f"{r['one_get_ms']:>10.2f}"
                    )
            closed = f"http://127.0.0.1:{SeaweedS3(Path(tmp)).ports[0]}"  # nobody listens
            sock, port = silent_port()
            print(f"\na batch of 16 gets against a dead endpoint (timeout {args.timeout_s} s):")
            for cls in (Obstore, Boto3):
                refused = asyncio.run(fail_time(cls, closed, args.bucket, args.timeout_s))
                hung = asyncio.run(
                    fail_time(cls, f"http://127.0.0.1:{port}", args.bucket, args.timeout_s)
                )
                print(f"{cls.name:<18} refused: {refused}   never answers: {hung}")
            sock.close()
        finally:
            if server is not None:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
