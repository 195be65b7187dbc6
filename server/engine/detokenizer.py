"""Token ids to text for one sequence, incrementally: stop strings and streaming deltas.

A `Detokenizer` follows one runner sequence as it grows. `update(seq)` extends its text
with what the forced prefix plus the sequence's output tokens add (special tokens
skipped), cuts the text at the first stop string (and marks the sequence finished with
reason "stop"), and works out how many trailing characters must be held back from a
stream because they might be the start of a stop string. `delta(seq)` then gives what a
streaming client has not seen yet: the new text and the new token ids and logprobs.

Incremental, as vLLM and TGI do it: each step decodes only a short window of tokens
(from `prefix_offset`; the tokens before `read_offset` are context already turned into
text) and appends the difference, and only once it no longer ends in "\ufffd" (an
incomplete UTF-8 character, the rest of whose bytes are still to come). When the
sequence finishes, whatever the window holds is appended as it decodes. So the cost per
token does not grow with the output, and the final text is the full decode's
(`tokenizer.decode(ids, skip_special_tokens=True)`). A tokenizer that rewrites text
across tokens (`clean_up_tokenization_spaces`) is decoded in full every step instead.

It does not decide when a sequence ends otherwise (EOS, length and deadlines are the
runner's and the engine's), does not send anything anywhere (the engine wraps a delta in
`Delta` and calls the request's sink), and knows nothing about requests or programs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from latent_ops.program import Generation

if TYPE_CHECKING:
    from server.engine.sequence import Sequence


class Detokenizer:
    """Text, stop-string matching and streaming state of one sequence."""

    def __init__(
        self,
        tokenizer,
        stop: list[str],
        prefix_ids: list[int] | None = None,
        incremental: bool | None = None,
    ):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.prefix_ids = list(prefix_ids or ())  # forced tokens leading the output
        if incremental is None:
            incremental = not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self.incremental = incremental  # False: decode everything every step (the old way)
        self._stable = ""  # the text of ids[:read_offset]: later tokens cannot change it
        self._pending = ""  # the text of ids[read_offset:] while it ends in "\ufffd"
        self.hold = 0  # trailing chars of `text` that may begin a stop string
        self.emitted = 0  # chars of `text` already streamed
        self.emitted_tokens = 0  # output tokens already streamed
        self.prefix_offset = 0  # the decode window starts here (ids = prefix_ids + output)
        self.read_offset = 0  # ids before this are in the stable text
        self._stopped = False  # a stop string cut the text: it is final

    @property
    def text(self) -> str:
        """The text so far: what a full decode of the tokens gives (cut at a stop string)."""
        return self._stable + self._pending if self._pending else self._stable

    def update(self, seq: Sequence) -> None:
        """Bring `text` up to seq's tokens and apply stop strings (a match finishes seq)."""
        if self._stopped:
            return
        longest = max((len(s) for s in self.stop), default=0)
        if self.incremental:
            # text before the stable end is unchanged and held no match: search after it
            start = max(0, len(self._stable) - longest)
            self._extend(seq)
        else:
            ids = self.prefix_ids + seq.output_ids
            self._stable = self.tokenizer.decode(ids, skip_special_tokens=True)
            start = max(0, self.emitted - longest)
        hold = 0
        if self.stop:
            text = self.text
            cut = min((i for s in self.stop if (i := text.find(s, start)) >= 0), default=-1)
            if cut >= 0:
                self._stable, self._pending = text[:cut], ""
                self._stopped = self.incremental
                if seq.finish_reason in (None, "length"):
                    seq.finish_reason = "stop"  # the stop string ended it, even on the last token
            elif not seq.finished:
                hold = partial_stop_suffix(text, self.stop)
        self.hold = hold

    def _extend(self, seq: Sequence) -> None:
        """Decode the window from `prefix_offset`; what the tokens after `read_offset` add
        becomes stable unless it ends in an incomplete character (pending until it does
        not, or until seq has finished)."""
        total = len(self.prefix_ids) + len(seq.output_ids)
        if total == self.read_offset and not seq.finished:
            return
        p, n = self.prefix_offset, len(self.prefix_ids)
        window = (self.prefix_ids[p:] if p < n else []) + seq.output_ids[max(0, p - n) :]
        decode = self.tokenizer.decode
        seen = decode(window[: self.read_offset - p], skip_special_tokens=True)
        new = decode(window, skip_special_tokens=True)
        tail = new[len(seen) :]
        if tail and (seq.finished or not tail.endswith("\ufffd")):
            self._stable += tail
            self._pending = ""
            self.prefix_offset, self.read_offset = self.read_offset, total
        else:
            self._pending = tail

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

    def generation(self, seq: Sequence) -> Generation:
        """The `Generation` a finished sequence resolves its need with: the forced prefix
        and the output as tokens, the text, and what the runner kept (latents, logprobs,
        the SLR loops' summary)."""
        return Generation(
            token_ids=self.prefix_ids + list(seq.output_ids),
            text=self.text,
            finish_reason=seq.finish_reason or "stop",
            prompt_tokens=len(seq.prompt_ids) - len(self.prefix_ids),
            latents=seq.latents_tensor(),
            logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
            thoughts=seq.thought_state.summary() if seq.thought_state is not None else None,
        )


def partial_stop_suffix(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
