"""The batched runner against transformers' own generate and forward pass (tiny model)."""

import torch

from latent_ops.program import SamplingParams
from latent_ops.slr import SLRConfig, Thoughts
from server.engine.runner import ModelRunner, Sequence
from tests.support.stepping import run_with_joins

PROMPTS = [
    "The quick brown fox jumps over the lazy dog",
    "x",
    "Hello there, how are you today?",
    "12 + 30 =",
    "A much longer prompt that goes on for a while, so padding differs a lot here.",
]


def _generate(model, ids, max_new):
    t = torch.tensor([ids])
    out = model.generate(
        t,
        attention_mask=torch.ones_like(t),
        do_sample=False,
        max_new_tokens=max_new,
        eos_token_id=2,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


_run = run_with_joins


def test_greedy_alone_equals_generate(model, tok):
    ids = tok(PROMPTS[0])["input_ids"]
    runner = ModelRunner(model, max_batch_size=1, eos_token_ids={2})
    seq = Sequence(0, ids, SamplingParams(max_tokens=24))
    _run(runner, [seq], [0])
    assert seq.output_ids == _generate(model, ids, 24)


def test_greedy_in_mixed_batch_with_joins_and_leaves(model, tok):
    runner = ModelRunner(model, max_batch_size=3, eos_token_ids={2})
    lengths = [24, 7, 30, 3, 18]  # different max_tokens: rows leave at different steps
    seqs = [
        Sequence(i, tok(p)["input_ids"], SamplingParams(max_tokens=n, capture_latents=True))
        for i, (p, n) in enumerate(zip(PROMPTS, lengths))
    ]
    _run(runner, seqs, join_at=[0, 0, 2, 5, 6])  # batch of 3 forces waiting, too
    for seq, n in zip(seqs, lengths):
        assert seq.output_ids == _generate(model, seq.prompt_ids, n)
        assert n < 5 or len(set(seq.output_ids)) > 2  # a model that repeats hides bugs
        # latents: final-norm states at the positions that produced each output token
        full = torch.tensor([seq.prompt_ids + seq.output_ids[:-1]])
        with torch.no_grad():
            ref = model.model(full).last_hidden_state[0, len(seq.prompt_ids) - 1 :]
        torch.testing.assert_close(seq.latents_tensor(), ref, rtol=1e-4, atol=1e-5)
        assert seq.finish_reason == "length"
    assert runner.cache is None and not runner.running  # everything left the batch


def test_seeded_sampling_is_reproducible_and_seed_dependent(model, tok):
    ids = tok(PROMPTS[2])["input_ids"]

    def sample(seed, neighbours):
        runner = ModelRunner(model, max_batch_size=4, eos_token_ids=set())
        seqs = [Sequence(0, ids, SamplingParams(max_tokens=20, temperature=1.5, seed=seed))]
        seqs += [
            Sequence(i + 1, tok(p)["input_ids"], SamplingParams(max_tokens=5))
            for i, p in enumerate(PROMPTS[:neighbours])
        ]
        _run(runner, seqs, [0] * len(seqs))
        return seqs[0].output_ids

    first = sample(7, 0)
    assert sample(7, 3) == first  # same seed, other rows in the batch: same tokens
    assert sample(8, 0) != first


def test_top_p_tiny_keeps_only_the_argmax(model, tok):
    ids = tok(PROMPTS[3])["input_ids"]
    runner = ModelRunner(model, max_batch_size=2, eos_token_ids={2})
    seq = Sequence(0, ids, SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=3))
    _run(runner, [seq], [0])
    assert seq.output_ids == _generate(model, ids, 12)


def test_stop_token_and_logprobs(model, tok):
    ids = tok(PROMPTS[0])["input_ids"]
    greedy = _generate(model, ids, 10)
    stop_token = greedy[4]
    runner = ModelRunner(model, max_batch_size=2, eos_token_ids={2})
    seq = Sequence(0, ids, SamplingParams(max_tokens=10, stop_token_ids=[stop_token], logprobs=3))
    _run(runner, [seq], [0])
    first = greedy.index(stop_token)
    assert seq.output_ids == greedy[: first + 1]  # the stop token is kept in token ids
    assert seq.finish_reason == "stop"
    assert len(seq.logprobs) == len(seq.output_ids)
    for entry, token in zip(seq.logprobs, seq.output_ids):
        assert entry.token_id == token and entry.top[0][0] == token  # greedy = top-1
        assert len(entry.top) == 3 and entry.logprob <= 0


def test_abort_leaves_neighbours_unchanged(model, tok):
    runner = ModelRunner(model, max_batch_size=4, eos_token_ids={2})
    a = Sequence(0, tok(PROMPTS[0])["input_ids"], SamplingParams(max_tokens=16))
    b = Sequence(1, tok(PROMPTS[4])["input_ids"], SamplingParams(max_tokens=16))
    runner.add(a)
    runner.add(b)
    for _ in range(4):
        runner.step()
    runner.abort(b)
    while runner.has_work:
        runner.step()
    assert b.finish_reason == "abort" and len(b.output_ids) < 16
    assert a.output_ids == _generate(model, a.prompt_ids, 16)


def test_context_limit_ends_with_length(model, tok):
    ids = tok(PROMPTS[0])["input_ids"]
    runner = ModelRunner(model, max_batch_size=1, max_model_len=len(ids) + 3, eos_token_ids=set())
    seq = Sequence(0, ids, SamplingParams(max_tokens=50))
    _run(runner, [seq], [0])
    assert len(seq.output_ids) == 3 and seq.finish_reason == "length"


def test_prefix_cache_reuse_gives_the_same_tokens_and_skips_the_prompt(model, tok):
    runner = ModelRunner(model, max_batch_size=4, eos_token_ids={2})
    prompts = [tok(p)["input_ids"] for p in PROMPTS[:3]]
    # first round: each prompt alone, its KV kept under its own key
    first = [
        Sequence(i, ids, SamplingParams(max_tokens=6), cache_key=f"k{i}", cache_len=len(ids))
        for i, ids in enumerate(prompts)
    ]
    _run(runner, first, [0, 0, 1])
    assert set(runner.prefix_cache) == {"k0", "k1", "k2"}
    # second round, one prefill pass: two rows reuse their prompt (different lengths,
    # different forced prefixes), one row has no key and runs in full beside them
    prefixes = [[5, 9, 13], [7], None]
    seqs = []
    for i, (ids, prefix) in enumerate(zip(prompts, prefixes)):
        if prefix is None:
            seqs.append(
                Sequence(10 + i, tok(PROMPTS[4])["input_ids"], SamplingParams(max_tokens=9))
            )
        else:
            seqs.append(
                Sequence(10 + i, ids + prefix, SamplingParams(max_tokens=9), cache_key=f"k{i}")
            )
    before, reused = runner.prefill_tokens, runner.reused_tokens
    _run(runner, seqs, [0, 0, 0])
    assert runner.prefill_tokens - before == 3 + 1 + len(seqs[2].prompt_ids)
    assert runner.reused_tokens - reused == len(prompts[0]) + len(prompts[1])
    for seq in seqs:
        assert seq.output_ids == _generate(model, seq.prompt_ids, 9)
    runner.release("k0")
    assert "k0" not in runner.prefix_cache


def test_waiting_sequences_are_admitted_by_priority_then_arrival(model, tok):
    runner = ModelRunner(model, max_batch_size=1, eos_token_ids={2})
    ids = tok("abc")["input_ids"]
    seqs = [
        Sequence(i, ids, SamplingParams(max_tokens=1), priority=p)
        for i, p in enumerate([5.0, 1.0, 5.0, 0.5])
    ]
    for seq in seqs:
        runner.add(seq)
    order = []
    while runner.has_work:
        order += [s.seq_id for s in runner.step() if s.finished]
    assert order == [3, 1, 0, 2]


def test_tiny_top_p_keeps_the_most_likely_token(model, tok):
    # 1e-300 becomes 0.0 in fp32: every token compared >= it and was dropped (a crash)
    runner = ModelRunner(model, max_batch_size=1, eos_token_ids={2})
    ids = tok("hello")["input_ids"]
    seq = Sequence(0, ids, SamplingParams(max_tokens=6, temperature=2.0, top_p=1e-300, seed=3))
    _run(runner, [seq], [0])
    assert seq.output_ids == _generate(model, ids, 6)  # only the argmax survives: greedy


LONG = "A much longer prompt that goes on for a while, so padding differs a lot here. " * 2


def _looping(seq_id, tok, max_loops=8, max_tokens=4):
    cfg = SLRConfig(layout="recurrent", max_loops=max_loops, feedback="soft")
    params = SamplingParams(max_tokens=max_tokens)
    return Sequence(seq_id, tok(LONG)["input_ids"], params, thoughts=Thoughts(cfg))


def test_a_looping_recurrent_prompt_does_not_hold_a_short_request(model, tok):
    chunk = 16
    runner = ModelRunner(model, max_batch_size=4, eos_token_ids=set(), recurrent_chunk=chunk)
    looping = _looping(0, tok)
    short = Sequence(1, tok("x")["input_ids"], SamplingParams(max_tokens=2))
    runner.add(looping)
    assert [s.seq_id for s in runner.step()] == [0]  # admitted (scheduled), no token yet
    runner.add(short)
    while not short.finished:
        before = runner.prefill_tokens
        stepped = runner.step()
        # one step: the short prompt (when admitted) and at most one chunk of the loops
        assert runner.prefill_tokens - before <= chunk + len(short.prompt_ids)
        assert all(s is not looping for s in stepped)  # token-less: not reported
    assert len(short.output_ids) == 2
    assert looping.loops < 8 and not looping.output_ids and not looping.finished
    assert runner.running == [short, looping]  # the engine's deadlines see both
    while runner.has_work:
        runner.step()
    assert looping.loops == 8 and len(looping.output_ids) == 4
    assert runner.cache is None and not runner.running


def test_a_looping_sequence_takes_a_batch_slot_and_leaves_on_abort_or_reset(model, tok):
    runner = ModelRunner(model, max_batch_size=1, eos_token_ids=set(), recurrent_chunk=8)
    looping = _looping(0, tok)
    plain = Sequence(1, tok("abc")["input_ids"], SamplingParams(max_tokens=2))
    runner.add(looping)
    runner.add(plain)
    for _ in range(3):
        assert all(s is not plain for s in runner.step())
    assert runner.running == [looping] and runner.waiting == [plain]  # the slot is taken
    runner.abort(looping)
    assert looping.finish_reason == "abort" and runner.has_work
    assert runner.step() == [plain]  # the aborted one left; the plain one came in
    assert runner.running == [plain] and not looping.output_ids
    while runner.has_work:
        runner.step()
    again = _looping(2, tok)
    runner.add(again)
    runner.step()
    assert runner.running == [again]
    runner.reset()
    assert again.finish_reason == "abort" and not runner.has_work and not runner.running


def test_latent_capture_makes_no_host_copy_per_step(model, tok, monkeypatch):
    """Captured latents stay on the model's device while decoding (a device-to-host copy
    per token is a synchronisation per token on a GPU); they are gathered once at the end."""
    runner = ModelRunner(model, max_batch_size=2, eos_token_ids={2})
    seqs = [
        Sequence(i, tok(p)["input_ids"], SamplingParams(max_tokens=8, capture_latents=True))
        for i, p in enumerate(PROMPTS[:2])
    ]
    copies = []
    real_cpu, real_to = torch.Tensor.cpu, torch.Tensor.to

    def counting_cpu(self, *args, **kwargs):
        copies.append(tuple(self.shape))
        return real_cpu(self, *args, **kwargs)

    def counting_to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if str(target) == "cpu" or getattr(target, "type", None) == "cpu":
            copies.append(tuple(self.shape))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    _run(runner, seqs, [0, 0])
    d = model.config.hidden_size
    assert not [s for s in copies if s and s[-1] == d], copies  # no latent went to the host
    for seq in seqs:
        latents = seq.latents_tensor()
        assert latents.shape == (len(seq.output_ids), d) and latents.device == runner.device
