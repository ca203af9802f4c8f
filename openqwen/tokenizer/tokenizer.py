"""Qwen's byte-level BPE tokenizer, from a Hugging Face directory or from GGUF metadata.

A GGUF file carries no tokenizer.json, only the vocabulary, merges and token types, so we rebuild
the pipeline Qwen2's tokenizer.json declares (NFC, the Qwen2 split regex, byte-level BPE) around
them. Both paths must produce the same ids; tests/test_tokenizer.py checks that they do.
"""

from __future__ import annotations

import codecs
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _BackendTokenizer

# The split regex of Qwen2/2.5/3 (tokenizer.json pre_tokenizer, llama.cpp pre-type "qwen2"):
# like GPT-4's but with single digits, so numbers are always split digit by digit.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp names for vocabularies split with that regex (`tokenizer.ggml.pre`).
_QWEN2_PRE_TYPES = {"qwen2", "deepseek-r1-qwen"}
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED = 3, 4
# Keys of tokenizer_config.json that name special tokens the chat template may refer to.
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: the printable character that spells each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
    """Text <-> token ids, plus what chat rendering needs (template, special tokens)."""

    def __init__(
        self,
        backend: _BackendTokenizer,
        *,
        eos_token_id: int | None,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self._backend = backend
        self.eos_token_id = eos_token_id
        self.chat_template = chat_template
        # {"eos_token": "<|im_end|>", ...}: the variables transformers passes to chat templates.
        self.special_tokens_map = dict(special_tokens or {})
        added = backend.get_added_tokens_decoder()
        self._added_text = {i: t.content for i, t in added.items()}
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        self._bytes_of: dict[int, bytes] = {}  # token_bytes, filled as tokens are first decoded

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load tokenizer.json, with the chat template and special tokens from its sibling files."""
        path = Path(path)
        backend = _BackendTokenizer.from_file(str(path / "tokenizer.json"))
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
        special = {k: t for k in _SPECIAL_TOKEN_KEYS if (t := _token_text(config.get(k)))}
        eos = special.get("eos_token")
        return cls(
            backend,
            eos_token_id=backend.token_to_id(eos) if eos else None,
            chat_template=_find_chat_template(path, config),
            special_tokens=special,
        )

    @classmethod
    def from_gguf_metadata(cls, data: dict[str, Any]) -> Tokenizer:
        """Rebuild the tokenizer from GGUF `tokenizer.ggml.*` metadata, keyed without that prefix:
        tokens, token_type, merges, model, pre, bos/eos/padding_token_id, plus chat_template."""
        model, pre = data.get("model"), data.get("pre")  # absent: assume Qwen2's, the only family here
        if model not in (None, "gpt2") or (pre is not None and pre not in _QWEN2_PRE_TYPES):
            raise ValueError(f"unsupported GGUF tokenizer {model!r}/{pre!r}: expected Qwen2's byte-level BPE")
        tokens: list[str] = list(data["tokens"])
        vocab = {token: i for i, token in enumerate(tokens)}
        merges = [tuple(m.split(" ", 1)) for m in data["merges"]]
        backend = _BackendTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        # Control tokens (<|im_end|>) are special; user-defined ones (<tool_call>, <think>) are plain
        # added tokens: both must match whole in text, as llama.cpp and tokenizer.json do.
        types = list(data.get("token_type") or [])
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _TOKEN_TYPE_CONTROL]
        )
        backend.add_tokens(
            [
                AddedToken(t, special=False, normalized=False)
                for t, k in zip(tokens, types)
                if k == _TOKEN_TYPE_USER_DEFINED
            ]
        )
        named = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id"}
        special = {
            name: tokens[i] for name, key in named.items() if (i := data.get(key)) is not None and 0 <= i < len(tokens)
        }
        return cls(
            backend,
            eos_token_id=data.get("eos_token_id"),
            chat_template=data.get("chat_template"),
            special_tokens=special,
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included (the model's embedding may be larger)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their single ids."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (may be part of a UTF-8 character); b"" if unknown.
        Kept once computed: streaming decodes every generated token through here."""
        raw = self._bytes_of.get(token_id)
        if raw is None:
            if token_id in self._added_text:
                raw = self._added_text[token_id].encode("utf-8")
            else:
                token = self._backend.id_to_token(token_id)
                table = _byte_decoder()
                raw = b"" if token is None else bytes(table[c] for c in token)
            self._bytes_of[token_id] = raw
        return raw

    def render_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        """Render `messages` with this model's own chat template (see chat_template.render_chat)."""
        from .chat_template import render_chat

        return render_chat(self.chat_template, messages, special_tokens=self.special_tokens_map, **kwargs)


def _find_chat_template(path: Path, config: dict[str, Any]) -> str | None:
    """transformers' precedence: chat_template.jinja, then chat_template.json, then tokenizer_config."""
    if (jinja := path / "chat_template.jinja").exists():
        return jinja.read_text(encoding="utf-8")
    if (as_json := path / "chat_template.json").exists():
        config = json.loads(as_json.read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default", next(iter(named.values()), None))
    return template


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas for streaming.

    A UTF-8 character may be split over several byte-level tokens (emoji, rare CJK). Bytes are
    buffered until they complete a character, so no delta ever ends in a spurious U+FFFD; a byte
    sequence that is truly invalid still becomes U+FFFD, like a full `decode` would show it.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Add one token; returns the text it completed (possibly "")."""
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End of stream: an unfinished character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)
