"""Reading worked arithmetic: the tokenizer, the bounded recursive-descent parser and
exact evaluation behind `latent_ops/arithmetic.py` (the verifier and its reward).

Text in, tokens and parse trees out, evaluated with `fractions.Fraction` (never `eval`).
Every limit below bounds the work hostile text can cause. No scoring here.
"""

from __future__ import annotations

from fractions import Fraction

MAX_EXPR_TOKENS = 48  # tokens in one side of an equation
MAX_DEPTH = 16  # nested parentheses
MAX_DIGITS = 30
MAX_MAGNITUDE = 10**60  # of a numerator or denominator
MAX_EXPONENT = 64

_DIGITS = "0123456789"
_SPACE = " \t\r\u00a0\u2009\u202f"
_TRANSPARENT = _SPACE + "$€£"
_MUL = "×·⋅∙✕"
_DIV = "÷∕"
_MINUS = "-−–"
_OPERAND_START = set(_DIGITS + "(.$€£-−")
_LATEX_OPS = {"times": "*", "cdot": "*", "div": "/"}
_LATEX_SPACES = set(",;:! $")


# ---- tokens ---------------------------------------------------------------------------
class _Tok:
    """kind: "n" number, "!" a number too long to read, "o" operator (op: + - * / ^),
    "(" ")", "=" and "w" (a word, value the lowercased word) or "|" (anything else): both
    end an equation."""

    __slots__ = ("kind", "op", "value", "decimals", "pct", "start", "end")

    def __init__(self, kind, start, end, op="", value=None, decimals=0, pct=False):
        self.kind, self.op, self.value = kind, op, value
        self.decimals, self.pct, self.start, self.end = decimals, pct, start, end


def _next_char(text: str, j: int) -> str:
    while j < len(text) and text[j] in _SPACE:
        j += 1
    return text[j] if j < len(text) else ""


def _read_number(text: str, i: int) -> _Tok:
    n, j = len(text), i
    while j < n and text[j] in _DIGITS:
        j += 1
    whole = [text[i:j]]
    # thousands groups: a comma followed by exactly three digits, then no fourth
    while (
        j > i
        and text[j : j + 1] == ","
        and len(group := text[j + 1 : j + 4]) == 3
        and all(c in _DIGITS for c in group)
        and (j + 4 >= n or text[j + 4] not in _DIGITS)
    ):
        whole.append(group)
        j += 4
    frac = ""
    if j + 1 < n and text[j] == "." and text[j + 1] in _DIGITS:
        k = j + 1
        while k < n and text[k] in _DIGITS:
            k += 1
        frac, j = text[j + 1 : k], k
    pct = j < n and text[j] == "%"
    end = j + 1 if pct else j
    digits = "".join(whole) + frac
    if len(digits) > MAX_DIGITS:
        return _Tok("!", i, end)
    value = Fraction(int(digits or "0"), 10 ** len(frac))
    return _Tok("n", i, end, value=value, decimals=len(frac), pct=pct)


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    n, i, line_start = len(text), 0, True

    def prev_kind() -> str:
        return toks[-1].kind if toks else "|"

    def add(kind, start, end, op="", value=None):
        if kind == "|" and toks and toks[-1].kind == "|":
            toks[-1].end = end
        else:
            toks.append(_Tok(kind, start, end, op=op, value=value))

    def between_numbers(j: int) -> bool:
        return prev_kind() in ("n", "!", ")") and _next_char(text, j) in _OPERAND_START

    while i < n:
        c = text[i]
        if c in _DIGITS or (c == "." and i + 1 < n and text[i + 1] in _DIGITS):
            tok = _read_number(text, i)
            toks.append(tok)
            i, line_start = tok.end, False
            continue
        if c == "\n":
            add("|", i, i + 1)
            i, line_start = i + 1, True
            continue
        if c in _TRANSPARENT:
            i += 1
            continue
        if line_start and c in "-*+•" and i + 1 < n and text[i + 1] == " ":  # list bullet
            i, line_start = i + 1, False
            continue
        line_start = False
        if c.isalpha():
            j = i
            while j < n and text[j].isalpha():
                j += 1
            word = text[i:j]
            if word in ("x", "X") and between_numbers(j):
                add("o", i, j, op="*")
            else:
                add("w", i, j, value=word.lower())
            i = j
        elif c == "\\":
            j = i + 1
            while j < n and text[j].isascii() and text[j].isalpha():
                j += 1
            name = text[i + 1 : j]
            if name in _LATEX_OPS:
                add("o", i, j, op=_LATEX_OPS[name])
            elif name:
                add("|", i, j)
            elif j < n and text[j] in _LATEX_SPACES:  # \, \; \! \$: spacing, escaped $
                j += 1
            else:
                j = min(j + 1, n)
                add("|", i, j)
            i = j
        elif c == "*":
            j = i + 2 if text[i + 1 : i + 2] == "*" else i + 1
            if between_numbers(j):
                add("o", i, j, op="^" if j == i + 2 else "*")
            i = j  # otherwise markdown emphasis: ignored
        else:
            if c == "+":
                add("o", i, i + 1, op="+")
            elif c in _MINUS:
                add("o", i, i + 1, op="-")
            elif c in _MUL:
                add("o", i, i + 1, op="*")
            elif c == "/" or c in _DIV:
                add("o", i, i + 1, op="/")
            elif c == "^":
                add("o", i, i + 1, op="^")
            elif c == "(":
                add("(", i, i + 1)
            elif c == ")":
                add(")", i, i + 1)
            elif c in "=≈":
                if toks and toks[-1].kind == "=":  # "==": one sign
                    toks[-1].end = i + 1
                else:
                    add("=", i, i + 1)
            else:
                add("|", i, i + 1)
            i += 1
    return toks


# ---- parsing: recursive descent over a bounded token range ----------------------------
# nodes: ("n", tok) | ("u", node) (negation) | (op, left, right)
class _Parser:
    def __init__(self, toks: list[_Tok], end: int):
        self.toks, self.end = toks, end

    def _op(self, i: int, ops: str) -> bool:
        return i < self.end and self.toks[i].kind == "o" and self.toks[i].op in ops

    def expr(self, i: int, depth: int):
        first = self.term(i, depth)
        if first is None:
            return None
        node, i = first
        while self._op(i, "+-"):
            right = self.term(i + 1, depth)
            if right is None:
                break  # "5 +" then prose: the expression is "5"
            node, i = (self.toks[i].op, node, right[0]), right[1]
        return node, i

    def term(self, i: int, depth: int):
        first = self.unary(i, depth)
        if first is None:
            return None
        node, i = first
        while self._op(i, "*/"):
            right = self.unary(i + 1, depth)
            if right is None:
                break
            node, i = (self.toks[i].op, node, right[0]), right[1]
        return node, i

    def unary(self, i: int, depth: int):
        if self._op(i, "+-"):
            inner = self.unary(i + 1, depth)  # at most MAX_EXPR_TOKENS deep
            if inner is None:
                return None
            return (("u", inner[0]) if self.toks[i].op == "-" else inner[0]), inner[1]
        return self.power(i, depth)

    def power(self, i: int, depth: int):
        base = self.primary(i, depth)
        if base is None:
            return None
        node, i = base
        if self._op(i, "^"):
            exponent = self.unary(i + 1, depth)
            if exponent is not None:
                node, i = ("^", node, exponent[0]), exponent[1]
        return node, i

    def primary(self, i: int, depth: int):
        if i >= self.end:
            return None
        tok = self.toks[i]
        if tok.kind in ("n", "!"):
            return ("n", tok), i + 1
        if tok.kind == "(" and depth < MAX_DEPTH:
            inner = self.expr(i + 1, depth + 1)
            if inner is None or inner[1] >= self.end or self.toks[inner[1]].kind != ")":
                return None
            return inner[0], inner[1] + 1
        return None


class _Refused(Exception):
    pass


def _bounded(v: Fraction) -> Fraction:
    if abs(v.numerator) > MAX_MAGNITUDE or v.denominator > MAX_MAGNITUDE:
        raise _Refused("a value is too large")
    return v


def _evaluate(node, pct: bool, inter: list[Fraction]) -> Fraction:
    """Exact value; intermediate results go to `inter`. `pct`: read N% as N/100."""
    kind = node[0]
    if kind == "n":
        tok = node[1]
        if tok.kind == "!":
            raise _Refused(f"a number has more than {MAX_DIGITS} digits")
        return tok.value / 100 if pct and tok.pct else tok.value
    if kind == "u":
        return -_evaluate(node[1], pct, inter)
    a = _evaluate(node[1], pct, inter)
    b = _evaluate(node[2], pct, inter)
    if kind == "+":
        v = a + b
    elif kind == "-":
        v = a - b
    elif kind == "*":
        v = a * b
    elif kind == "/":
        if b == 0:
            raise _Refused("division by zero")
        v = a / b
    else:  # "^"
        if b.denominator != 1 or abs(b) > MAX_EXPONENT:
            raise _Refused("an exponent is not a small integer")
        e = int(b)
        if a == 0 and e < 0:
            raise _Refused("division by zero")
        bits = max(abs(a.numerator).bit_length(), a.denominator.bit_length())
        if (bits - 1) * abs(e) > 200:  # the result would pass MAX_MAGNITUDE (~2**199)
            raise _Refused("a power is too large")
        v = a**e
    v = _bounded(v)
    inter.append(v)
    return v


def _leaves(node, out: list[_Tok]) -> list[_Tok]:
    if node[0] == "n":
        out.append(node[1])
    else:
        for child in node[1:]:
            _leaves(child, out)
    return out


def _single(node) -> tuple[_Tok, int] | None:
    """(number, sign) when the node is a plain number, optionally negated."""
    if node[0] == "n" and node[1].kind == "n":
        return node[1], 1
    if node[0] == "u" and node[1][0] == "n" and node[1][1].kind == "n":
        return node[1][1], -1
    return None


def _close(value: Fraction, written: Fraction, decimals: int) -> bool:
    """Equal, or equal after rounding `value` to `decimals` places."""
    return value == written or 2 * abs(value - written) * 10**decimals <= 1
