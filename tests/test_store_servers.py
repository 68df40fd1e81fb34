"""The test servers' start-up: an installed binary that cannot start (as mooncake_master does
without libibverbs) skips the test with its error, or fails it where CI requires the servers."""

from __future__ import annotations

import pytest

from tests.store_servers import ServerCannotStart, _start, free_port

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
