"""A reward without an answer key: a programmatic verifier of worked arithmetic.

`verify(question, answer)` reads the equations a solution writes, checks them with exact
rational arithmetic, and returns a `Verdict` (per-equation results and the score);
`ArithmeticReward` is the same score behind the `Reward` protocol of `latent_ops/rewards.py`
(`kind = "arithmetic"`, deterministic, asks the model nothing).

What is read
  * Equations `a op b = c`, chains `a op b op c = d`, with `+ - × x * · ÷ /`, `^` or `**`
    (powers), parentheses, LaTeX's `\\times`, `\\cdot`, `\\div`, numbers with thousands commas
    (`1,200`) and decimals (`0.25`, `.25`); `$ € £` before a number are ignored. A number
    written with `%` is read as written (`20%` is 20) and, when that does not check, as a
    fraction (`20%` is 0.2); an equation holds if either reading makes it hold.
  * GSM8K's calculator annotations `<<a*b=c>>` are equations like any other (the `<`, `>`
    around them end the prose equation `a*b = <<...>>c`, so it is not read twice).
  * `x` is a multiplication only between numbers (`3 x 4`, `2x3`); `*` and `**` that are not
    between numbers are markdown emphasis and ignored, as are list bullets (`- `, `* `) at
    the start of a line. A line break, a word or any other character ends an equation.
  * A run `E0 = E1 = ... = En` is n equations (E0 = E1, E1 = E2, ...); a pair where both
    sides are plain numbers (`5 = 5`) is not an equation. `≈` reads as `=`.
  * The final answer is `extract_answer` of `latent_ops.rewards` (boxed, `####`, "answer
    is", else the last number).

What is checked
  * Correct: the left side's exact value equals the right side, or equals it after rounding
    to the right side's decimal places (|left - right| <= half a unit of the right side's
    last digit: `10/3 = 3.33` holds, `10/3 = 3.34` does not; a half-way value may round
    either way, so `7/2 = 3` and `7/2 = 4` both hold). A running total
    `12*2 = 24 + 6 = 30` is read as `12*2 = 24` and `24 + 6 = 30` when the right side starts
    with the left side's value. A division by zero or an evaluation refused for size (below)
    makes the equation wrong.
  * Grounded: every number an equation uses (not the results it claims) appears in the
    question, or is a result or intermediate value of an earlier equation (or an earlier
    part of the same run), or is one of `CONSTANTS`: 0, 1, 2, 3, 4, 7, 10, 12, 24, 30, 52, 60,
    100, 365, 1000 (halves and doubles, thirds and quarters, days a week, months and hours,
    days a month, weeks a year, minutes, percent, days a year, thousands) and their
    reciprocals (0.5, 0.25, 0.1, 0.01, ...). Question numbers are read the same way, plus
    number words (`three`, `twenty-five`, `half`, `twice`, `a third`, `dozen`, `hundred`)
    and `N%` / `N percent` / `N cents` also as N/100. A number written with decimals is also
    grounded by a known value that rounds to it, up to 4 decimals (`0.33` by 1/3).
  * Final: the final answer equals the result of some equation (its written right side, or
    its value when the right side is an expression), equal after rounding the result to
    the final answer's decimal places. `Verdict.final_from` is the latest such equation.

Reward, in [-1, 0]
    R = -(W_WRONG * wrong / equations
          + W_UNGROUNDED * ungrounded / operands
          + W_FINAL * [final answer is not the result of an equation])
  with W_WRONG = 0.5 (a wrong calculation is the most direct evidence of a wrong answer),
  W_FINAL = 0.3 (correct work whose result is not what the solution answers), W_UNGROUNDED =
  0.2 (the weakest signal: grounding is a heuristic that misses some unit conversions and
  worded numbers). The weights sum to 1: a fully consistent solution scores 0 and one that
  fails everything -1. R is exactly -1 when nothing can be checked: no equation, no final
  answer, or a final answer that is not a number.

Bounds (hostile text cannot make it slow or crash)
  Only the last `MAX_TEXT` characters of the answer and `MAX_QUESTION` of the question (its
  start and end) are read; at most `MAX_EQUATIONS` equations, the last ones; an expression
  has at most `MAX_EXPR_TOKENS` tokens and `MAX_DEPTH` nested parentheses (a side beyond
  either is not read); a number of more than `MAX_DIGITS` digits is refused; a value whose
  numerator or denominator exceeds `MAX_MAGNITUDE` is refused, and so is a power whose
  exponent is not an integer of at most `MAX_EXPONENT` or whose result would be too large
  (checked before computing it). The tokenizer is a single hand-written pass (no regular
  expressions); parsing is recursive descent within those caps; nothing is `eval`ed.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from latent_ops.arithmetic_ground import (  # noqa: F401 - the limits are documented here
    CONSTANTS,
    MAX_QUESTION,
    Known,
    question_values,
)
from latent_ops.arithmetic_parse import (  # noqa: F401 - the limits are documented here
    _DIGITS,
    MAX_DEPTH,
    MAX_DIGITS,
    MAX_EXPONENT,
    MAX_EXPR_TOKENS,
    MAX_MAGNITUDE,
    _close,
    _evaluate,
    _leaves,
    _Parser,
    _Refused,
    _single,
    _Tok,
    _tokenize,
)
from latent_ops.rewards import extract_answer, immediate

MAX_TEXT = 8_000  # characters of the answer read (its end)
MAX_EQUATIONS = 64

W_WRONG = 0.5
W_FINAL = 0.3
W_UNGROUNDED = 0.2


# ---- the verdict ----------------------------------------------------------------------
@dataclass(frozen=True)
class EquationCheck:
    text: str  # as written (at most 200 characters)
    value: str | None  # the left side's exact value ("7/3"), None when refused
    claimed: str | None  # the right side's value
    correct: bool
    operands: tuple[str, ...]  # numbers this equation uses (first counted here)
    ungrounded: tuple[str, ...]  # those neither in the question nor derived earlier
    note: str = ""  # why it is wrong, or how it was read ("percent as /100", "running total")


@dataclass(frozen=True)
class Verdict:
    equations: tuple[EquationCheck, ...]
    final_answer: str | None
    final_from: int | None  # index in `equations` of the latest one that produced it
    wrong: int
    operands: int
    ungrounded: int
    reward: float
    note: str = ""  # why nothing could be checked, when reward is -1 for that


def _number_text(v: Fraction | None) -> str | None:
    return None if v is None else str(v)


def _parse_final(text: str | None) -> tuple[Fraction, int] | None:
    """A final answer as (value, decimals), or None when it is not a plain number."""
    if text is None:
        return None
    s = text.strip().replace(",", "").rstrip(".")
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("-")
    whole, _, frac = s.partition(".")
    if not s or not all(c in _DIGITS for c in whole + frac) or not (whole or frac):
        return None
    if len(whole) + len(frac) > MAX_DIGITS:
        return None
    return sign * Fraction(int(whole + frac or "0"), 10 ** len(frac)), len(frac)


def _lhs_start(toks: list[_Tok], eq: int) -> int:
    """Where the expression ending just before toks[eq] starts: walk back while the tokens
    can be adjacent in an expression and parentheses stay balanced."""
    i, depth, lo = eq, 0, max(0, eq - MAX_EXPR_TOKENS)
    while i > lo:
        tok, after = toks[i - 1], (toks[i] if i < eq else None)
        if tok.kind in ("n", "!"):
            ok = after is None or after.kind in ("o", ")")
        elif tok.kind == "o":
            ok = after is not None and after.kind in ("n", "!", "(", "o")
        elif tok.kind == ")":
            ok = after is None or after.kind in ("o", ")")
            depth += 1
        elif tok.kind == "(":
            ok = depth > 0 and after is not None and after.kind in ("n", "!", "(", "o")
            depth -= 1
        else:
            ok = False
        if not ok:
            break
        i -= 1
    while i < eq and toks[i].kind == "o" and toks[i].op in "*/^":  # a dangling operator
        i += 1
    return i


def _parse_chain(toks: list[_Tok], eq: int):
    """[(node, start, end), ...] for E0 = E1 = ... starting at the "=" toks[eq]; the index of
    the last "=" used. None when E0 or E1 cannot be read."""
    start = _lhs_start(toks, eq)
    if start >= eq or (start > 0 and toks[start].kind == "o" and toks[start - 1].kind == "w"):
        return None  # nothing, or algebra: "S + 143 = ..." is not "+143 = ..."
    left = _Parser(toks, eq).expr(start, 0)
    if left is None or left[1] != eq:
        return None
    parts = [(left[0], start, eq)]
    last_eq = eq
    while True:
        end = min(len(toks), last_eq + 1 + MAX_EXPR_TOKENS)
        right = _Parser(toks, end).expr(last_eq + 1, 0)
        if right is None:
            break
        parts.append((right[0], last_eq + 1, right[1]))
        if right[1] < len(toks) and toks[right[1]].kind == "=":
            last_eq = right[1]
        else:
            break
    return (parts, last_eq) if len(parts) > 1 else None


def _check_pair(left, right, toks) -> tuple[bool, str, Fraction | None, Fraction | None]:
    """(correct, note, left value, right value) for one equation of a chain."""
    lnode, rnode = left[0], right[0]
    readings = (
        (False, True) if any(t.pct for t in _leaves(lnode, []) + _leaves(rnode, [])) else (False,)
    )
    note, lv, rv = "", None, None
    for pct in readings:
        try:
            lv = _evaluate(lnode, pct, [])
            rv = _evaluate(rnode, pct, [])
        except _Refused as exc:
            note = f"refused: {exc}"
            continue
        rs, ls = _single(rnode), _single(lnode)
        reading = " (percent as /100)" if pct else ""
        if rs is not None:
            ok = _close(lv, rv, rs[0].decimals)
        elif ls is not None:
            ok = _close(rv, lv, ls[0].decimals)
        else:
            ok = lv == rv
            if not ok:
                first = toks[right[1]]
                lead = rnode
                while lead[0] not in ("n", "u"):
                    lead = lead[1]
                if first.kind == "n" and lead[0] == "n" and lead[1] is first:
                    lead_value = first.value / 100 if pct and first.pct else first.value
                    if _close(lv, lead_value, first.decimals):
                        return True, "running total" + reading, lv, rv
        if ok:
            return True, reading.strip(" ()"), lv, rv
        note = "wrong"
    return False, note, lv, rv


def verify(question: str, answer: str) -> Verdict:
    """Check the worked arithmetic of `answer` (a solution to `question`): see the module
    docstring for what is read, what is checked and how it is scored."""
    question = question if isinstance(question, str) else ""
    answer = answer if isinstance(answer, str) else ""
    text = answer[-MAX_TEXT:]
    known = Known()
    question_values(question, known)
    toks = _tokenize(text)
    eqs = [k for k, t in enumerate(toks) if t.kind == "="][-MAX_EQUATIONS:]

    checks: list[EquationCheck] = []
    results: list[tuple[int, Fraction]] = []  # (equation index, a result it claims)
    used_eq = -1
    for eq in eqs:
        if eq <= used_eq or len(checks) >= MAX_EQUATIONS:
            continue
        chain = _parse_chain(toks, eq)
        if chain is None:
            continue
        parts, used_eq = chain
        singles = [_single(node) for node, _, _ in parts]
        for k in range(len(parts) - 1):
            if len(checks) >= MAX_EQUATIONS:
                break
            if singles[k] is not None and singles[k + 1] is not None:
                continue  # "5 = 5" is not a calculation
            operands, ungrounded = [], []
            for j in (k, k + 1):
                counted = (j == 0 and k == 0) or (j == k + 1 and singles[j] is None)
                if not counted:
                    continue
                for leaf in _leaves(parts[j][0], []):
                    operands.append(text[leaf.start : leaf.end])
                    if not known.has(leaf):
                        ungrounded.append(text[leaf.start : leaf.end])
                inter: list[Fraction] = []
                for pct in (
                    (False, True) if any(t.pct for t in _leaves(parts[j][0], [])) else (False,)
                ):
                    try:
                        known.add(_evaluate(parts[j][0], pct, inter))
                    except _Refused:
                        pass
                for v in inter:
                    known.add(v)
            correct, note, lv, rv = _check_pair(parts[k], parts[k + 1], toks)
            claimed = None
            if singles[k + 1] is not None:
                tok, sign = singles[k + 1]
                claimed = sign * tok.value
                known.add(claimed)
                if tok.pct:
                    known.add(claimed / 100)
            elif rv is not None:
                claimed = rv
            if singles[k + 1] is None and singles[k] is not None and lv is not None:
                known.add(lv)
            if claimed is not None:
                results.append((len(checks), claimed))
                if singles[k + 1] is not None and singles[k + 1][0].pct:
                    results.append((len(checks), claimed / 100))
            src = text[toks[parts[k][1]].start : toks[parts[k + 1][2] - 1].end]
            checks.append(
                EquationCheck(
                    text=" ".join(src.split())[:200],
                    value=_number_text(lv),
                    claimed=_number_text(claimed),
                    correct=correct,
                    operands=tuple(operands),
                    ungrounded=tuple(ungrounded),
                    note=note,
                )
            )

    final_text = extract_answer(text)
    final = _parse_final(final_text)
    final_from = None
    if final is not None:
        for index, value in reversed(results):
            if _close(value, final[0], final[1]):
                final_from = index
                break
    wrong = sum(1 for c in checks if not c.correct)
    n_operands = sum(len(c.operands) for c in checks)
    n_ungrounded = sum(len(c.ungrounded) for c in checks)
    if not checks:
        reward, note = -1.0, "no equation"
    elif final is None:
        reward = -1.0
        note = "no final answer" if final_text is None else "the final answer is not a number"
    else:
        penalty = (
            W_WRONG * wrong / len(checks)
            + W_UNGROUNDED * (n_ungrounded / n_operands if n_operands else 1.0)
            + W_FINAL * (final_from is None)
        )
        reward, note = max(-1.0, 0.0 - penalty), ""
    return Verdict(
        equations=tuple(checks),
        final_answer=final_text,
        final_from=final_from,
        wrong=wrong,
        operands=n_operands,
        ungrounded=n_ungrounded,
        reward=reward,
        note=note,
    )


class ArithmeticReward:
    """`verify(prompt, answer).reward`: 0 for worked arithmetic that is correct, uses the
    question's numbers and ends in its own result; down to -1 (module docstring)."""

    kind = "arithmetic"
    deterministic = True
    values = None  # a continuum of scores in [-1, 0]
    tokens = 0  # asks the model nothing

    def score(self, prompt: str, answer: str):
        return (yield from immediate(verify(prompt, answer).reward))
