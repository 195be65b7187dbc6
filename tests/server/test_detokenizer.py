"""Incremental detokenization gives, at every step, what a full decode gives.

Random token streams over the tiny byte-level tokenizer (one token per byte, so
multi-byte UTF-8 characters arrive a byte at a time; special tokens and stray bytes mixed
in) are fed to an incremental `Detokenizer` and to one that decodes everything every step
(the engine's old way): text, stop-string cuts, the step a stop ends the sequence, and
the streamed deltas must be the same, and the final text must be the full decode."""

from __future__ import annotations

import random

import pytest

from latent_ops.program import SamplingParams
from server.engine.detokenizer import Detokenizer
from server.engine.runner import Sequence

WORDS = ["hello", " world", " héllo", " 中文", " 🎉", "\n", " naïve", "ß", " ok.", " Ωμέγα", "€"]


def _stream(tok, rng: random.Random, n_words: int) -> list[int]:
    """Token ids of random words, with special tokens and stray bytes mixed in."""
    ids: list[int] = []
    specials = tok.all_special_ids
    for _ in range(n_words):
        ids += tok.encode(rng.choice(WORDS))
        r = rng.random()
        if r < 0.05:
            ids.append(rng.choice(specials))
        elif r < 0.1:  # a byte that may break the UTF-8 around it
            ids.append(rng.choice(tok.encode("é") + tok.encode("🎉")))
    return ids


def _run(tok, ids, stop, incremental, prefix_len=0, chunk=1, stream=True):
    """Feed ids a chunk at a time; [(text, finish_reason, delta)] per step."""
    det = Detokenizer(tok, stop, ids[:prefix_len], incremental=incremental)
    seq = Sequence(0, [1], SamplingParams(max_tokens=len(ids)))
    rest = ids[prefix_len:]
    steps = []
    i = 0
    while True:
        seq.output_ids.extend(rest[i : i + chunk])
        i += chunk
        if i >= len(rest) and seq.finish_reason is None:
            seq.finish_reason = "length"
        det.update(seq)
        delta = det.delta(seq) if stream else None
        steps.append((det.text, seq.finish_reason, delta and delta[0]))
        if seq.finished:
            return steps


@pytest.mark.parametrize("seed", range(40))
def test_incremental_equals_full_decode_at_every_step(tok, seed):
    rng = random.Random(seed)
    ids = _stream(tok, rng, rng.randint(1, 40))
    prefix_len = rng.choice([0, 0, rng.randint(0, len(ids))])
    chunk = rng.choice([1, 1, 2, 3])
    new = _run(tok, ids, [], True, prefix_len, chunk)
    old = _run(tok, ids, [], False, prefix_len, chunk)
    assert new == old
    assert new[-1][0] == tok.decode(ids, skip_special_tokens=True)
    assert "".join(d or "" for _, _, d in new) == new[-1][0]


@pytest.mark.parametrize("seed", range(60))
def test_stop_strings_cut_at_the_same_place(tok, seed):
    rng = random.Random(1000 + seed)
    ids = _stream(tok, rng, rng.randint(2, 40))
    full = tok.decode(ids, skip_special_tokens=True)
    stop = []
    for _ in range(rng.randint(1, 3)):  # pieces of the text (maybe multi-byte) or absent ones
        a = rng.randrange(len(full))
        stop.append(full[a : a + rng.randint(1, 4)] if rng.random() < 0.8 else "zzz")
    stop = [s for s in stop if s and "\ufffd" not in s] or ["zzz"]
    prefix_len = rng.choice([0, 0, rng.randint(0, len(ids))])
    chunk = rng.choice([1, 1, 2])
    for stream in (True, False):
        new = _run(tok, ids, stop, True, prefix_len, chunk, stream)
        old = _run(tok, ids, stop, False, prefix_len, chunk, stream)
        assert new == old
    cut = min((i for s in stop if (i := full.find(s)) >= 0), default=-1)
    text, reason, _ = new[-1]
    if cut >= 0:
        assert (text, reason) == (full[:cut], "stop")
    else:
        assert (text, reason) == (full, "length")


def test_a_partial_character_is_not_streamed(tok):
    ids = tok.encode("a中b")
    steps = _run(tok, ids, [], True)
    assert [d for _, _, d in steps] == ["a", None, None, "中", "b"]


def test_a_tokenizer_that_cleans_up_spaces_is_decoded_in_full(tok):
    class Cleaning:
        clean_up_tokenization_spaces = True

    assert Detokenizer(Cleaning(), []).incremental is False
    assert Detokenizer(tok, []).incremental is True
