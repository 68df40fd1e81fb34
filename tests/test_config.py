"""EngineConfig: one default per option, flags generated from it, aliases, config files."""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest

from engine.config import FIELDS, EngineConfig
from engine.config_flags import config_from_args, config_to_flags, flag_name
from radixkv.bench.__main__ import main as bench_main
from radixkv.cli import main as cli_main
from radixkv.serve import main as serve_main
from radixkv.serve import parser as serve_parser


def serve_config(*argv: str) -> EngineConfig:
    return config_from_args(serve_parser().parse_args(list(argv)))


def test_every_field_has_one_flag_with_its_default_and_help(capsys):
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    option_lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("--")]
    for f in fields(EngineConfig):
        flag = flag_name(f.name)
        listed = [ln for ln in option_lines if re.match(rf"{flag}\b(?!-)", ln)]
        assert len(listed) == 1, f"{flag} listed {len(listed)} times in --help"
        assert f.metadata["help"].split()[0] in text
    assert text.count("(default:") >= len(fields(EngineConfig)) - 2  # two say it in words


def test_library_server_and_bench_defaults_agree():
    assert serve_config() == EngineConfig()
    assert EngineConfig().host_memory_gb == 2.0  # the value the server used to restate
    assert config_to_flags(EngineConfig()) == []


@pytest.mark.parametrize(
    "argv, field, value",
    [
        (["--model-path", "m.gguf"], "model", "m.gguf"),
        (["--max-num-seqs", "8"], "max_running", 8),
        (["--max-running-requests", "9"], "max_running", 9),
        (["--max-num-batched-tokens", "512"], "max_batch_tokens", 512),
        (["--chunked-prefill-size", "256"], "max_batch_tokens", 256),
        (["--hicache-write-policy", "write_back"], "write_policy", "write_back"),
        (["--disable-radix-cache"], "prefix_caching", False),
        (["--no-enable-prefix-caching"], "prefix_caching", False),
        (["--no-prefix-caching"], "prefix_caching", False),
        (["--page-size", "32"], "page_size", 32),
        (["--block-size", "32"], "page_size", 32),
        (["--remote-url", "none"], "remote_url", None),
        (["--remote-max-gb", "0.5"], "remote_max_gb", 0.5),
    ],
)
def test_vllm_and_sglang_names_map_to_the_same_fields(argv, field, value):
    assert getattr(serve_config(*argv), field) == value


def test_config_file_yaml_and_json_then_flags_on_top(tmp_path):
    y = tmp_path / "engine.yaml"
    y.write_text("max-running: 12\nkv_memory_gb: 0.5\npolicy: lru\n")
    j = tmp_path / "engine.json"
    j.write_text(json.dumps({"max_running": 12, "kv-memory-gb": 0.5, "policy": "lru"}))
    for path in (y, j):
        c = serve_config("--config", str(path), "--max-running", "3")
        assert (c.max_running, c.kv_memory_gb, c.policy) == (3, 0.5, "lru")
        assert EngineConfig.from_file(path) == EngineConfig(
            max_running=12, kv_memory_gb=0.5, policy="lru"
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_runing: 3\n")
    with pytest.raises(ValueError, match="unknown option.*max_runing"):
        serve_config("--config", str(bad))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"kv_memory_gb": 0}, "kv_memory_gb"),
        ({"host_memory_gb": -1}, "host_memory_gb"),
        ({"page_size": 0}, "page_size"),
        ({"max_running": True}, "max_running"),
        ({"policy": "fifo"}, "policy"),
        ({"write_policy": "sometimes"}, "write_policy"),
        ({"dtype": "int4"}, "dtype"),
        ({"remote_load_margin": float("nan")}, "remote_load_margin"),
        ({"remote_max_gb": 0}, "remote_max_gb"),
        ({"remote_write_backlog_gb": -1.0}, "remote_write_backlog_gb"),
        ({"triton_kernels": True}, "triton_kernels"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**overrides)


def test_config_is_frozen_and_flags_round_trip():
    c = EngineConfig(max_running=5, prefix_caching=False, remote_url=None, tenant="t")
    with pytest.raises(AttributeError):
        c.max_running = 6  # type: ignore[misc]
    assert serve_config(*config_to_flags(c)) == c
    assert set(FIELDS) == {f.name for f in fields(EngineConfig)}


def test_bad_flags_exit_2_with_the_reason(capsys):
    assert serve_main(["--kv-memory-gb", "0"]) == 2
    assert "kv_memory_gb must be a finite number > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        bench_main(["multiturn", "--url", "http://127.0.0.1:9", "--max-num-seqs", "4"])
    assert err.value.code == 2
    assert "a --url server has its own" in capsys.readouterr().err


def test_console_script_dispatches(capsys):
    assert cli_main([]) == 2
    with pytest.raises(SystemExit) as err:
        cli_main(["serve", "--help"])
    assert err.value.code == 0 and "--max-num-seqs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["bench", "trace", "--help"])
    assert "--page-size" in capsys.readouterr().out
    assert cli_main(["frobnicate"]) == 2


def test_generation_defaults_fill_what_a_request_leaves_out(tmp_path):
    from engine.generation_defaults import OPENAI, generation_defaults

    assert generation_defaults("none", None) == OPENAI
    assert generation_defaults("auto", None)["temperature"] == 0.2  # the default model's own
    assert generation_defaults('{"top_k": 5}', None) == OPENAI | {"top_k": 5}
    (tmp_path / "generation_config.json").write_text('{"temperature": 0.6, "top_p": 0.95}')
    assert generation_defaults("auto", str(tmp_path)) == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 0,
    }
    for bad in ("hot", '{"temperature": -1}', '{"min_p": 0.1}', "[1]"):
        with pytest.raises(ValueError, match="generation_config"):
            EngineConfig(generation_config=bad)
