"""The file remote tier on a real small disk (a 1 MiB tmpfs) that fills up (ENOSPC), turns
read-only (EROFS) or has its directory deleted under a running engine: no request fails, no
token changes, the tier shows degraded (a deleted directory is made again at the next write,
so that fault heals before the breaker opens), and it recovers once the disk is usable again.
Skipped where this machine cannot mount a tmpfs."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pytest.importorskip("transformers")

from radixkv import Engine  # noqa: E402
from tests.test_remote_faults import (  # noqa: E402
    FAULT_ENGINE,
    _prompts,
    _run,
    _traffic_until_recovered,
)
from tests.tiny_model import gb, save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_llama(path)
    return path


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt, options: str) -> None:
    """Remount; `ro` is refused (busy) while a write is open, so it is tried until one lands
    between writes."""
    for _ in range(200):
        r = subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.02)
    raise RuntimeError(f"remount,{options} failed: {r.stderr.decode().strip()}")


@pytest.mark.parametrize("fault", ["disk full", "read-only", "directory deleted"])
def test_a_broken_disk_degrades_the_tier_and_costs_no_request(tiny_dir, small_disk, fault):
    prompts = _prompts(120)
    plain = dict(device="cpu", kv_memory_gb=gb(32), host_memory_gb=gb(48), remote_url=None)
    with Engine(str(tiny_dir), **plain) as ref:
        want = [r.token_ids for r in _run(ref, prompts)]
    tier = small_disk / "tier"
    if fault != "disk full":
        _remount(small_disk, "size=64m")  # room enough: only the injected fault stops writes
    seen = {"degraded": False}
    with Engine(
        str(tiny_dir),
        remote_url=tier.as_uri(),
        remote_max_gb=1.0,  # far above the disk: what stops writes is the disk itself
        **FAULT_ENGINE,
    ) as eng:
        status = eng.cache.remote_status

        def fault_at(start: int) -> None:
            if start == 40 and fault == "read-only":
                _remount(small_disk, "ro")
            if start == 40 and fault == "directory deleted":
                # Moved away in one step, then removed: a write in flight may finish in the
                # moved copy or make the directory again at once, so what proves the fault was
                # seen is the store's FileNotFoundError checked below, not an empty directory.
                gone = tier.with_name("tier-deleted")
                tier.rename(gone)
                shutil.rmtree(gone, ignore_errors=True)
            seen["degraded"] |= status()["degraded"]

        got = _run(eng, prompts, fault_at)
        eng.cache.wait_idle(timeout_s=30)
        seen["degraded"] |= status()["degraded"]
        if fault == "disk full":
            _remount(small_disk, "size=64m")  # space returns
        if fault == "read-only":
            _remount(small_disk, "rw")
        again = _traffic_until_recovered(eng, prompts[:20])
        final = status()
    assert all(r.finish_reason == "length" for r in got + again)  # zero failed requests
    assert [r.token_ids for r in got] == want  # and not one token changed
    assert [r.token_ids for r in again] in ([], want[:20])
    if fault == "directory deleted":  # the store makes its directory again at the next write
        assert "FileNotFoundError" in (final["last_error"] or ""), final
    else:
        assert seen["degraded"] and final["times_opened"] >= 1, (seen, final)
    assert not final["degraded"], final  # recovered once the disk was usable again
    assert any(tier.glob("??/*")), "nothing written after recovery"
