"""Our Llama-family model against Hugging Face transformers, same weights, float32, CPU:
logits of every token, and greedy generation token for token over the paged KV pool
(cold, chunked prefill, and a second request reusing the first one's cached pages)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from engine.forward_batch import ForwardBatch  # noqa: E402
from engine.weights import load_hf_directory  # noqa: E402
from tests.paged_runner import PS, Paged, hf_greedy  # noqa: E402

COMMON = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    initializer_range=0.15,
    max_position_embeddings=256,
)


def tiny(arch: str):
    if arch == "llama":
        cfg = transformers.LlamaConfig(
            **COMMON,
            num_key_value_heads=2,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            rope_theta=500000.0,
        )
        return transformers.LlamaForCausalLM(cfg)
    if arch == "llama-tied":
        return transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**COMMON, num_key_value_heads=4, tie_word_embeddings=True)
        )
    if arch == "mistral":
        return transformers.MistralForCausalLM(
            transformers.MistralConfig(**COMMON, num_key_value_heads=1, sliding_window=None)
        )
    if arch == "qwen2":
        return transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(**COMMON, num_key_value_heads=2)
        )
    if arch == "qwen3":
        return transformers.Qwen3ForCausalLM(
            transformers.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=24)
        )
    raise AssertionError(arch)


ARCHS = ["llama", "llama-tied", "mistral", "qwen2", "qwen3"]


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tmp_path_factory):
    torch.manual_seed(ARCHS.index(request.param))
    hf = tiny(request.param).float().eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    ours, fingerprint = load_hf_directory(path)
    return hf, ours, fingerprint


def test_logits_of_every_token_match(pair):
    hf, ours, _ = pair
    prompt = list(range(3, 30))
    want = hf(torch.tensor([prompt])).logits[0]
    runner = Paged(ours)
    got = ours(
        ForwardBatch.build([(prompt, 0, runner.alloc.alloc(7))], PS),
        runner.backend,
        all_logits=True,
    )
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_greedy_tokens_match_cold_chunked_and_cached(pair):
    hf, ours, _ = pair
    prompt = [5, 17, 3, 88, 42, 42, 9, 1, 60, 33, 21, 8, 70]
    want = hf_greedy(hf, prompt, 12)
    runner = Paged(ours)
    cold, table = runner.greedy(prompt, 12)
    assert cold == want
    chunked, _ = runner.greedy(prompt, 12, chunk=5)
    assert chunked == want
    # a second request whose first 8 tokens (2 pages) are already in the pool
    shared = table[:2]
    cached, _ = runner.greedy(prompt, 12, table=list(shared), cached=8)
    assert cached == want


def test_batched_decode_equals_one_at_a_time(pair):
    _, ours, _ = pair
    a, b = [4, 8, 15, 16, 23, 42], [7, 7, 7, 1, 2, 3, 4, 5, 6, 9]
    runner = Paged(ours)
    solo_a, _ = runner.greedy(a, 6)
    solo_b, _ = runner.greedy(b, 6)
    ta, tb = [], []
    la, lb = runner.step([(a, 0, ta), (b, 0, tb)]).argmax(-1).tolist()
    out_a, out_b = [la], [lb]
    for i in range(5):
        logits = runner.step([([out_a[-1]], len(a) + i, ta), ([out_b[-1]], len(b) + i, tb)])
        out_a.append(int(logits[0].argmax()))
        out_b.append(int(logits[1].argmax()))
    assert out_a == solo_a and out_b == solo_b


def test_fingerprint_depends_on_weights_and_config(pair, tmp_path):
    hf, _, fingerprint = pair
    hf.save_pretrained(tmp_path)
    assert load_hf_directory(tmp_path)[1] == fingerprint
    cfg = hf.config.to_dict()
    cfg["rms_norm_eps"] = 1e-3
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg))
    assert load_hf_directory(tmp_path)[1] != fingerprint


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_hf_directory(tmp_path)
    (tmp_path / "config.json").write_text(
        '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}'
    )
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported model"):
        load_hf_directory(tmp_path)
