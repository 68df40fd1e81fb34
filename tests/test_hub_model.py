"""`--model org/name`: a Hub id served from a local Hugging Face cache laid out as the Hub does
(models--org--name/refs/main -> snapshots/<commit>/), named as typed; an id that is neither
cached nor reachable is a clear error naming it."""

from __future__ import annotations

import pytest
import torch
import transformers

from radixkv import Engine
from tests.conftest import cpu_engine


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding `tiny-org/tiny-llama`; the hub library pointed at it and offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--tiny-org--tiny-llama" / "snapshots" / commit
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(snapshot)
    (cache / "models--tiny-org--tiny-llama" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-llama" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_a_hub_id_loads_from_the_local_cache(hub_cache):
    from engine.weights import load_hf_directory

    common = dict(kv_memory_gb=0.05)
    with cpu_engine("tiny-org/tiny-llama", dtype="float32", **common) as eng:
        assert eng.core.model_name == "tiny-org/tiny-llama"
        got = eng.generate([[1, 2, 3, 4, 5]], max_tokens=6, temperature=0)[0].token_ids
    want_model, _ = load_hf_directory(hub_cache, dtype=torch.float32, device="cpu")
    with cpu_engine(str(hub_cache), dtype="float32", **common) as direct:
        assert direct.generate([[1, 2, 3, 4, 5]], max_tokens=6, temperature=0)[0].token_ids == got
    assert want_model.config.vocab_size == 300


def test_an_unknown_hub_id_is_an_error_naming_it(hub_cache):
    with pytest.raises(ValueError, match=r"'nobody/missing-model'.*Hugging Face cache"):
        Engine("nobody/missing-model", device="cpu", remote_url=None)


def test_paths_and_presets_are_not_taken_for_hub_ids(tmp_path):
    from engine.hub import looks_like_hub_id

    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert looks_like_hub_id("meta-llama/Llama-3.1-8B-Instruct")
    assert not looks_like_hub_id("llama-3-8b")  # a preset
    assert not looks_like_hub_id(str(tmp_path / "org" / "name"))  # an absolute path
    assert not looks_like_hub_id("./org/name") and not looks_like_hub_id("model.gguf")
