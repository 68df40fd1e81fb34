"""Incremental detokenization for streaming: a request's growing token ids become text deltas.

Each new token costs a decode of a short window, not of the whole output. A delta never ends in
half a UTF-8 character, and when the request has stop strings the last `len(longest stop) - 1`
characters are held back until the request finishes, so a stop string is never streamed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.engine_loop import RequestOutput


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()) -> None:
        self._decode = decode
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self._text = ""  # every character confirmed so far
        self._sent = 0  # characters of _text already returned
        # ids[_prefix:_read] were decoded into _text's tail; decoding from _prefix gives the
        # context that byte-level and sentencepiece decoders need for the next piece
        self._prefix = 0
        self._read = 0

    def push(self, ids: list[int]) -> str:
        """The new text after `ids` (all the output ids so far) grew."""
        if len(ids) > self._read:
            prefix_text = self._decode(ids[self._prefix : self._read])
            full = self._decode(ids[self._prefix :])
            if len(full) > len(prefix_text) and not full.endswith("\ufffd"):
                self._text += full[len(prefix_text) :]
                self._prefix, self._read = self._read, len(ids)
        upto = max(self._sent, len(self._text) - self._holdback)
        delta, self._sent = self._text[self._sent : upto], upto
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the text once the request finished (`final_text`: its whole text, trimmed
        at a stop string). Call it instead of a last `push`: the last token may hold the stop."""
        delta = final_text[self._sent :] if final_text.startswith(self._text[: self._sent]) else ""
        self._sent = len(final_text)
        return delta

    def delta(self, ids: list[int], out: RequestOutput) -> str:
        """The text a step's output adds: `push` while running, `finish` once it finished."""
        if out.finish_reason is None:
            return self.push(ids)
        return self.finish(out.text or "")
