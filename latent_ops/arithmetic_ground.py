"""Grounding for the arithmetic verifier: which numbers a solution may use.

`Known` holds the values a number in a solution is allowed to come from (the
`CONSTANTS`, the question's numbers, results derived earlier), exactly and rounded to up to
4 decimals; `question_values` reads a question's numbers into it: digits, number words
(`three`, `twenty-five`, `three hundred`), multiplicative words (`half`, `twice`, `dozen`),
`N%` / `N percent` / `N cents` also as N/100, and `a/b` fractions. The rules and why
are in `latent_ops/arithmetic.py`'s docstring; this module does not check equations.
"""

from __future__ import annotations

from fractions import Fraction

from latent_ops.arithmetic_parse import _Tok, _tokenize

MAX_QUESTION = 16_000  # characters of the question read (its first and last halves)

_CONSTANT_INTS = (1, 2, 3, 4, 7, 10, 12, 24, 30, 52, 60, 100, 365, 1000)
CONSTANTS = frozenset(
    [Fraction(0)] + [Fraction(c) for c in _CONSTANT_INTS] + [Fraction(1, c) for c in _CONSTANT_INTS]
)
_ROUNDED_PLACES = (1, 2, 3, 4)  # decimals up to which a rounded number can be grounded


_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6}
_WORD_VALUES = {
    "half": (2, Fraction(1, 2)), "halves": (2, Fraction(1, 2)), "twice": (2,),
    "double": (2,), "doubles": (2,), "triple": (3,), "triples": (3,), "thrice": (3,),
    "quadruple": (4,), "third": (3, Fraction(1, 3)), "thirds": (3, Fraction(1, 3)),
    "quarter": (4, Fraction(1, 4)), "quarters": (4, Fraction(1, 4)),
    "fourth": (4, Fraction(1, 4)), "fifth": (5, Fraction(1, 5)), "sixth": (6,),
    "seventh": (7,), "eighth": (8,), "ninth": (9,), "tenth": (10, Fraction(1, 10)),
    "dozen": (12,), "dozens": (12,), "pair": (2,), "pairs": (2,), "score": (20,),
}  # fmt: skip


class Known:
    """Values a number in a solution may come from: CONSTANTS, the question's numbers and
    results derived so far; exact, and rounded to 1-4 decimals."""

    def __init__(self):
        self.exact: set[Fraction] = set(CONSTANTS)
        self.rounded = {d: set() for d in _ROUNDED_PLACES}
        for c in CONSTANTS:
            self._round(c)

    def _round(self, v: Fraction) -> None:
        for d in _ROUNDED_PLACES:
            scaled = v * 10**d
            self.rounded[d].add(
                (scaled.numerator * 2 + scaled.denominator) // (2 * scaled.denominator)
            )

    def add(self, v: Fraction) -> None:
        v = abs(v)
        if v not in self.exact:
            self.exact.add(v)
            self._round(v)

    def has(self, tok: _Tok) -> bool:
        if tok.kind != "n":
            return False
        values = (tok.value, tok.value / 100) if tok.pct else (tok.value,)
        for v in values:
            if v in self.exact:
                return True
        d = tok.decimals
        return d in self.rounded and int(tok.value * 10**d) in self.rounded[d]


def question_values(question: str, known: Known) -> None:
    """Add the numbers `question` states (digits, number words, percents, fractions)."""
    if len(question) > MAX_QUESTION:
        question = question[: MAX_QUESTION // 2] + "\n" + question[-MAX_QUESTION // 2 :]
    toks = _tokenize(question)
    last_word_value = None
    for k, tok in enumerate(toks):
        if tok.kind == "n":
            known.add(tok.value)
            nxt = toks[k + 1] if k + 1 < len(toks) else None
            if tok.pct or (
                nxt is not None and nxt.kind == "w" and nxt.value in ("percent", "cents", "cent")
            ):
                known.add(tok.value / 100)
            if (
                k + 2 < len(toks)
                and toks[k + 1].kind == "o"
                and toks[k + 1].op == "/"
                and toks[k + 2].kind == "n"
                and toks[k + 2].value
            ):
                known.add(tok.value / toks[k + 2].value)  # "1/2"
            last_word_value = tok.value if tok.value < 1000 else None
        elif tok.kind == "w":
            w = tok.value
            value = _UNITS.get(w, _TENS.get(w))
            if w in _UNITS and last_word_value in _TENS.values() and toks[k - 1].kind in ("w", "o"):
                value = last_word_value + _UNITS[w]  # "twenty-five", "twenty five"
            elif w in _SCALES and last_word_value is not None:
                value = last_word_value * _SCALES[w]  # "three hundred"
            elif w in _SCALES:
                value = _SCALES[w]
            for v in _WORD_VALUES.get(w, ()):
                known.add(Fraction(v))
            if value is not None:
                known.add(Fraction(value))
            last_word_value = value
        elif tok.kind != "o":
            last_word_value = None
