"""Log probabilities in OpenAI's two shapes: chat's `{"content": [{token, logprob, bytes,
top_logprobs}]}` and completions' `{tokens, token_logprobs, top_logprobs, text_offset}`.
Entries come from the engine per output token: (its log probability, [(token, logprob)] of
the most likely tokens), of the model's own distribution (before penalties, bias, grammar and
temperature)."""

from __future__ import annotations


def _piece(tok, token: int) -> dict:
    text = tok.token_text(token)
    return {"token": text, "bytes": list(text.encode("utf-8", "replace"))}


def chat_logprobs(tok, ids: list[int], entries: list, offset: int = 0) -> dict:
    """(`offset` is the completions shape's; chat's has no text offsets.)"""
    content = []
    for token, (logprob, best) in zip(ids, entries, strict=True):
        top = [{**_piece(tok, t), "logprob": lp} for t, lp in best]
        content.append({**_piece(tok, token), "logprob": logprob, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(tok, ids: list[int], entries: list, offset: int = 0) -> dict:
    """`offset`: the text offset of the first token (its place in the whole output)."""
    tokens, offsets = [], []
    for token in ids:
        tokens.append(tok.token_text(token))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [lp for lp, _ in entries],
        "top_logprobs": [{tok.token_text(t): v for t, v in best} or None for _, best in entries],
        "text_offset": offsets,
    }
