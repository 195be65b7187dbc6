"""Rewards for refinement, and final-answer extraction.

A reward is an object with `score(prompt, answer)`: a sub-program (generator) that may
yield needs (a reward that asks the model something) and returns a float; use it with
`reward = yield from r.score(prompt, answer)`. A reward that cannot be computed raises
`RewardError`; the refinement then stops with `stopped_reason: "reward_error"`.

Implemented: `reference` (0 if the extracted final answer equals the reference, else -1;
the paper's perfect sparse reward) and `regex` (0 when the answer matches, else -1;
compiled with RE2, which runs in linear time, so no pattern can hang the server).
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_REGEX_LENGTH = 512


class RewardError(RuntimeError):
    """The reward could not be computed (bad reply, timeout, ...)."""


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

    def __init__(self, reference_answer: str):
        self.reference = extract_answer(reference_answer) or reference_answer.strip()

    def score(self, prompt: str, answer: str):
        return 0.0 if answers_equal(extract_answer(answer), self.reference) else -1.0
        yield  # a generator that needs nothing from the model


class RegexReward:
    kind = "regex"

    def __init__(self, pattern: str):
        self.pattern = compile_regex(pattern)

    def score(self, prompt: str, answer: str):
        return 0.0 if self.pattern.search(answer) else -1.0
        yield


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
