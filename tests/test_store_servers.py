"""The test servers' start-up: an installed binary that cannot start (as mooncake_master does
without libibverbs) skips the test with its error, or fails it where CI requires the servers."""

from __future__ import annotations

import socket

import pytest

from radixkv.bench.s3_server import SeaweedS3, WeedExited
from tests.store_servers import ServerCannotStart, _start, free_port, start_s3

DIES = [
    "/bin/sh",
    "-c",
    "echo 'error while loading shared libraries: libibverbs.so.1' >&2; exit 127",
]


def test_a_server_that_exits_at_once_skips_with_its_error(monkeypatch):
    monkeypatch.delenv("RADIXKV_REQUIRE_SERVERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="libibverbs.so.1") as info:
        _start(DIES, free_port())
    assert "exited with code 127" in str(info.value)


def test_ci_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setenv("RADIXKV_REQUIRE_SERVERS", "1")
    with pytest.raises(ServerCannotStart, match="libibverbs.so.1"):
        _start(DIES, free_port())


def test_seaweedfs_starts_again_on_fresh_ports_when_one_is_taken(tmp_path):
    """CI once saw `weed` exit with code 255 at start: one of its 8 ports was taken between
    choosing and binding. A first start now tries fresh ports; the log says why it exited."""
    server = SeaweedS3(tmp_path)
    taken = server.ports[0]
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        start_s3(tmp_path, server)
        try:
            assert taken not in server.ports and len(set(server.ports)) == 8
            assert b"already in use" in (tmp_path / "weed.log").read_bytes()
        finally:
            server.kill()
    with pytest.raises(WeedExited, match="already in use"), socket.socket() as blocker:
        server = SeaweedS3(tmp_path / "again")
        blocker.bind(("127.0.0.1", server.ports[0]))
        blocker.listen()
        server.start(attempts=1)
