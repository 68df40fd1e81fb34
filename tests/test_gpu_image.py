"""The GPU machine's image has torch, triton, transformers and numpy, but not the server's packages
(fastapi, pydantic, uvicorn), gguf or flashinfer. The library, the trace replay and the GPU
benchmarks must import and generate there: a fresh interpreter that cannot import those does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.tiny_model import save_tiny_llama  # noqa: E402

_ABSENT = ("fastapi", "pydantic", "uvicorn", "gguf", "flashinfer", "starlette")


def test_the_library_and_benchmarks_run_without_the_server_packages(tmp_path):
    save_tiny_llama(tmp_path / "tiny")
    root = Path(__file__).resolve().parents[1]
    code = (
        "import importlib.util, sys\n"
        f"for name in {_ABSENT!r}: sys.modules[name] = None\n"
        "from radixkv import Engine\n"
        "import radixkv.bench.__main__, radixkv.bench.engine_replay_command\n"
        "for script in ('gpu_engine', 'gpu_multiturn', 'gpu_kv_fp8', 'gpu_small_kernels',\n"
        "               'gpu_prefix_attention', 'replay_model'):\n"
        "    spec = importlib.util.spec_from_file_location(script, f'benchmarks/{script}.py')\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"with Engine({str(tmp_path / 'tiny')!r}, device='cpu', kv_memory_gb=0.01,\n"
        "            host_memory_gb=0, remote_url='none') as eng:\n"
        "    r = eng.generate([[5, 6, 7, 8]], max_tokens=3, ignore_eos=True)[0]\n"
        "assert len(r.token_ids) == 3 and r.finish_reason == 'length', r\n"
        f"assert all(sys.modules[name] is None for name in {_ABSENT!r})\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
