"""Draft-verified decoding (server/engine/drafts.py) on the tiny model: the tokens and
captured latents equal plain greedy decoding, whatever the drafts, in a batch with joins,
leaves and a sampled row; and accepting one unverified token is caught."""

import pytest
import torch

from latent_ops.program import SamplingParams
from server.engine import drafts as drafts_module
from server.engine.drafts import Drafter, Sources, accepted
from server.engine.runner import ModelRunner, Sequence
from tests.support.stepping import run_with_joins

PROMPTS = [
    "The quick brown fox jumps over the lazy dog",
    "12 + 30 = 42, and 42 + 8 = 50, so 12 + 30 + 8 =",
    "Hello there, how are you today? Hello there, how",
    "A much longer prompt that goes on for a while, so padding differs a lot here.",
]
LENGTHS = [24, 30, 9, 18]


def _sequences(tok, sources=None, sampled_row=None):
    seqs = []
    for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS)):
        params = SamplingParams(max_tokens=n, capture_latents=True)
        if i == sampled_row:
            params = SamplingParams(max_tokens=n, temperature=0.8, seed=3, capture_latents=True)
        seq = Sequence(i, tok(p)["input_ids"], params)
        seq.draft_sources = list(sources[i]) if sources else []
        seqs.append(seq)
    return seqs


def _run(runner, seqs):
    return run_with_joins(runner, seqs, join_at=(0, 0, 2, 3))


def _plain(model, tok, **kw):
    return _run(ModelRunner(model, max_batch_size=3, eos_token_ids={2}), _sequences(tok, **kw))


def _drafted(model, tok, drafter, sources, **kw):
    runner = ModelRunner(model, max_batch_size=3, eos_token_ids={2}, drafter=drafter)
    return _run(runner, _sequences(tok, sources, **kw))


def _assert_same(plain, drafted):
    for a, b in zip(plain, drafted):
        assert b.output_ids == a.output_ids
        assert torch.allclose(b.latents_tensor(), a.latents_tensor(), atol=1e-4)


def _mutated(tokens, every=5):
    return [t if i % every else (t + 1) % 250 for i, t in enumerate(tokens)]


@pytest.mark.parametrize("kind", ["perfect", "mutated", "prompt_lookup", "nothing"])
def test_drafted_decoding_equals_plain_greedy(model, tok, kind):
    plain = _plain(model, tok, sampled_row=3)
    answers = [s.prompt_ids[-4:] + s.output_ids for s in plain]
    sources = {
        "perfect": [[a] for a in answers],  # the answer itself: nearly all accepted
        "mutated": [[_mutated(a)] for a in answers],  # every fifth token wrong
        "prompt_lookup": None,
        "nothing": [[[7, 7, 7]] for _ in answers],
    }[kind]
    drafter = Drafter(k=5, budget=12, prompt_lookup=kind == "prompt_lookup")
    drafted = _drafted(model, tok, drafter, sources, sampled_row=3)
    _assert_same(plain, drafted)
    if kind == "perfect":
        assert drafter.stats.rate() > 0.8 and drafter.stats.accepted > 40
    if kind == "mutated":
        assert 0 < drafter.stats.accepted < drafter.stats.proposed


def test_a_step_that_accepts_one_unverified_token_is_caught(model, tok, monkeypatch):
    plain = _plain(model, tok)
    answers = [[a] for a in (_mutated(s.prompt_ids[-4:] + s.output_ids) for s in plain)]

    def one_too_many(greedy, drafts):
        return [min(a + 1, len(d)) for a, d in zip(accepted(greedy, drafts), drafts)]

    monkeypatch.setattr(drafts_module, "accepted", one_too_many)
    drafted = _drafted(model, tok, Drafter(k=5, budget=12, prompt_lookup=False), answers)
    with pytest.raises(AssertionError):
        _assert_same(plain, drafted)


def test_sources_propose_what_followed_the_longest_latest_match():
    src = Sources(2, 4, [[1, 2, 3, 4, 5, 1, 2, 9, 8], [5, 6, 7]])
    assert src.after([0, 1, 2], 3) == [9, 8]  # latest "1 2" in the first source
    assert src.after([3, 4, 5], 2) == [1, 2]  # "3 4 5" (n = 3) beats the later "4 5"?
    assert src.after([5, 6], 5) == [7]
    assert src.after([6, 6], 5) == []


def test_drafts_respect_budget_max_tokens_and_sampling():
    drafter = Drafter(k=4, budget=5, prompt_lookup=False)
    seqs = [Sequence(i, [1, 2], SamplingParams(max_tokens=m)) for i, m in enumerate((9, 9, 3))]
    seqs.append(Sequence(3, [1, 2], SamplingParams(max_tokens=9, temperature=0.5)))
    for s in seqs:
        s.output_ids = [3]
        s.draft_sources = [[2, 3, 4, 5, 6, 7, 8]]
    drafts = drafter.propose(seqs, max_model_len=100)
    assert drafts[0] == [4, 5, 6, 7]  # k = 4
    assert drafts[1] == [4]  # the step's budget (5) is spent
    assert drafts[2] == [] and drafts[3] == []  # budget gone; sampled rows never draft
