"""`calculate_output` of a multi grader: a small arithmetic language, parsed by hand, never `eval`.

Grammar (lowest to highest precedence)::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('-' | '+') unary | power
    power  := atom ('^' unary)?            # right associative: 2^3^2 = 2^9
    atom   := NUMBER | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'

Functions: min max (1+ args), abs floor ceil exp sqrt log (1 arg). `**` is accepted for `^`.
"""

from __future__ import annotations

import functools
import math
import re

_TOKEN = re.compile(
    r"\s*(?:(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(\*\*|[-+*/^(),]))")

FUNCTIONS = {
    "min": (lambda *a: min(a), 1, None),
    "max": (lambda *a: max(a), 1, None),
    "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 1),
}
MAX_LENGTH = 4096


class FormulaError(ValueError):
    """The formula does not parse, or names an unknown function."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FormulaError(f"unexpected character {text[pos:].lstrip()[:1]!r} at position {pos}")
        num, name, op = m.groups()
        out.append(("num", num) if num else ("name", name) if name else ("op", "^" if op == "**" else op))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens):
        self.t, self.i = tokens, 0

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else ("end", "")

    def take(self, kind=None, value=None):
        tok = self.peek()
        if (kind and tok[0] != kind) or (value and tok[1] != value):
            want = value or kind
            got = tok[1] or "end of formula"
            raise FormulaError(f"expected {want!r}, got {got!r}")
        self.i += 1
        return tok

    def expr(self):
        return self.chain("+-", self.term)

    def term(self):
        return self.chain("*/", self.unary)

    def chain(self, ops: str, operand):
        """Left-associative `operand (op operand)*` for the operators in `ops`."""
        node = operand()
        while self.peek() in [("op", op) for op in ops]:
            node = (self.take()[1], node, operand())
        return node

    def unary(self):
        if self.peek() in (("op", "-"), ("op", "+")):
            op = self.take()[1]
            operand = self.unary()
            return ("neg", operand) if op == "-" else operand
        return self.power()

    def power(self):
        node = self.atom()
        if self.peek() == ("op", "^"):
            self.take()
            node = ("^", node, self.unary())
        return node

    def atom(self):
        kind, value = self.peek()
        if kind == "num":
            self.take()
            return ("num", float(value))
        if kind == "name":
            self.take()
            if self.peek() == ("op", "("):
                if value not in FUNCTIONS:
                    raise FormulaError(f"unknown function {value!r}; allowed: {', '.join(FUNCTIONS)}")
                self.take()
                args = [self.expr()]
                while self.peek() == ("op", ","):
                    self.take()
                    args.append(self.expr())
                self.take("op", ")")
                _, lo, hi = FUNCTIONS[value]
                if len(args) < lo or (hi is not None and len(args) > hi):
                    raise FormulaError(f"{value}() takes {'1 argument' if hi == 1 else 'at least 1 argument'}")
                return ("call", value, args)
            return ("var", value)
        if (kind, value) == ("op", "("):
            self.take()
            node = self.expr()
            self.take("op", ")")
            return node
        raise FormulaError(f"unexpected {value or 'end of formula'!r}")


def _names(node, out: set) -> set:
    tag = node[0]
    if tag == "var":
        out.add(node[1])
    elif tag == "call":
        for a in node[2]:
            _names(a, out)
    elif tag == "neg":
        _names(node[1], out)
    elif tag != "num":
        _names(node[1], out)
        _names(node[2], out)
    return out


def _eval(node, env):
    tag = node[0]
    if tag == "num":
        return node[1]
    if tag == "var":
        return float(env[node[1]])
    if tag == "neg":
        return -_eval(node[1], env)
    if tag == "call":
        fn = FUNCTIONS[node[1]][0]
        return float(fn(*[_eval(a, env) for a in node[2]]))
    a, b = _eval(node[1], env), _eval(node[2], env)
    if tag == "+":
        return a + b
    if tag == "-":
        return a - b
    if tag == "*":
        return a * b
    if tag == "/":
        return a / b
    value = a**b
    if isinstance(value, complex):
        raise ValueError("complex result")
    return float(value)


_NP_FUNCTIONS = {
    "min": lambda np, *a: functools.reduce(np.minimum, a),
    "max": lambda np, *a: functools.reduce(np.maximum, a),
    "abs": lambda np, a: np.abs(a),
    "floor": lambda np, a: np.floor(a),
    "ceil": lambda np, a: np.ceil(a),
    "exp": lambda np, a: np.exp(a),
    "sqrt": lambda np, a: np.sqrt(a),
    "log": lambda np, a: np.log(a),
}


def _eval_np(node, env, np):
    tag = node[0]
    if tag == "num":
        return node[1]
    if tag == "var":
        return env[node[1]]
    if tag == "neg":
        return -_eval_np(node[1], env, np)
    if tag == "call":
        return _NP_FUNCTIONS[node[1]](np, *[_eval_np(a, env, np) for a in node[2]])
    a, b = _eval_np(node[1], env, np), _eval_np(node[2], env, np)
    if tag == "+":
        return a + b
    if tag == "-":
        return a - b
    if tag == "*":
        return a * b
    if tag == "/":
        return np.true_divide(a, b)
    return np.power(np.asarray(a, dtype=np.float64), b)


class Formula:
    """A parsed formula: `names` are its variables, `evaluate(env)` computes it (raises on math errors)."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text.strip():
            raise FormulaError("formula is empty")
        if len(text) > MAX_LENGTH:
            raise FormulaError(f"formula is longer than {MAX_LENGTH} characters")
        p = _Parser(_tokenize(text))
        try:
            self.tree = p.expr()
        except RecursionError:
            raise FormulaError("formula is nested too deeply") from None
        if p.peek()[0] != "end":
            raise FormulaError(f"unexpected {p.peek()[1]!r}")
        self.text = text
        self.names = frozenset(_names(self.tree, set()))

    def evaluate(self, env: dict[str, float]) -> float:
        return float(_eval(self.tree, env))

    def evaluate_batch(self, env: dict):
        """The formula over numpy arrays (one value per sample); math errors give inf or nan, not exceptions."""
        import numpy as np

        with np.errstate(all="ignore"):
            return _eval_np(self.tree, env, np)
