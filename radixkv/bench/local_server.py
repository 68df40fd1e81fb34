"""Start `python -m radixkv.serve` in a child process, for a benchmark that was given no --url
and for the multi-engine fleet (`radixkv.bench.fleet`).

Unless told another remote tier, the child gets a fresh remote-tier directory, so runs never see
each other's cached pages. It is stopped (then killed if it must be) when the benchmark ends.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free just now (every socket stays bound until all
    are chosen, so none repeats; another process may still take one before its server binds)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


class ServerProcess:
    """One `python -m radixkv.serve` child on a loopback port, its output in `log_path`."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "radixkv.serve", "--port", str(self.port)]
        self.cmd = cmd + ["--log-level", "warning", *args]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else {**os.environ, **env},
            )

    def wait_ready(self, timeout_s: float = 900.0) -> ServerProcess:
        """Block until /health answers 200; raises with the log's tail if the child exits."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not answer /health in {timeout_s:.0f} s")
            time.sleep(0.3)

    def kill(self) -> None:
        """End it at once (SIGKILL): a crash, as a gateway sees one."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (running requests finish), then SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def local_server(
    serve_args: str = "", remote_url: str | None = None, startup_timeout_s: float = 900.0
) -> Iterator[str]:
    """Yields the server's base URL (http://127.0.0.1:PORT) once /health answers. Its remote
    tier is `remote_url`, else one given in `serve_args`, else a fresh directory."""
    with tempfile.TemporaryDirectory(prefix="radixkv-bench-") as tmp:
        args = shlex.split(serve_args)
        if remote_url is not None:
            if "--remote-url" in args:
                raise ValueError("the remote tier is given twice (remote_url and serve_args)")
            args = ["--remote-url", remote_url, *args]
        elif "--remote-url" not in args:
            args = ["--remote-url", (Path(tmp) / "remote-tier").as_uri(), *args]
        server = ServerProcess(args, Path(tmp) / "server.log")
        print(f"starting a local server: {shlex.join(server.cmd)}", file=sys.stderr)
        try:
            yield server.wait_ready(startup_timeout_s).url
        finally:
            server.stop()
