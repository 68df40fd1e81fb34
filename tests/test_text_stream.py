"""Streaming text deltas: their concatenation is exactly the full decode, they never end in half
a character, and a stop string is never streamed (with the default model's byte-level BPE)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.text_stream import TextStream


@pytest.fixture(scope="module")
def tok():
    from engine.default_model import default_model_path
    from engine.tokenizer import Tokenizer

    return Tokenizer.from_gguf(default_model_path())


# mixes ASCII, multi-byte characters (split over several byte-level tokens) and emoji
TEXT = st.lists(
    st.sampled_from(list("ab c,.\n") + ["é", "日本", "🙂", "ß", " the"]), min_size=1, max_size=30
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_deltas_concatenate_to_the_full_decode(tok, text):
    ids = tok.encode(text)
    stream = TextStream(tok.decode)
    deltas = [stream.push(ids[: i + 1]) for i in range(len(ids) - 1)]
    assert all("\ufffd" not in d for d in deltas)
    deltas.append(stream.finish(tok.decode(ids)))
    assert "".join(deltas) == tok.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(text=TEXT, stop=st.sampled_from(["c,", " the", "日本", "..", "🙂a"]))
def test_stop_strings_are_never_streamed(tok, text, stop):
    ids = tok.encode(text)
    stream = TextStream(tok.decode, (stop,))
    sent = ""
    for i in range(len(ids)):
        so_far = tok.decode(ids[: i + 1])
        if stop in so_far:  # the scheduler stops here: the final text is trimmed at the stop
            sent += stream.finish(so_far[: so_far.find(stop)])
            assert sent == so_far[: so_far.find(stop)]
            return
        sent += stream.push(ids[: i + 1])
        assert stop not in sent
        assert so_far.startswith(sent)
    sent += stream.finish(tok.decode(ids))
    assert sent == text
