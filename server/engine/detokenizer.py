"""Token ids to text for one sequence: stop strings and streaming deltas.

A `Detokenizer` follows one runner sequence as it grows. `update(seq)` turns the forced
prefix plus the sequence's output tokens into text (special tokens skipped), cuts it at
the first stop string (and marks the sequence finished with reason "stop"), and works out
how many trailing characters must be held back from a stream because they might be the
start of a stop string. `delta(seq)` then gives what a streaming client has not seen yet:
the new text (never ending in an incomplete UTF-8 character unless the sequence has
finished) and the new token ids and logprobs.

It does not decide when a sequence ends otherwise (EOS, length and deadlines are the
runner's and the engine's), does not send anything anywhere (the engine wraps a delta in
`Delta` and calls the request's sink), and knows nothing about requests or programs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine.runner import Sequence


class Detokenizer:
    """Text, stop-string matching and streaming state of one sequence."""

    def __init__(self, tokenizer, stop: list[str], prefix_ids: list[int] | None = None):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.prefix_ids = list(prefix_ids or ())  # forced tokens leading the output
        self.text = ""
        self.hold = 0  # trailing chars of `text` that may begin a stop string
        self.emitted = 0  # chars of `text` already streamed
        self.emitted_tokens = 0  # output tokens already streamed

    def update(self, seq: Sequence) -> None:
        """Bring `text` up to seq's tokens and apply stop strings (a match finishes seq)."""
        ids = self.prefix_ids + seq.output_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hold = 0
        if self.stop:
            start = max(0, self.emitted - max(len(s) for s in self.stop))
            cut = min((i for s in self.stop if (i := text.find(s, start)) >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                if seq.finish_reason in (None, "length"):
                    seq.finish_reason = "stop"  # the stop string ended it, even on the last token
            elif not seq.finished:
                hold = partial_stop_suffix(text, self.stop)
        self.text = text
        self.hold = hold

    def delta(self, seq: Sequence) -> tuple[str, list[int], list | None] | None:
        """What to stream since the last delta: (text, token ids, logprobs), or None when
        there is nothing new yet. A finished sequence always gets one last delta."""
        text = self.text
        end = len(text) - self.hold
        if not seq.finished:
            while end > self.emitted and text[end - 1] == "\ufffd":  # incomplete UTF-8
                end -= 1
        if not (end > self.emitted or seq.finished):
            return None
        tokens = seq.output_ids[self.emitted_tokens :]
        lps = seq.logprobs[self.emitted_tokens :] if seq.params.logprobs is not None else None
        self.emitted_tokens = len(seq.output_ids)
        out = text[self.emitted : end]
        self.emitted = max(end, self.emitted)
        return out, tokens, lps


def partial_stop_suffix(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
