"""SmolLM2-135M-Instruct's real weights (the default model's GGUF, dequantized): our greedy
tokens equal Hugging Face transformers' for the same weights, float32, CPU."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from engine.default_model import GGUF_NAME, default_model_path  # noqa: E402
from engine.gguf_loader import load_gguf  # noqa: E402
from tests.paged_runner import Paged, hf_greedy  # noqa: E402


@pytest.fixture(scope="module")
def models():
    path = default_model_path()
    ours, fingerprint, meta = load_gguf(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=GGUF_NAME, dtype=torch.float32
    ).eval()
    return ours, hf, meta


def test_weights_equal_transformers_gguf_load(models):
    ours, hf, _ = models
    mine = ours.state_dict()
    for name, tensor in hf.state_dict().items():
        assert torch.equal(mine[name], tensor), name


# token ids of "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"-like
# prompts are not needed: parity is over ids; two different prompts, one long enough for many pages
PROMPTS = [
    [1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198],
    list(range(100, 160)),
]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["chat", "long"])
def test_greedy_tokens_equal_transformers_cold_and_cached(models, prompt):
    ours, hf, _ = models
    want = hf_greedy(hf, prompt, 20)
    runner = Paged(ours, pages=64)
    cold, table = runner.greedy(prompt, 20)
    assert cold == want
    cached, _ = runner.greedy(
        prompt, 20, table=list(table[:3]), cached=12
    )  # 3 pages from the cache
    assert cached == want


def test_metadata_carries_chat_template_and_special_tokens(models):
    _, _, meta = models
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert meta["tokenizer.ggml.eos_token_id"] == 2
