"""Generation features through the public API on a tiny random Qwen3 (fp32, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from openqwen import LLM, SamplingParams
from openqwen.engine.sampler import SampleRequest, _filter, apply_penalties, sample
from tiny_models import make_hf_model

PROMPT = [9707, 11, 1879, 0, 358, 1079, 264, 3460, 1614, 13]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen")
    hf = make_hf_model("qwen3", path)
    return hf, LLM(str(path), device="cpu", dtype="float32", kv_cache_gb=0.05)


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


def test_max_tokens_and_finish_reason(models):
    _, llm = models
    out = llm.generate([PROMPT], greedy(7))[0].outputs[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"


def test_stop_token_ids(models):
    _, llm = models
    full = llm.generate([PROMPT], greedy(12))[0].outputs[0].token_ids
    stop_at = full[5]
    out = llm.generate([PROMPT], greedy(12, stop_token_ids=[stop_at]))[0].outputs[0]
    assert out.token_ids == full[: full.index(stop_at) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at


def test_stop_string_truncates(models):
    _, llm = models
    full = llm.generate([PROMPT], greedy(16))[0].outputs[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop
    out = llm.generate([PROMPT], greedy(16, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full[: full.index(stop)]
    kept = llm.generate([PROMPT], greedy(16, stop=[stop], include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == full[: full.index(stop) + len(stop)]


def test_logprobs_match_the_model(models):
    """Reported logprobs equal log_softmax of the model's logits at each position (computed
    independently with a full forward pass), and the top list is sorted and contains the best."""
    _, llm = models
    out = llm.generate([PROMPT], greedy(5, logprobs=3))[0].outputs[0]
    logits = llm.engine.runner.score(PROMPT + out.token_ids)
    reference = logits.log_softmax(-1)
    for i, (token, lp) in enumerate(zip(out.token_ids, out.logprobs)):
        row = reference[len(PROMPT) - 1 + i]
        assert lp.token_id == token
        assert math.isclose(lp.logprob, row[token].item(), abs_tol=1e-4)
        assert [t for t, _ in lp.top] == row.topk(3).indices.tolist()


def test_seed_reproducible_and_sensitive(models):
    _, llm = models
    params = lambda seed: SamplingParams(temperature=1.0, max_tokens=12, seed=seed, ignore_eos=True)  # noqa: E731
    a = llm.generate([PROMPT], params(1))[0].outputs[0].token_ids
    b = llm.generate([PROMPT], params(1))[0].outputs[0].token_ids
    c = llm.generate([PROMPT], params(2))[0].outputs[0].token_ids
    assert a == b and a != c


def test_seeded_request_unaffected_by_batch_neighbours(models):
    _, llm = models
    seeded = SamplingParams(temperature=1.0, max_tokens=10, seed=5, ignore_eos=True)
    alone = llm.generate([PROMPT], seeded)[0].outputs[0].token_ids
    noisy = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    batch = llm.generate([PROMPT, PROMPT[:4], PROMPT], [noisy, noisy, seeded])
    assert batch[2].outputs[0].token_ids == alone


def test_top_k_one_is_greedy(models):
    _, llm = models
    expected = llm.generate([PROMPT], greedy(10))[0].outputs[0].token_ids
    out = llm.generate([PROMPT], SamplingParams(temperature=0.8, top_k=1, max_tokens=10, ignore_eos=True, seed=3))
    assert out[0].outputs[0].token_ids == expected


def reference_filter(logits: torch.Tensor, top_k: list[int], top_p: list[float], min_p: list[float]) -> torch.Tensor:
    """The filters row by row over the whole sorted vocabulary (vLLM's order: top-k, then top-p
    and min-p on the distribution renormalized after top-k)."""
    out = torch.full_like(logits, float("-inf"))
    for i, (k, p, m) in enumerate(zip(top_k, top_p, min_p)):
        values, ids = logits[i].sort(descending=True)
        keep = torch.arange(len(values)) < (k if k > 0 else len(values))
        probs = values.masked_fill(~keep, float("-inf")).softmax(-1)
        if p < 1:  # 1: off
            keep &= (probs.cumsum(-1) - probs) < p
        keep &= probs >= m * probs[0]
        keep[0] = True
        out[i, ids[keep]] = values[keep]
    return out


@pytest.mark.parametrize("scale", [3.0, 30.0], ids=["flat", "peaked"])  # flat: top-p needs the whole sort
def test_filters_equal_a_whole_vocabulary_reference(scale):
    """_filter finds the best tokens with topk (the largest top-k, or a window for top-p rows) and
    sorts the whole vocabulary only when a row may keep more; the kept logits must be the same."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 151936, generator=gen) * scale
    for top_k, top_p, min_p in [([1, 20, 50, 7], [1.0, 0.8, 0.95, 0.5], [0.0, 0.0, 0.05, 0.0]),
                                ([0, 0, 0, 0], [0.8, 0.9, 1.0, 0.5], [0.0, 0.0, 0.1, 0.0]),
                                ([0, 20, 0, 3], [0.8, 1.0, 0.95, 1.0], [0.0, 0.0, 0.0, 0.0])]:
        expected = reference_filter(logits, top_k, top_p, min_p)
        args = torch.tensor(top_k), torch.tensor(top_p), torch.tensor(min_p)
        got = _filter(logits, *args, candidates=max(top_k) if min(top_k) > 0 else None)
        assert torch.equal(got.isfinite(), expected.isfinite())
        assert torch.equal(got[got.isfinite()], expected[expected.isfinite()])


@pytest.mark.parametrize("filters", [dict(top_k=3), dict(top_p=0.8)], ids=["top-k", "top-p"])
def test_cpu_draw_follows_the_filtered_distribution(filters):
    """The CPU sampler draws among the kept tokens only, not over the whole vocabulary; the
    frequencies must still be the filtered softmax's."""
    logits = torch.full((1, 1000), -10.0)
    best = [3, 10, 500, 999]
    logits[0, best] = torch.tensor([2.0, 1.5, 1.0, 0.2])
    kept = best[:3]  # top-k 3; and top-p 0.8 keeps these three (masses 0.47, 0.28, 0.17, 0.08, ...)
    probs = logits[0].softmax(-1)
    assert probs[best[:2]].sum() < 0.8 <= probs[kept].sum()
    expected = probs[kept] / probs[kept].sum()
    gen = torch.Generator().manual_seed(0)
    request = SampleRequest(SamplingParams(temperature=1.0, **filters), [], 0, gen)
    draws = [sample(logits.clone(), [request])[0][0] for _ in range(3000)]
    assert set(draws) <= set(kept)
    for token, p in zip(kept, expected.tolist()):
        assert abs(draws.count(token) / len(draws) - p) < 0.03


def test_min_p_one_and_tiny_top_p_are_greedy(models):
    _, llm = models
    expected = llm.generate([PROMPT], greedy(8))[0].outputs[0].token_ids
    for params in (SamplingParams(temperature=1.0, min_p=1.0, max_tokens=8, ignore_eos=True),
                   SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=8, ignore_eos=True)):
        assert llm.generate([PROMPT], params)[0].outputs[0].token_ids == expected


def test_repetition_penalty_matches_transformers(models):
    hf, llm = models
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        hf.generation_config.eos_token_id = None
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                          repetition_penalty=1.3, pad_token_id=151643)[0, len(PROMPT):].tolist()
    out = llm.generate([PROMPT], greedy(16, repetition_penalty=1.3))[0].outputs[0].token_ids
    assert out == ref


def test_presence_and_frequency_penalties_follow_openai_definition():
    """logit[t] -= presence * (count[t] > 0) + frequency * count[t], over generated tokens only."""
    logits = torch.zeros(1, 6)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    apply_penalties(logits, [SampleRequest(params, token_ids=[0, 1, 2, 2, 3], num_prompt_tokens=2, generator=None)])
    assert logits[0].tolist() == [0.0, 0.0, -1.0, -0.75, 0.0, 0.0]


def test_streaming_grows_and_ends_like_generate(models):
    _, llm = models
    expected = llm.generate([PROMPT], greedy(10))[0].outputs[0]
    texts, last = [], None
    for last in llm.stream(PROMPT, greedy(10)):
        texts.append(last.outputs[0].text)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert last.finished and last.outputs[0].token_ids == expected.token_ids and texts[-1] == expected.text


def test_n_samples(models):
    _, llm = models
    out = llm.generate([PROMPT], SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=0, ignore_eos=True))[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1


def test_eos_stops_generation(models):
    _, llm = models
    eos = sorted(llm.engine.eos_token_ids)[0]
    full = llm.generate([PROMPT], greedy(12))[0].outputs[0].token_ids
    # make EOS certain by banning every other token through a logits processor
    only_eos = lambda _, row: torch.full_like(row, float("-inf")).index_fill_(0, torch.tensor([eos]), 0.0)  # noqa: E731
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, logits_processors=[only_eos]))[0].outputs[0]
    assert out.token_ids == [eos] and out.finish_reason == "stop"
    assert len(full) == 12


def test_bad_prompts_are_clear_errors(models):
    _, llm = models
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], greedy(2))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([[10**9]], greedy(2))
    with pytest.raises(ValueError, match="context"):
        llm.generate([[1] * 5000], greedy(2))


def test_min_tokens_bans_eos_until_reached(models):
    _, llm = models
    eos = sorted(llm.engine.eos_token_ids)[0]
    prefer_eos = lambda _, row: row.index_fill(0, torch.tensor([eos]), 1e4)  # noqa: E731
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, min_tokens=5,
                                                logits_processors=[prefer_eos]))[0].outputs[0]
    assert len(out.token_ids) == 6 and eos not in out.token_ids[:5] and out.token_ids[5] == eos


def test_stop_string_on_the_last_allowed_token_reports_stop(models):
    """The stop string completes on the max_tokens-th token: the reply ends at the stop string,
    so the reason is "stop", not "length"."""
    _, llm = models
    full = llm.generate([PROMPT], greedy(8))[0].outputs[0].text
    stop = full[-2:] if len(full) >= 2 and full.find(full[-2:]) == len(full) - 2 else full[-1:]
    assert stop and full.find(stop) == len(full) - len(stop)
    out = llm.generate([PROMPT], greedy(8, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full[: len(full) - len(stop)]


def test_extreme_sampling_values_fall_back_to_the_top_token():
    """A top_p that rounds to 0 in fp32 and a temperature too small to divide by (found by the
    schemathesis fuzzing) pick the argmax instead of failing on NaN probabilities."""
    import torch

    from openqwen.engine.sampler import SampleRequest, sample, sample_on_device

    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(top_p=5e-324), SamplingParams(temperature=5e-324), SamplingParams(temperature=0.7, top_p=1e-320)]
    for draw in (sample, sample_on_device):
        tokens, _ = draw(logits.clone(), [SampleRequest(p, [1, 2], 1, None) for p in params])
        assert tokens == logits.argmax(-1).tolist()
