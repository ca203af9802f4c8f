"""The real default model (Qwen2.5-Coder-0.5B-Instruct GGUF) against transformers on the same file.

transformers dequantizes the GGUF to fp32; our dense path does the same, so logits must agree to
float rounding and the greedy reply must be identical. Marked slow: about 0.5 GB and a minute or two.
"""

from __future__ import annotations

import pytest
import torch

from openqwen import LLM, SamplingParams
from openqwen.registry import DEFAULT_MODEL, ModelUnavailableError, resolve_model

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def gguf_path():
    try:
        return resolve_model(DEFAULT_MODEL)
    except ModelUnavailableError as exc:
        pytest.skip(f"default model not installed: {exc}")


@pytest.fixture(scope="module")
def ours(gguf_path):
    return LLM(str(gguf_path), device="cpu", dtype="float32", quantize="none")


@pytest.fixture(scope="module")
def reference(gguf_path, ours):
    """transformers' greedy continuation and prompt logits for our rendered prompt."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()
    prompt = ours.tokenizer.encode(ours.apply_chat_template(MESSAGES))
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        logits = hf(ids).logits[0].float()
        hf.generation_config.eos_token_id = None
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                          pad_token_id=151643)
    return prompt, logits, out[0, len(prompt):].tolist()


def test_prompt_logits_match_transformers(ours, reference):
    prompt, expected, _ = reference
    got = ours.engine.runner.score(prompt)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 2e-3


def test_greedy_reply_matches_transformers(ours, reference):
    _, _, expected = reference
    out = ours.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))[0].outputs[0]
    assert out.token_ids == expected
    assert "def " in ours.tokenizer.decode(expected)  # and it is the coherent code answer


def test_chat_template_from_gguf_is_qwen25(ours):
    text = ours.apply_chat_template(MESSAGES)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert text.endswith("<|im_start|>assistant\n")


def test_native_decode_step_matches_the_model_code(gguf_path):
    """Weights kept quantized (the default): the native decode step and the PyTorch modules run the
    same quantized kernels. Both round activations to int8, so the float operations around the
    kernels, done in a different order, can flip a rounding and move a logit by a few hundredths:
    the greedy replies must agree until the first step whose top two tokens are that close."""
    llm = LLM(str(gguf_path), device="cpu", max_model_len=1024)
    assert llm.engine.runner.native_decoder is not None
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=2)
    native = llm.chat(MESSAGES, params)[0].outputs[0]
    llm.engine.runner.native_decoder = None
    model = llm.chat(MESSAGES, params)[0].outputs[0]
    pairs = list(zip(native.token_ids, model.token_ids))
    agree = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
    for i in range(agree):
        assert abs(native.logprobs[i].logprob - model.logprobs[i].logprob) < 0.05
    if agree < len(pairs):
        (first, lp1), (second, lp2) = model.logprobs[agree].top
        assert lp1 - lp2 < 0.1 and {first, second} == set(pairs[agree])  # a near tie, decided either way
    assert "def " in llm.tokenizer.decode(native.token_ids)