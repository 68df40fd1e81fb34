"""Start `python -m radixkv.serve` in a child process for a benchmark that was given no --url.

Unless told another remote tier, the child gets a fresh remote-tier directory, so runs never see
each other's cached pages. It is stopped (then killed if it must be) when the benchmark ends.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(
    serve_args: str = "", remote_url: str | None = None, startup_timeout_s: float = 900.0
) -> Iterator[str]:
    """Yields the server's base URL (http://127.0.0.1:PORT) once /health answers. Its remote
    tier is `remote_url`, else one given in `serve_args`, else a fresh directory."""
    import httpx

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="radixkv-bench-") as tmp:
        log_path = Path(tmp) / "server.log"
        args = shlex.split(serve_args)
        cmd = [sys.executable, "-m", "radixkv.serve", "--port", str(port), "--log-level", "warning"]
        if remote_url is not None:
            if "--remote-url" in args:
                raise ValueError("the remote tier is given twice (remote_url and serve_args)")
            cmd += ["--remote-url", remote_url]
        elif "--remote-url" not in args:
            cmd += ["--remote-url", (Path(tmp) / "remote-tier").as_uri()]
        cmd += args
        print(f"starting a local server: {shlex.join(cmd)}", file=sys.stderr)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the local server exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the local server did not answer /health in {startup_timeout_s:.0f} s"
                    )
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
