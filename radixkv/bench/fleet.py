"""Several radixkv engines behind the SMG gateway (`pip install smg`), optionally sharing one
Redis tier, all as child processes on loopback: what the multi-engine benchmark and the gateway
tests run. The gateway is SMG's own binary; nothing here routes a request."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from radixkv.bench.local_server import ServerProcess, free_port

# what SMG logs when it cannot tell what a worker is or how to ask it for its model
DISCOVERY_WARNINGS = ("Could not identify backend engine", "returned 404", "Failed to fetch")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def smg_binary() -> str | None:
    """The `smg` launcher installed beside this Python, else on PATH."""
    near = Path(sys.executable).parent / "smg"
    return str(near) if near.is_file() else shutil.which("smg")


def redis_binary() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


def redis_command(binary: str, port: int, maxmemory_mb: int, *extra: str) -> list[str]:
    """A redis-server for a cache tier: loopback only, no persistence, LRU past `maxmemory_mb`."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        f"{maxmemory_mb}mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--protected-mode",
        "yes",
        *extra,
    ]


def wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Block until `proc` listens on `port`; raises if it exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.args[0]} did not listen on {port}")
        time.sleep(0.05)


class Gateway:
    """`smg launch` in front of `worker_urls` with a routing `policy`; health checked every
    second so a dead worker leaves the rotation within a few seconds. With `prefill_urls`, SMG's
    prefill/decode mode: each request goes to a prefill worker and to a decode worker (one of
    `worker_urls`), and the decode worker's answer comes back."""

    def __init__(
        self,
        worker_urls: list[str],
        policy: str,
        log_path: Path,
        extra: tuple[str, ...] = (),
        prefill_urls: list[str] = (),
    ) -> None:
        binary = smg_binary()
        if binary is None:
            raise FileNotFoundError("the SMG gateway is not installed (pip install smg)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.worker_urls = [*prefill_urls, *worker_urls]
        cmd = [binary, "launch", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
        if prefill_urls:
            # the prefill worker's "bootstrap port" is its own HTTP port: SMG probes that it
            # accepts connections; radixkv needs no rendezvous beyond the shared tier
            cmd += ["--pd-disaggregation"]
            for url in prefill_urls:
                cmd += ["--prefill", url, url.rsplit(":", 1)[1]]
            for url in worker_urls:
                cmd += ["--decode", url]
        else:
            cmd += ["--worker-urls", *worker_urls]
        cmd += ["--policy", policy]
        cmd += ["--health-check-interval-secs", "1", "--health-failure-threshold", "1"]
        cmd += ["--load-monitor-interval", "1", *extra]
        self.cmd = cmd
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def workers(self) -> list[dict]:
        """SMG's view of its workers (GET /workers): url, runtime_type, is_healthy, ..."""
        import httpx

        return httpx.get(self.url + "/workers", timeout=5).json()["workers"]

    def wait_until(self, healthy: set[str], timeout_s: float = 60.0) -> None:
        """Block until exactly the workers `healthy` are registered and healthy."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smg exited with code {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                up = {w["url"] for w in self.workers() if w.get("is_healthy")}
                if up == healthy:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"smg did not see {sorted(healthy)} healthy:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return _ANSI.sub("", self.log_path.read_text(errors="replace"))

    def discovery_warnings(self) -> list[str]:
        """The lines where SMG said it could not identify a worker or read its metadata."""
        return [
            line
            for line in self.log().splitlines()
            if " WARN " in line and any(w in line for w in DISCOVERY_WARNINGS)
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SMG's graceful drain takes seconds and holds its ports
            self.proc.wait()


class Fleet:
    """`engines` radixkv servers (each with `serve_args`), a Redis tier they share when
    `shared_tier`, and SMG in front with `policy`. A context manager: everything is stopped at
    exit. Without a shared tier every engine has no remote tier at all. With `prefill` engines
    (a shared tier needed), the first `prefill` run `--role prefill`, the others `--role decode`,
    and SMG runs in its prefill/decode mode."""

    def __init__(
        self,
        workdir: Path,
        engines: int,
        policy: str,
        serve_args: list[str],
        *,
        shared_tier: bool,
        prefill: int = 0,
        redis_mb: int = 1024,
        secret: str = "fleet-shared-secret",
    ) -> None:
        self.workdir, self.engines, self.policy = workdir, engines, policy
        self.serve_args, self.shared_tier = list(serve_args), shared_tier
        self.redis_mb, self.secret = redis_mb, secret
        if prefill and (not shared_tier or prefill >= engines):
            raise ValueError("prefill/decode needs a shared tier and at least one decode engine")
        self.prefill = prefill
        self.redis: subprocess.Popen | None = None
        self.servers: list[ServerProcess] = []
        self.gateway: Gateway | None = None

    def __enter__(self) -> Fleet:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tier = ["--remote-url", "none"]
        if self.shared_tier:
            binary = redis_binary()
            if binary is None:
                raise FileNotFoundError("redis-server is not installed (apt-get install redis)")
            port = free_port()
            self.redis = subprocess.Popen(
                redis_command(binary, port, self.redis_mb),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_port(port, self.redis)
            secret = self.workdir / "remote-secret"
            secret.write_text(self.secret)
            secret.chmod(0o600)
            tier = ["--remote-url", f"redis://127.0.0.1:{port}/0"]
            tier += ["--remote-secret-file", str(secret)]
        # the host's cores split between the engines (a CPU engine takes them all otherwise)
        threads = str(max(1, (os.cpu_count() or 1) // self.engines))
        env = {"OMP_NUM_THREADS": threads}  # torch sizes its pool from it
        for i in range(self.engines):
            log = self.workdir / f"engine-{i}.log"
            role = (
                [] if not self.prefill else ["--role", "prefill" if i < self.prefill else "decode"]
            )
            self.servers.append(ServerProcess([*tier, *role, *self.serve_args], log, env=env))
        for server in self.servers:
            server.wait_ready()
        urls = [s.url for s in self.servers]
        self.gateway = Gateway(
            urls[self.prefill :],
            self.policy,
            self.workdir / "smg.log",
            prefill_urls=urls[: self.prefill],
        )
        self.gateway.wait_until(set(urls))

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for server in self.servers:
            server.stop(timeout_s=10)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait()
