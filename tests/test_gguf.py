"""GGUF reading: tiny files for every architecture and tensor type, bad files, and the real default model."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from gguf_fixtures import ARCHES, CHATML, MERGES, VOCAB, write_tiny_gguf
from openqwen.config import ModelArgs
from openqwen.registry import DEFAULT_MODEL, list_models, resolve_model
from openqwen.weights.errors import WeightsError
from openqwen.weights.gguf import GGUFFile
from openqwen.weights.gguf_quants import SUPPORTED_TYPES, dequantize

# Largest error of each encoding, as a fraction of the tensor's largest magnitude.
TOLERANCE = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 4e-3, Q.Q8_0: 5e-3, Q.Q5_1: 0.035, Q.Q5_0: 0.07, Q.Q4_1: 0.07,
             Q.Q4_0: 0.13}
STORED_TYPES = sorted(SUPPORTED_TYPES - {Q.F32})  # F32 is in every file anyway, for norms and biases


def _check_file(tiny) -> GGUFFile:
    """The file reads back as written: config, names, shapes, and values bit-exact with gguf's numpy."""
    f = GGUFFile(tiny.path)
    assert f.config() == tiny.config
    ModelArgs.from_dict(f.config())
    tensors = {t.name: t for t in f.tensors()}
    assert tensors.keys() == tiny.weights.keys()
    for name, t in tensors.items():
        assert t.qtype == tiny.qtypes[name] and not t.raw.flags.owndata
        value = t.dequantize()
        assert value.dtype == torch.float32 and t.shape == tiny.weights[name].shape == tuple(value.shape)
        assert torch.equal(value, torch.from_numpy(tiny.weights[name])), name
        original = tiny.originals[name]
        assert np.abs(value.numpy() - original).max() <= TOLERANCE.get(t.qtype, 0.0) * np.abs(original).max(), name
    return f


@pytest.mark.parametrize("arch", ARCHES)
def test_each_arch_round_trips(tmp_path, arch):
    f = _check_file(write_tiny_gguf(tmp_path / "m.gguf", arch, Q.Q8_0))
    assert f.arch == arch


@pytest.mark.parametrize("qtype", STORED_TYPES, ids=lambda q: q.name)
def test_each_tensor_type_round_trips(tmp_path, qtype):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", "qwen2", qtype)
    assert qtype in tiny.qtypes.values()  # K-types fit only the 256-wide ffn_down rows
    _check_file(tiny)


def test_tied_embeddings_and_yarn(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", "qwen3", Q.Q4_0, tie=True, yarn=True)
    f = _check_file(tiny)
    assert f.config()["tie_word_embeddings"] and "lm_head.weight" not in tiny.weights
    args = ModelArgs.from_dict(f.config())
    assert args.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    assert args.head_dim == 32 and args.qk_norm and not args.qkv_bias


def test_moe_shapes_follow_hf_layout(tmp_path):
    tensors = {t.name: t for t in GGUFFile(write_tiny_gguf(tmp_path / "m.gguf", "qwen2moe").path).tensors()}
    assert tensors["model.layers.1.mlp.experts.gate_proj"].shape == (4, 64, 64)  # [E, I, D]
    assert tensors["model.layers.1.mlp.experts.down_proj"].shape == (4, 64, 64)  # [E, D, I]
    assert tensors["model.layers.0.mlp.shared_expert.down_proj.weight"].shape == (64, 96)
    assert tensors["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 64)
    assert tensors["model.layers.0.mlp.gate.weight"].shape == (4, 64)


def test_container_matches_gguf_reader(tmp_path):
    """The hand-written parser agrees with gguf's own reader on metadata and tensor bytes."""
    tiny = write_tiny_gguf(tmp_path / "m.gguf", "qwen2moe", Q.Q5_0)
    reader = gguf.GGUFReader(tiny.path)
    f = GGUFFile(tiny.path)
    expected = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    assert f.metadata.keys() == expected.keys()
    for key, value in expected.items():
        assert f.metadata[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    ours = [t.raw for t in f.tensors()]
    assert len(ours) == len(reader.tensors)
    for raw, theirs in zip(ours, reader.tensors):
        assert np.array_equal(raw, theirs.data.reshape(-1).view(np.uint8)), theirs.name


def test_tokenizer_metadata(tmp_path):
    f = GGUFFile(write_tiny_gguf(tmp_path / "m.gguf", "qwen3").path)
    data = f.tokenizer_data()
    assert len(data["tokens"]) == len(data["token_type"]) == VOCAB
    assert data["tokens"][:3] == ["!", '"', "#"]
    assert data["tokens"][264:267] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert data["merges"] == MERGES and data["chat_template"] == CHATML
    assert (data["model"], data["pre"], data["add_bos_token"]) == ("gpt2", "qwen2", False)
    assert (data["bos_token_id"], data["eos_token_id"], data["padding_token_id"]) == (264, 266, 264)
    assert f.generation_eos_ids() == [266, 264]


def test_describe(tmp_path):
    info = GGUFFile(write_tiny_gguf(tmp_path / "m.gguf", "qwen2").path).describe()
    assert info["arch"] == "qwen2" and info["name"] == "tiny qwen2"
    assert info["tensor_types"]["F32"]["tensors"] == 11  # 2x(2 norms + 3 biases) + final norm
    assert sum(t["tensors"] for t in info["tensor_types"].values()) == info["tensors"] == 27
    attention = 2 * 64 * 64 + 2 * 32 * 64 + 64 + 2 * 32  # q, o; k, v (2 kv heads of 16); biases
    assert info["parameters"] == 2 * VOCAB * 64 + 64 + 2 * (attention + 3 * 256 * 64 + 2 * 64)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_fast_kernels_bit_exact(qtype):
    """Random bytes (any fp16 scale, NaN included) against gguf's numpy, past one chunk of 2^20 values."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    shape = (2100, 512)
    raw = np.random.default_rng(1).integers(0, 256, (shape[0], shape[1] // block_size * type_size), dtype=np.uint8)
    with np.errstate(invalid="ignore"):  # inf * 0 in blocks whose random scale is inf
        expected = torch.from_numpy(gguf.quants.dequantize(raw, qtype))
    got = dequantize(raw.reshape(-1), qtype, shape)
    exact = {"rtol": 0, "atol": 0, "equal_nan": True}
    torch.testing.assert_close(got, expected, **exact)
    torch.testing.assert_close(dequantize(raw.reshape(-1), qtype, shape, torch.bfloat16), got.bfloat16(), **exact)


# --- bad files: each a WeightsError whose one-line message names the file ---------------------------


def _error(path) -> str:
    with pytest.raises(WeightsError) as info:
        GGUFFile(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_bad_magic(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    assert "not a GGUF file" in _error(tmp_path / "x.gguf")


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "not a GGUF file" in _error(tmp_path / "empty.gguf")
    assert "cannot read" in _error(tmp_path / "absent.gguf")


def test_truncated_data(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf").path
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    assert "truncated" in _error(path)


def test_truncated_header(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf").path
    path.write_bytes(path.read_bytes()[:3000])  # inside the token list
    message = _error(path)
    assert "truncated" in message or "corrupt" in message


def test_corrupt_headers_fail_cleanly(tmp_path):
    """Random bytes after the magic, and random byte flips in a real header: a WeightsError or a
    successful open (a flip inside a token string can leave the file valid), never anything else."""
    rng = np.random.default_rng(0)
    for i in range(10):
        path = tmp_path / f"garbage{i}.gguf"
        path.write_bytes(b"GGUF\x03\x00\x00\x00" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
        _error(path)
    good = bytearray(write_tiny_gguf(tmp_path / "m.gguf").path.read_bytes())
    header_end = good.index(b"{% for message")  # the chat template, the last metadata value
    for i in range(40):
        bad = bytearray(good)
        for at in rng.integers(8, header_end, 3):
            bad[at] = int(rng.integers(0, 256))
        path = tmp_path / f"flipped{i}.gguf"
        path.write_bytes(bytes(bad))
        try:
            GGUFFile(path)
        except WeightsError as e:
            assert str(path) in str(e) and "\n" not in str(e)


def test_unsupported_architecture(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "llama.gguf", "llama")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "unsupported architecture 'llama'" in _error(tmp_path / "llama.gguf")


def test_unsupported_tensor_type(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", "qwen2", Q.TQ1_0).path
    assert "unsupported tensor type TQ1_0" in _error(path)


def test_missing_tensor(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", "qwen3", drop=frozenset({"blk.1.ffn_up.weight"})).path
    assert "missing tensor 'blk.1.ffn_up.weight'" in _error(path)


def test_unexpected_tensor(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", "qwen2", extra={"blk.0.attn_qkv.weight": np.zeros((128, 64))}).path
    assert "unexpected tensor 'blk.0.attn_qkv.weight'" in _error(path)
    path = write_tiny_gguf(tmp_path / "n.gguf", "qwen2", extra={"blk.0.attn_q_norm.weight": np.ones(16)}).path
    assert "unexpected tensor 'blk.0.attn_q_norm.weight' for this model's metadata" in _error(path)


def test_shape_disagrees_with_metadata(tmp_path):
    counts = {"attention.key_length": 16, "attention.value_length": 16}  # q rows become 4 * 16
    path = write_tiny_gguf(tmp_path / "m.gguf", "qwen3", counts=counts).path
    assert "tensor 'blk.0.attn_q.weight' has shape [128, 64] but the metadata implies [64, 64]" in _error(path)


def test_missing_metadata(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", "qwen2moe", counts={"expert_count": 0}).path
    assert "experts" in _error(path)


# --- the real default model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_gguf():
    entry = next(e for e in list_models() if e.name == DEFAULT_MODEL)
    if not entry.installed:
        pytest.skip(f"the default model's parts are not installed ({entry.install})")
    return GGUFFile(resolve_model(DEFAULT_MODEL))


@pytest.mark.slow
def test_default_model_layout(default_gguf):
    cfg = default_gguf.config()
    shape = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    assert [cfg[k] for k in shape] == [24, 896, 14, 2, 64]
    assert (cfg["vocab_size"], cfg["intermediate_size"], cfg["tie_word_embeddings"]) == (151936, 4864, False)
    assert (cfg["rope_theta"], cfg["rms_norm_eps"], cfg["max_position_embeddings"]) == (1e6, 1e-6, 32768)
    assert set(default_gguf.describe()["tensor_types"]) == {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    assert default_gguf.generation_eos_ids() == [151645, 151643]
    ModelArgs.from_dict(cfg)


@pytest.mark.slow
def test_default_model_matches_transformers(default_gguf):
    """Bytes as gguf's reader finds them; names and values as transformers' GGUF loader makes them
    (its per-tensor code path, on the global tensors and the first three layers, to keep this quick)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    cfg = {k: v for k, v in default_gguf.config().items() if k != "model_type"}
    with torch.device("meta"):
        hf_model = Qwen2ForCausalLM(Qwen2Config(**{**cfg, "num_hidden_layers": 3}))
    processor = TENSOR_PROCESSORS.get("qwen2", TensorProcessor)(config=cfg)
    hf_names = get_gguf_hf_weights_map(hf_model, processor)
    reader = gguf.GGUFReader(default_gguf.path)
    ours = list(default_gguf.tensors())
    assert len(ours) == len(reader.tensors)
    picked = {"token_embd.weight", "blk.0.attn_v.weight", "blk.0.attn_q.bias",  # Q5_0, Q8_0, F32
              "blk.0.ffn_down.weight", "blk.2.ffn_down.weight", "output_norm.weight"}  # Q6_K, Q4_K, F32
    for mine, tensor in zip(ours, reader.tensors):
        assert np.array_equal(mine.raw, tensor.data.reshape(-1).view(np.uint8)), tensor.name
        if tensor.name in hf_names:
            assert mine.name == hf_names[tensor.name]
        else:
            assert tensor.name.startswith("blk.") and int(tensor.name.split(".")[1]) >= 3
        if tensor.name in picked:
            result = processor.process(weights=gguf.dequantize(tensor.data, tensor.tensor_type), name=tensor.name)
            assert torch.equal(mine.dequantize(), torch.from_numpy(np.array(result.weights))), tensor.name
