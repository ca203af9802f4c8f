"""The native CPU decode step (csrc/decode.cpp) against the PyTorch model code it replaces.

Both run the same quantized matmul kernels, so they differ only in the order of float operations
around them; a difference of one ulp can flip one int8 activation rounding, hence tolerances of
a few 1e-4 rather than bit equality. Greedy generation must agree token for token.
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from gguf_fixtures import write_tiny_gguf
from openqwen import LLM, SamplingParams
from openqwen.kernels.quant import native_available
from openqwen.layers.attention import AttentionContext
from tiny_models import make_hf_model

pytestmark = pytest.mark.skipif(not native_available(), reason="the native extension was not built")

BLOCK = 4
CASES = [("qwen2", Q.Q8_0), ("qwen3", Q.Q5_0), ("qwen2", Q.Q4_0), ("qwen3", Q.Q5_1)]


def tiny_llm(tmp_path, arch: str, qtype: Q) -> LLM:
    tiny = write_tiny_gguf(tmp_path / f"{arch}_{qtype.name}.gguf", arch=arch, qtype=qtype)
    return LLM(str(tiny.path), device="cpu", block_size=BLOCK, max_model_len=64, kv_cache_gb=0.01)


def decode_context(num_blocks: int, lens: list[int], gen: torch.Generator) -> AttentionContext:
    """A decode step of len(lens) sequences whose blocks are scattered through the cache."""
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables, used = [], 0
    for n in lens:
        count = -(-n // BLOCK)
        tables.append(order[used:used + count])
        used += count
    width = max(map(len, tables))
    slots = [table[(n - 1) // BLOCK] * BLOCK + (n - 1) % BLOCK for table, n in zip(tables, lens)]
    return AttentionContext(slot_mapping=torch.tensor(slots), block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
                            context_lens=torch.tensor(lens), query_lens=[1] * len(lens), context_lens_host=lens,
                            block_size=BLOCK)


@pytest.mark.parametrize("arch,qtype", CASES, ids=[f"{a}-{q.name}" for a, q in CASES])
def test_step_matches_the_model(tmp_path, arch, qtype):
    llm = tiny_llm(tmp_path, arch, qtype)
    check_step(llm.engine.runner)


def test_step_sees_in_place_weight_writes(tmp_path):
    """Q5_0 weights reach the plan through a native-only copy (QuantLinear.native_weight); a write
    to qweight after the plan was made must still reach the step, as it does for other types."""
    llm = tiny_llm(tmp_path, "qwen3", Q.Q5_0)
    runner = llm.engine.runner
    assert runner.native_decoder is not None
    for layer in runner.model.model.layers:
        for lin in (layer.mlp.gate_proj, layer.self_attn.o_proj):
            w = lin.qweight
            w.copy_(w.roll(1, 0))  # other rows, still valid blocks
    check_step(runner)


def test_step_with_128_wide_heads(tmp_path):
    """Qwen3's head_dim of 128: the attention kernel keeps 64 outputs of a head in registers at a
    time, so these take two passes (the tiny GGUF models' heads are 16 and 32 wide)."""
    path = tmp_path / "wide"
    make_hf_model("qwen3", path, head_dim=128)
    llm = LLM(str(path), device="cpu", block_size=BLOCK, kv_cache_gb=0.01, max_model_len=64, quantize="q8_0")
    check_step(llm.engine.runner)


def check_step(runner) -> None:
    assert runner.native_decoder is not None
    gen = torch.Generator().manual_seed(0)
    runner.kv_cache.copy_(torch.randn(runner.kv_cache.shape, generator=gen))  # a filled cache
    lens = [1, 5, 9, 14]
    ctx = decode_context(runner.kv_cache.shape[2], lens, gen)
    ids, positions = torch.tensor([10, 20, 30, 40]), torch.tensor(lens) - 1
    before = runner.kv_cache.clone()
    with torch.inference_mode():  # the native step first: the model's own calls come after it
        got = runner.native_decoder(ids, positions, ctx)
        got_cache = runner.kv_cache.clone()
        runner.kv_cache.copy_(before)
        expected = runner.model(ids, positions, ctx)
        expected_cache = runner.kv_cache.clone()
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 3e-4 * scale
    torch.testing.assert_close(got_cache, expected_cache, rtol=0, atol=1e-4)
    written = (expected_cache != before).flatten(2, 3).any(-1).any(-1).any(0).any(0)  # blocks touched
    assert written.sum() == len(lens)  # exactly the one new slot of each sequence


@pytest.mark.parametrize("arch,qtype", CASES[:2], ids=[f"{a}-{q.name}" for a, q in CASES[:2]])
def test_greedy_generation_equals_the_pytorch_path(tmp_path, arch, qtype):
    """Continuous batching through the engine: prompts of different lengths, crossing blocks."""
    llm = tiny_llm(tmp_path, arch, qtype)
    prompts = [[5 + i for i in range(n)] for n in (3, 7, 12)]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=1)
    native = llm.generate(prompts, params)
    decoder, llm.engine.runner.native_decoder = llm.engine.runner.native_decoder, None
    reference = llm.generate(prompts, params)
    assert decoder is not None
    for a, b in zip(native, reference):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_dense_embedding_is_looked_up_before_the_step(tmp_path):
    """The step dequantizes rows of a quantized embedding itself; an F32 one stays an nn.Embedding
    whose rows the caller passes in."""
    tiny = write_tiny_gguf(tmp_path / "f32_embed.gguf", arch="qwen2", qtype=Q.Q8_0, embed_qtype=Q.F32)
    llm = LLM(str(tiny.path), device="cpu", block_size=BLOCK, max_model_len=64, kv_cache_gb=0.01)
    assert isinstance(llm.engine.runner.model.model.embed_tokens, torch.nn.Embedding)
    check_step(llm.engine.runner)


def test_rope_table_grows_with_the_context(tmp_path):
    """The step reads cos/sin from a table of the positions seen so far (256 rows at first, then
    doubled): decoding from position 250 to 290 crosses its growth and matches the PyTorch path."""
    tiny = write_tiny_gguf(tmp_path / "long.gguf", arch="qwen3", qtype=Q.Q8_0)
    llm = LLM(str(tiny.path), device="cpu", block_size=BLOCK, max_model_len=512, kv_cache_gb=0.05)
    prompt = [[5 + i % 200 for i in range(250)]]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=1)
    native = llm.generate(prompt, params)[0].outputs[0]
    assert llm.engine.runner.native_decoder._rope.shape[1] >= 290
    llm.engine.runner.native_decoder = None
    reference = llm.generate(prompt, params)[0].outputs[0]
    assert native.token_ids == reference.token_ids
    for a, b in zip(native.logprobs, reference.logprobs):  # mostly equal; an int8 rounding flip moves ~1e-3
        assert abs(a.logprob - b.logprob) < 5e-3


def test_step_rejects_positions_and_ids_outside_its_tables(tmp_path):
    from openqwen.kernels import quant

    decoder = tiny_llm(tmp_path, "qwen2", Q.Q8_0).engine.runner.native_decoder
    rope = decoder._rope_table(1)
    x, out = torch.empty(1, decoder.model.args.hidden_size), torch.empty(1, decoder.model.args.hidden_size)
    slots, tables, lens = torch.tensor([0]), torch.tensor([[0]]), torch.tensor([1])

    def step(token: int, position: int) -> None:
        ids, positions = torch.tensor([token]), torch.tensor([position])
        quant._native.decode_step(decoder._plan, ids.data_ptr(), x.data_ptr(), out.data_ptr(), 1, positions.data_ptr(),
                                  rope.data_ptr(), rope.shape[1], slots.data_ptr(), tables.data_ptr(), 1,
                                  lens.data_ptr())

    with pytest.raises(ValueError, match="outside the RoPE table"):
        step(1, rope.shape[1])
    with pytest.raises(ValueError, match="outside the embedding"):
        step(decoder.model.model.embed_tokens.table.out_features, 0)


def test_not_used_where_it_does_not_apply(tmp_path):
    dense = tmp_path / "dense"
    make_hf_model("qwen3", dense)
    assert LLM(str(dense), device="cpu", kv_cache_gb=0.01, max_model_len=256).engine.runner.native_decoder is None  # fp32 weights
    quantized = LLM(str(dense), device="cpu", kv_cache_gb=0.01, max_model_len=256, quantize="q8_0")
    assert quantized.engine.runner.native_decoder is not None
    moe = write_tiny_gguf(tmp_path / "moe.gguf", arch="qwen3moe", qtype=Q.Q8_0)
    assert LLM(str(moe.path), device="cpu", kv_cache_gb=0.01, max_model_len=256).engine.runner.native_decoder is None


def test_quantized_hf_checkpoint_decodes_like_the_pytorch_path(tmp_path):
    """--quantize q4_k on a dense checkpoint: K-quant activation blocks of 256 in the native step."""
    path = tmp_path / "q4k"
    make_hf_model("qwen2_tied", path, hidden_size=256, intermediate_size=512)  # rows of whole K-blocks
    llm = LLM(str(path), device="cpu", kv_cache_gb=0.01, max_model_len=256, quantize="q4_k")
    assert llm.engine.runner.native_decoder is not None
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    native = llm.generate([[11, 12, 13, 14]], params)[0].outputs[0].token_ids
    llm.engine.runner.native_decoder = None
    assert llm.generate([[11, 12, 13, 14]], params)[0].outputs[0].token_ids == native
