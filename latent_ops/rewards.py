"""Rewards for refinement, and final-answer extraction.

A reward implements the `Reward` protocol: `score(prompt, answer)` is a sub-program
(generator) that may yield needs (a reward that asks the model something) and returns a
float; `deterministic` says the same text always gets the same score (so a refinement may
reuse a score instead of asking again); `values` is every score it can give, or None when
they are not few (a reward with one failing value lets LatentSeek speculate, see
`latent_ops/latentseek.py`). Use it as `r = yield from reward.score(prompt, answer)`. A
reward that cannot be computed raises `RewardError`, and so does a score that is not finite
in float32 (`checked_reward`); the refinement then stops with `stopped_reason:
"reward_error"`.

Implemented: `reference` (0 if the extracted final answer equals the reference, else -1;
the paper's perfect sparse reward), `regex` (0 when the answer matches, else -1;
compiled with RE2, which runs in linear time, so no pattern can hang the server), `self`
(the model judges its own answer with four verifier prompts) and `webhook` (POST to an
allowlisted URL, run off the engine loop as a `Call` need).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Generator
from fractions import Fraction
from typing import Protocol

from latent_ops.program import Call, Generate, SamplingParams

MAX_REGEX_LENGTH = 512


class Reward(Protocol):
    """What refinement methods ask of a reward (see the module docstring)."""

    kind: str  # RewardType: the name requests use
    deterministic: bool
    values: tuple[float, ...] | None
    tokens: int  # tokens the reward has generated so far (verifiers, samples): usage

    def score(self, prompt: str, answer: str) -> Generator[list, list, float]: ...


def immediate(value: float) -> Generator[list, list, float]:
    """The sub-program of a score that needs nothing from the model:
    `yield from immediate(x)` is x, and yields nothing."""
    return value
    yield  # unreachable: it makes this function a generator


class RewardError(RuntimeError):
    """The reward could not be computed (bad reply, timeout, ...)."""


# Rewards enter the latent update as float32 (kernels.latent_pg_step): a score must be a
# number that stays finite there. -1e300 is a finite Python float and -inf in float32.
FLOAT32_MAX = 3.4028234663852886e38


def checked_reward(value) -> float:
    """`value` as a float, or RewardError when it is not a number finite in float32."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RewardError(f"reward is not a number: {type(value).__name__}")
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise RewardError(f"reward {value!r} is not finite in float32")
    return float(value)


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    body_start = i
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[body_start : i - 1] if depth == 0 else text[body_start:]


def extract_answer(text: str) -> str | None:
    """The final answer of a solution, in ALGORITHMS.md's order.

    The number in the last `\\boxed{...}` (or its raw content if it holds no number); else
    the first number after the last `####`; else the first number after the last "answer
    is"; else the last number in the text; else None.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        found = re.findall(_NUMBER, boxed)
        return found[0] if found else boxed.strip()
    for marker in ("####", "answer is"):
        pos = text.lower().rfind(marker)
        if pos >= 0:
            found = re.findall(_NUMBER, text[pos + len(marker) :])
            if found:
                return found[0]
    found = re.findall(_NUMBER, text)
    return found[-1] if found else None


def _as_number(value: str) -> Fraction | None:
    try:
        return Fraction(value.replace(",", "").strip().rstrip("."))
    except (ValueError, ZeroDivisionError):
        return None


def answer_key(text: str) -> str | None:
    """A solution's final answer in a canonical form: equal keys exactly when
    `answers_equal` holds ("1,200" and "1200.0" both give "1200"); None without one."""
    answer = extract_answer(text)
    if answer is None:
        return None
    number = _as_number(answer)
    return str(number) if number is not None else answer.strip()


def answers_equal(a: str | None, b: str | None) -> bool:
    """Numbers compare numerically ("1,200" == "1200.0"); anything else as stripped text."""
    if a is None or b is None:
        return False
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return na == nb
    return a.strip() == b.strip()


class ReferenceReward:
    kind = "reference"
    deterministic = True  # the same text always scores the same
    values = (0.0, -1.0)  # every score it can give (lets LatentSeek speculate on failure)
    tokens = 0  # asks the model nothing

    def __init__(self, reference_answer: str):
        self.reference = extract_answer(reference_answer) or reference_answer.strip()

    def score(self, prompt: str, answer: str):
        return (
            yield from immediate(
                0.0 if answers_equal(extract_answer(answer), self.reference) else -1.0
            )
        )


class RegexReward:
    kind = "regex"
    deterministic = True
    values = (0.0, -1.0)
    tokens = 0

    def __init__(self, pattern: str):
        self.pattern = compile_regex(pattern)

    def score(self, prompt: str, answer: str):
        return (yield from immediate(0.0 if self.pattern.search(answer) else -1.0))


def compile_regex(pattern: str):
    """Compile with RE2 (linear time). Raises ValueError for an invalid or over-long one."""
    import re2

    if len(pattern) > MAX_REGEX_LENGTH:
        raise ValueError(f"pattern is longer than {MAX_REGEX_LENGTH} characters")
    options = re2.Options()
    options.max_mem = 8 << 20  # bounded automaton memory
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        raise ValueError(f"invalid pattern: {exc}") from exc


# ---- self-reward: the model judges its own answer ------------------------------------
# (weight, prompt) per verifier; our wording. Each ends with a verdict line we parse.
_VERDICT = "\n\nEnd your reply with one line: 'Verdict: True' or 'Verdict: False'."
VERIFIERS = (
    (2, "Check every calculation in this solution. Are all of them correct?"),
    (1, "Is the final answer of this solution correct for the problem?"),
    (2, "Does this solution answer everything the problem asks, to the end?"),
    (1, "Did the solution understand the problem (right quantities and goal)?"),
)
_VERDICT_WORD = re.compile(r"\b(true|false|yes|no|correct|incorrect)\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool:
    """True only when the last verdict word is affirmative; garbage is 'not approved'."""
    words = _VERDICT_WORD.findall(text)
    return bool(words) and words[-1].lower() in ("true", "yes", "correct")


class SelfReward:
    """Four verifier prompts answered by the same model, weights 2/1/2/1.

    R = -(sum of failed weights [+ 2 when `format="boxed"` and no \\boxed{}]) / 6.
    `encode_chat(messages) -> token ids` renders a chat prompt; verifiers decode greedily
    for at most `max_tokens` tokens, as one batch with everything else in flight.
    """

    kind = "self"
    deterministic = True  # greedy verifiers
    values = None  # sixths from -8/6 to 0
    tokens = 0  # the verifiers' generated tokens, summed over its scores

    def __init__(self, encode_chat, max_tokens: int = 128, format: str | None = None):
        self.encode_chat = encode_chat
        self.max_tokens = max_tokens
        self.format = format

    def score(self, prompt: str, answer: str):
        needs = [
            Generate(
                self.encode_chat(
                    [
                        {
                            "role": "user",
                            "content": (
                                f"{question}\n\nProblem:\n{prompt}\n\nSolution:\n{answer}{_VERDICT}"
                            ),
                        }
                    ]
                ),
                SamplingParams(max_tokens=self.max_tokens),
            )
            for _, question in VERIFIERS
        ]
        results = yield needs
        self.tokens += sum(len(r.token_ids) for r in results)
        failed = sum(w for (w, _), r in zip(VERIFIERS, results) if not parse_verdict(r.text))
        if self.format == "boxed" and "\\boxed{" not in answer:
            failed += 2
        return -failed / 6


# ---- webhook: an outside grader ------------------------------------------------------
MAX_WEBHOOK_REPLY_BYTES = 64 * 1024


class WebhookReward:
    """POST `{"prompt", "answer"}` as JSON to `url`; the reply must be `{"reward": x}` with
    x a number finite in float32. A refused connection, an HTTP error status, a reply over
    64 KiB, garbage, or no full reply within `timeout` seconds of starting (connect,
    headers and body together: a grader that trickles its reply a byte at a time is cut
    off there) is a RewardError. Redirects are not followed (they could leave the
    allowlist), proxies from the environment are not used. The exchange is async I/O on
    the engine's I/O loop: waiting graders hold no thread, and a request that ends
    (client gone) cancels its exchange."""

    kind = "webhook"
    deterministic = False  # an outside grader may change its mind: always asked
    values = None
    tokens = 0

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url
        self.timeout = timeout

    async def post(self, prompt: str, answer: str) -> float:
        import asyncio

        try:
            body = await asyncio.wait_for(self._exchange(prompt, answer), self.timeout)
        except asyncio.TimeoutError as exc:
            raise RewardError(f"webhook gave no full reply within {self.timeout:g} s") from exc
        try:
            value = json.loads(body)["reward"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RewardError('webhook reply is not {"reward": number}') from exc
        return checked_reward(value)

    async def _exchange(self, prompt: str, answer: str) -> bytes:
        import httpx

        body = b""
        try:
            async with httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False
            ) as client:
                payload = {"prompt": prompt, "answer": answer}
                async with client.stream("POST", self.url, json=payload) as r:
                    if r.status_code != 200:
                        raise RewardError(f"webhook answered HTTP {r.status_code}")
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_WEBHOOK_REPLY_BYTES:
                            raise RewardError("webhook reply is too large")
        except httpx.HTTPError as exc:
            raise RewardError(f"webhook unreachable: {type(exc).__name__}") from exc
        return body

    def score(self, prompt: str, answer: str):
        [outcome] = yield [Call(functools.partial(self.post, prompt, answer))]
        if isinstance(outcome, RewardError):
            raise outcome
        if isinstance(outcome, BaseException):
            raise RewardError(f"webhook failed: {type(outcome).__name__}: {outcome}")
        return outcome
