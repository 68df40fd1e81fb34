"""The default model (SmolLM2-135M-Instruct) through the Engine: chat template, sessions whose
later turns hit the cache, stop strings, and tokens identical to transformers' generate."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import cpu_engine

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def eng():
    with cpu_engine(  # float32: token for token with transformers' float32 load of the GGUF
        dtype="float32",
        # greedy: the model's own defaults sample (temperature 0.2), and the tests below compare
        # tokens with transformers' greedy or between two runs (one top-2 gap is 0.30 logits:
        # at 0.2 the second token came about one run in five, a flaky comparison)
        generation_config='{"temperature": 0}',
        kv_memory_gb=0.25,
        check_integrity=True,
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


def test_a_model_without_a_tokenizer_takes_one_apart(tmp_path):
    """`tokenizer=` gives a model without one (as the presets are) a real tokenizer: the default
    model's GGUF tokenizer fits any vocabulary of at least its 49,152 tokens (ids past it are
    never sampled: they would decode to nothing); a smaller one is refused by name."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=60_000,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "big-vocab")
    common = dict(kv_memory_gb=0.05)
    with cpu_engine(str(tmp_path / "big-vocab"), **common) as bare:
        assert bare.tokenizer is None
        with pytest.raises(ValueError, match="no tokenizer"):
            bare.generate(["Hello"], max_tokens=2)
    with cpu_engine(str(tmp_path / "big-vocab"), tokenizer="default", **common) as eng:
        r = eng.generate(["The capital of France is"], max_tokens=4, ignore_eos=True)[0]
        assert len(r.token_ids) == 4 and isinstance(r.text, str) and r.prompt_tokens > 3
        assert eng.tokenizer.token_id(eng.tokenizer.eos_token) in eng.scheduler.eos_token_ids
        pushed = eng.generate(
            ["Hello"], max_tokens=16, ignore_eos=True, temperature=1.0, logit_bias={59_999: 100}
        )[0]
        assert len(pushed.token_ids) == 16 and max(pushed.token_ids) < 49_152
    cfg.vocab_size = 1000
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "small-vocab")
    with pytest.raises(ValueError, match="more than the model's vocabulary"):
        cpu_engine(str(tmp_path / "small-vocab"), tokenizer="default", **common)
    with pytest.raises(ValueError, match="not a tokenizer.json"):
        cpu_engine(str(tmp_path / "small-vocab"), tokenizer=str(tmp_path), **common)


def test_a_saved_tokenizer_reads_back_the_same(eng, tmp_path):
    """`Tokenizer.save` writes a Hugging Face directory (how the default model's GGUF tokenizer
    travels to a machine without the GGUF): the same ids, text, chat template and special tokens."""
    from engine.tokenizer import Tokenizer

    tok = eng.tokenizer
    again = Tokenizer.from_path(tok.save(tmp_path / "tok"))
    text = "The capital of France is Paris. 12345 éè <|im_end|>"
    assert again.encode(text) == tok.encode(text)
    assert again.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    chat = [{"role": "user", "content": "hi"}]
    assert again.apply_chat_template(chat) == tok.apply_chat_template(chat)
    assert (again.bos_token, again.eos_token) == (tok.bos_token, tok.eos_token)


def test_the_default_runs_bf16_on_a_cpu_that_computes_it_and_answers_right():
    """`dtype=auto` picks bfloat16 for the (quantized) default model where the CPU multiplies
    bf16 natively, float32 elsewhere; either way the greedy answer is the right one."""
    from engine.model_loader import cpu_has_native_bf16

    with cpu_engine(kv_memory_gb=0.1) as e:
        want = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        assert e.model.lm_head.weight.dtype == want
        chat = [{"role": "user", "content": "What is the capital of France?"}]
        r = e.chat(chat, max_tokens=12)
        assert "Paris" in r.text, r.text


def test_a_grammar_llguidance_cannot_follow_stops_its_request_only(eng):
    """llguidance's mask allows a token its matcher then refuses for this regex (a character
    beyond the Basic Multilingual Plane, found by the API fuzzer): the request stops with what
    it has, and the engine goes on (it once failed the whole step)."""
    r = eng.generate(["hello"], max_tokens=10, grammar=("regex", "\u00e4\U0007e123\x12"))[0]
    assert r.finish_reason == "stop" and r.text.startswith("\u00e4")
    again = eng.generate(["The capital of France is"], max_tokens=4, ignore_eos=True)[0]
    assert again.finish_reason == "length" and len(again.token_ids) == 4


def test_a_row_whose_sampling_fails_ends_alone(eng):
    """A request whose sampling raises (a fault injected into its grammar mask) ends with an
    error; the request beside it in the same step finishes exactly as it would alone."""

    class Broken:
        def mask(self, logits):
            raise RuntimeError("injected")

        def advance(self, token):
            raise AssertionError("a failed row never advances")

        finished = False

    prompt = eng.tokenizer.encode("The capital of France is")
    alone = eng.generate([prompt], max_tokens=5, ignore_eos=True)[0].token_ids
    bad = eng.submit(prompt, max_tokens=5, ignore_eos=True)
    bad.constraint = Broken()
    good = eng.submit(prompt, max_tokens=5, ignore_eos=True)
    while eng.scheduler.has_work:
        eng.step()
    assert bad.finish_reason == "error" and bad.output_ids == []
    assert good.finish_reason == "length" and good.output_ids == alone
    eng.cache.check_integrity()
