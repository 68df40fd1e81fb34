"""The default model (SmolLM2-135M-Instruct) through the Engine: chat template, sessions whose
later turns hit the cache, stop strings, and tokens identical to transformers' generate."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from radixkv import Engine  # noqa: E402


@pytest.fixture(scope="module")
def eng():
    with Engine(
        device="cpu", kv_memory_gb=0.25, host_memory_gb=0, remote_url=None, check_integrity=True
    ) as e:
        yield e


def test_session_turns_reuse_the_growing_context(eng):
    s = eng.session("You are terse.")
    first = s.chat("Name a primary colour.", max_tokens=8)
    second = s.chat("Name another.", max_tokens=8)
    third = s.chat("And a third?", max_tokens=8)
    assert first.cached_tokens < second.cached_tokens < third.cached_tokens
    assert second.cached_tokens >= first.prompt_tokens - eng.cache.page_size
    assert len(s.messages) == 7 and all(m["content"] is not None for m in s.messages)


def test_stop_strings_trim_the_text(eng):
    prompt = "Here is a short story about a lighthouse keeper:"
    full = eng.generate([prompt], max_tokens=32, ignore_eos=True)[0]
    assert len(full.text) > 20
    mid = len(full.text) // 2  # greedy: the second run repeats the first exactly
    stop = full.text[mid : mid + 4]
    r = eng.generate([prompt], max_tokens=32, ignore_eos=True, stop=[stop])[0]
    assert r.finish_reason == "stop"
    assert r.text == full.text[: full.text.find(stop)]
    assert len(r.token_ids) < len(full.token_ids)


def test_chat_tokens_equal_transformers(eng):
    from engine.default_model import GGUF_NAME, default_model_path

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = eng.tokenizer.encode(eng.tokenizer.apply_chat_template(messages))
    path = default_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=GGUF_NAME, dtype=torch.float32
    ).eval()
    hf.generation_config.eos_token_id = None
    ids = torch.tensor([prompt])
    want = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, pad_token_id=0
    )[0, len(prompt) :].tolist()
    got = eng.chat(messages, max_tokens=16, ignore_eos=True)
    assert got.token_ids == want
    assert "Paris" in got.text
