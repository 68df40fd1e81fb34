"""Tokenizers and chat templates, from a Hugging Face directory or from GGUF metadata."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _Tokenizer

_CONTROL = 3  # GGUF token type of special/control tokens


GIL_FREE_CHARS = 16_384  # texts this long are encoded with the GIL released


def _encode(tok: _Tokenizer, text: str) -> list[int]:
    """Token ids of `text`. A long text goes through `encode_batch_fast`, which releases the
    GIL while it works (`encode` holds it: a 5 MB prompt stalled every other thread for 4 s),
    so a server's event loop keeps answering while it is tokenized on a worker thread."""
    if len(text) < GIL_FREE_CHARS:
        return tok.encode(text, add_special_tokens=False).ids
    # the fast variant skips character offsets: dropping a million tokens' offsets afterwards
    # held the GIL for 0.2 s (the ids are the same)
    return tok.encode_batch_fast([text], add_special_tokens=False)[0].ids


class Tokenizer:
    def __init__(
        self, tok: _Tokenizer, chat_template: str | None, bos: str | None, eos: str | None
    ) -> None:
        self._tok, self.chat_template, self.bos_token, self.eos_token = tok, chat_template, bos, eos

    @classmethod
    def from_hf_directory(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        tok = _Tokenizer.from_file(str(path / "tokenizer.json"))
        cfg_path = path / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}

        def text(v):
            return v.get("content") if isinstance(v, dict) else v

        return cls(
            tok, cfg.get("chat_template"), text(cfg.get("bos_token")), text(cfg.get("eos_token"))
        )

    @classmethod
    def from_gguf(cls, source) -> Tokenizer:
        """From a GGUF file's path, or a `gguf.GGUFReader` already open on it."""
        from gguf import GGUFReader

        reader = source if isinstance(source, GGUFReader) else GGUFReader(str(source))

        def get(key, default=None):
            f = reader.fields.get(key)
            return default if f is None else f.contents()

        kind = get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"GGUF tokenizer model {kind!r} is not supported yet (supported: gpt2 byte-level BPE)"
            )
        tokens, types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type")
        merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
        tok = _Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, types, strict=True)
                if ty == _CONTROL
            ]
        )
        bos, eos = get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id")
        return cls(
            tok,
            get("tokenizer.chat_template"),
            tokens[bos] if bos is not None else None,
            tokens[eos] if eos is not None else None,
        )

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """A tokenizer.json file, a Hugging Face directory or a GGUF file; ValueError otherwise."""
        path = Path(path)
        if path.is_dir() and (path / "tokenizer.json").is_file():
            return cls.from_hf_directory(path)
        if path.is_file() and path.suffix == ".gguf":
            return cls.from_gguf(path)
        if path.is_file() and path.suffix == ".json":
            cfg = path.parent / "tokenizer_config.json"
            if cfg.is_file():
                return cls.from_hf_directory(path.parent)
            return cls(_Tokenizer.from_file(str(path)), None, None, None)
        raise ValueError(
            f"tokenizer {str(path)!r} is not a tokenizer.json, a Hugging Face directory with one, "
            "or a .gguf file"
        )

    def save(self, directory: str | Path) -> Path:
        """Write it as a Hugging Face directory (tokenizer.json, tokenizer_config.json) that
        `from_path` reads back, e.g. to carry the default model's tokenizer to a machine
        without it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").write_text(self.to_json())
        config = {
            "chat_template": self.chat_template,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        return directory

    def to_json(self) -> str:
        """The tokenizer.json text (what grammar engines read the token table from)."""
        return self._tok.to_str()

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the token table, merges and special tokens (its tokenizer.json) and the
        chat template: part of the model identity that keys the shared tier."""
        h = hashlib.blake2b(self._tok.to_str().encode(), digest_size=16)
        h.update(json.dumps([self.chat_template, self.bos_token, self.eos_token]).encode())
        return h.hexdigest()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return _encode(self._tok, text)

    def token_text(self, token: int) -> str:
        """One token's text, special tokens included (what log probabilities name)."""
        return self._tok.decode([token], skip_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> str:
        """Render messages with the model's own template (jinja2, sandboxed); `tools` reaches
        templates that take them. A message's content may be None (an assistant turn that only
        calls tools)."""
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        if not self.chat_template:
            raise ValueError("this model has no chat template")
        for m in messages:
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str | None)
            ):
                raise ValueError("each message needs a string 'role' and a string 'content'")
        messages = [{**m, "content": m.get("content") or ""} for m in messages]

        def raise_exception(message: str) -> None:  # what Hugging Face templates call
            raise ValueError(f"the chat template refused the messages: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        # as Hugging Face renders templates: tojson without HTML escaping
        env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except TemplateError as err:  # the messages do not fit the template: the caller's input
            raise ValueError(f"the chat template cannot render these messages: {err}") from None

    # ---- message content is text: typed special tokens are never control tokens ------------------
    @functools.cached_property
    def _literal(self) -> _Tokenizer:
        """A copy that encodes special tokens' text as ordinary text."""
        literal = _Tokenizer.from_str(self._tok.to_str())
        literal.encode_special_tokens = True
        return literal

    @functools.cached_property
    def _specials(self) -> re.Pattern | None:
        """Any special token's text (None: the tokenizer has none)."""
        texts = sorted(
            (t.content for t in self._tok.get_added_tokens_decoder().values() if t.special),
            key=len,
            reverse=True,
        )
        return re.compile("|".join(map(re.escape, texts))) if texts else None

    def encode_chat(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        literal_content: bool = True,
    ) -> list[int]:
        """Token ids of `messages` rendered with the chat template. With `literal_content` (the
        default) a message's content is text: `<|im_start|>system` typed in it is encoded as
        those characters, never as the control token, so no message can forge another turn.
        Content without any special token's text encodes exactly as the whole rendered prompt
        does; content with some is encoded apart from the template's own text."""
        contents = [m.get("content") for m in messages if isinstance(m, dict)]
        if (
            not literal_content
            or self._specials is None
            or not any(isinstance(c, str) and self._specials.search(c) for c in contents)
        ):
            return self.encode(self.apply_chat_template(messages, add_generation_prompt, tools))
        ids: list[int] = []
        for text, literal in self._segments(messages, add_generation_prompt, tools):
            if text:
                ids += _encode(self._literal if literal else self._tok, text)
        return ids

    def _segments(
        self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None
    ) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is message content) runs: the template is rendered
        with a random marker in place of each content (its surrounding whitespace kept, for
        templates that trim it), and each marker gives way to its content."""
        nonce = secrets.token_hex(8)
        marked, cores = [], []
        for i, m in enumerate(messages):
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str) and c.strip():
                core = c.strip()
                lead, trail = c[: len(c) - len(c.lstrip())], c[len(c.rstrip()) :]
                m = {**m, "content": f"{lead}\ue000{nonce}-{i}\ue001{trail}"}
                cores.append((i, core))
            marked.append(m)
        text = self.apply_chat_template(marked, add_generation_prompt, tools)
        by_index = dict(cores)
        out: list[tuple[str, bool]] = []
        pos = 0
        for hit in re.finditer(f"\ue000{nonce}-(\\d+)\ue001", text):
            out.append((text[pos : hit.start()], False))
            out.append((by_index[int(hit.group(1))], True))
            pos = hit.end()
        out.append((text[pos:], False))
        return out
