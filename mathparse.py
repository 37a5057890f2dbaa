"""mathparse.py: is one bare answer string equal to another? The answer parser and evaluator behind verify.py.

    is_equivalent(answer, gold, problem=None) -> bool
    rounding_asked(problem) -> bool               load_sympy()        sympy_importing() -> bool

How the two files fit: verify.py finds the final answer in a model's response, bounds the time a score
takes and scores batches in worker processes; this file compares two bare answers ("\\frac{1}{2}" against
"0.5") and knows nothing of responses, processes or signals. It imports nothing of the project and
verify.py imports nothing of the project but this file. A call here has no time limit of its own: sizes
are bounded before any work (MAX_* below: a longer answer, deeper nesting, or a number beyond
MAX_EXACT_BITS (towers like 2^{2^{2^{9}}}, (10^6)!) is not equal at once), and verify.score puts its
wall-clock bound around the call. sympy is imported on first need (load_sympy); sympy_importing() lets
verify's timer leave that import alone.

How a pair is decided, cheapest first (most pairs stop at step 1 or 3):
  1. both answers are normalised as strings (LaTeX spacing, \\left/\\right, \\dfrac, units, degrees,
     percent, dollars, thousands separators, Unicode x², \\varnothing, 0.\\overline{3}, "k \\ge 3" as the
     interval [3, \\infty)) and compared;
  2. both are split into structure: tuples/intervals (ordered, bracket kinds must match), sets and
     bare comma lists (unordered), unions, matrices, equations ("x = 5" and "f(x) = 2x" answer 5, 2x);
  3. each scalar is parsed by the small LaTeX parser below into a tree (never eval()) and evaluated
     by one evaluator (_evaluate) in one of three number domains. Exact rationals first: plain
     numbers, big powers, binomials and factorials (2^{2022} \\cdot 2 - 1 = 2^{2023} - 1, 170!) are
     compared exactly with fractions.Fraction, under a bound on the size of the result;
  4. otherwise both trees are evaluated in complex floating point at a few fixed points; any clear
     difference, or no finite value anywhere, is a "no" (sympy never sees most wrong answers);
  5. rational functions of the symbols, pi, e, i and square roots of rationals (6-5i, 288\\pi,
     \\sqrt{117} = 3\\sqrt{13}) are then compared exactly at three rational points (Schwartz-Zippel; no
     sympy); the rest (trig, exp, roots of symbols, floor) is confirmed by sympy (simplify, Fu's trig
     rules, equals); sympy is imported only then.

Decimal policy (is_equivalent is not symmetric: the gold is the reference):
  - a plain decimal gold is exact unless the problem asks for rounding (rounding_asked(problem):
    "nearest hundredth", "3 significant figures", "round", ...): 0.45, 0.54 and 2.46 do not answer
    0.5 or 2.5, 4.254 does not answer 4.25, \\pi does not answer 3.14; 4.250 and 17/4 answer 4.25;
  - a rounded gold (a problem that asks for rounding, or a gold in scientific notation, which states
    its significant figures) is matched by an answer that rounds to it, half away from zero, at the
    gold's last place: 0.543 answers Minerva's 0.54, 4.52e33 answers 4.5e33, 0.5 does not answer 0.54;
  - a long decimal (at least 6 significant digits) answers an exact rational gold when it agrees on
    every digit it gives, truncated or rounded at its last place: 0.333333333 and 0.333333 answer 1/3,
    0.666667 answers 2/3, 0.33333 does not; an irrational gold is never matched by a decimal (3.14159265
    is not \\pi).
  - percent: "25%" answers 25 and 0.25, but x% = x/100 only when the plain side is not an integer,
    so 5000% does not answer 50. Units: when both sides give a unit they must agree (5 km is not
    5 m; meters = m, inches = in); a unit on one side only is ignored.

Sections, in the order a pair passes through them: string normalisation; structure (tuples, sets,
equations, ...); the LaTeX parser (string -> tree); one evaluator over three number domains (exact
rationals, complex floats, sympy) with the exact identity test at rational points; scalar comparison
and the decimal policy; equations and is_equivalent, the entry point.
"""

import cmath
import dataclasses
import math
import operator
import re
from fractions import Fraction
from typing import Callable

# ---- size bounds: checked before any work, so hostile answers cost nothing -----------------------

MAX_ANSWER_CHARS = 1_000  # the longest gold in MATH/Minerva is 210 characters
MAX_DEPTH = 30  # bracket nesting inside one answer
MAX_NODES = 500  # parse-tree size
MAX_ITEMS = 64  # elements of a tuple / set / matrix
MAX_EXPONENT = 1_000  # |e| of a number written in scientific notation, 1e999
MAX_SYMPY_EXPONENT = 100  # bound on exponents before handing a tree to sympy
MAX_FACTORIAL = 500  # n! in floating point (it overflows beyond 170 anyway)
MAX_EXACT_BITS = 20_000  # size of an exact result (6,000 digits): 2^{2023}, 170!, C(2024, 2); not 2^{2^{20}}


class _Reject(Exception):
    """The answer cannot be compared (too big, malformed): the pair counts as not equal."""


# ---- string normalisation ------------------------------------------------------------------------

_UNICODE = {"−": "-", "∞": "\\infty", "π": "\\pi", "°": "^\\circ", "×": "\\times", "√": "\\sqrt",
            "·": "\\cdot", "≤": "\\le ", "≥": "\\ge ", "∪": "\\cup", "∅": "\\emptyset", "÷": "\\div"}
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_SUPERSCRIPT_RE = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺]+")
_SUBSCRIPT_RE = re.compile("[₀₁₂₃₄₅₆₇₈₉]+")
_REPLACE = [("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"),
            ("\\mbox{", "\\text{"), ("\\textbf{", "\\text{"), ("\\textrm{", "\\text{"),
            ("\\mathrm{", "\\text{"), ("\\textit{", "\\text{"), ("\\mathbf{", "\\text{"),
            ("\\displaystyle", ""), ("\\left.", ""), ("\\right.", ""), ("{,}", ","),
            ("\\$", ""), ("$", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
            ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("\\degree", ""),
            ("\\%", "%"), ("\\le ", "\\leq "), ("\\ge ", "\\geq "), ("**", "^"), ("np.", ""),
            ("~", " "), ("\\varnothing", "\\emptyset")]
_SIZING_RE = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![a-zA-Z])")
_SPACING_RE = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad(?![a-zA-Z])")
_TEXT_RE = re.compile(r"\\text\{([^{}]*)\}(?:\^\{?[23]\}?)?")
_UNIT_TEXT_RE = re.compile(r"\\text\{\s*[a-zA-Z][a-zA-Z ./]*\}(?:\^\{?[23]\}?)?")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_CHOICE_RE = re.compile(r"\(([A-E])\)|([A-E])[.)]?")
_MIXED_RE = re.compile(r"(-?)(\d+)\s*\\frac(\{\d+\}|\d)(\{\d+\}|\d)")
_UNIT_WORD_RE = re.compile(r"\s+(?:degrees?|dollars?|cents?|units?|(?:square |sq )?(?:cm|m|km|inches|feet|ft|meters))$")
_REPEATING_RE = re.compile(r"(\d*)\.(\d*)\\(?:overline|bar)\{?(\d{1,50})\}?")  # 0.1\overline{6} = 1/6
_INEQUALITY_RE = re.compile(r"<=|>=|<|>|\\(?:leqslant|geqslant|leq|geq|le|ge|lt|gt)(?![a-zA-Z])")
_UNIT_NAMES = {"meter": "m", "metre": "m", "centimeter": "cm", "millimeter": "mm", "kilometer": "km",
               "inch": "in", "foot": "ft", "feet": "ft", "yard": "yd", "mile": "mi", "second": "s", "sec": "s",
               "minute": "min", "hour": "h", "hr": "h", "degree": "deg", "dollar": "$", "cent": "cent",
               "unit": "", "gram": "g", "kilogram": "kg", "liter": "l", "litre": "l"}


def _canonical_unit(raw):
    """"\\text{ inches}^2" -> "in^2", "\\text{ km}" -> "km", "units" -> None (no unit)."""
    u = re.sub(r"\\text|[{}\s.]", "", raw).lower()
    power = ""
    m = re.search(r"\^(\d)$", u)
    if m:
        u, power = u[: m.start()], m.group(0)
    for prefix, p in (("square", "^2"), ("sq", "^2"), ("cubic", "^3")):
        if u.startswith(prefix) and len(u) > len(prefix):
            u, power = u[len(prefix):], p
    for stem in (u, u[:-1] if u.endswith("s") else None, u[:-2] if u.endswith("es") else None):
        if stem in _UNIT_NAMES:
            u = _UNIT_NAMES[stem]
            break
    return u + power if u else None


def _repeating_decimal(m):
    whole, fixed, period = m.group(1) or "0", m.group(2), m.group(3)
    value = Fraction(int(whole + fixed + period) - int(whole + fixed), 10 ** len(fixed) * (10 ** len(period) - 1))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _inequality_interval(s):
    """"x\\geq3" -> "[3,\\infty)", "2<x\\le5" -> "(2,5]": one variable bounded by constants, else s."""
    parts = _INEQUALITY_RE.split(s)
    ops = [o.lstrip("\\")[:2].replace("lt", "<").replace("gt", ">").replace("le", "<=").replace("ge", ">=")
           for o in _INEQUALITY_RE.findall(s)]
    if not ops or not all(p.strip() for p in parts):
        return s
    parts = [p.strip() for p in parts]
    if len(ops) == 1 and not _is_variable(parts[0]) and _is_variable(parts[1]):
        parts, ops = parts[::-1], [{"<": ">", ">": "<", "<=": ">=", ">=": "<="}[ops[0]]]
    if len(ops) == 1 and _is_variable(parts[0]):
        bound = parts[1]
        return {"<": f"(-\\infty,{bound})", "<=": f"(-\\infty,{bound}]",
                ">": f"({bound},\\infty)", ">=": f"[{bound},\\infty)"}[ops[0]]
    if len(ops) == 2 and _is_variable(parts[1]) and ops[0][0] == ops[1][0]:
        low, high = (parts[0], parts[2]) if ops[0][0] == "<" else (parts[2], parts[0])
        low_op, high_op = (ops[0], ops[1]) if ops[0][0] == "<" else (ops[1], ops[0])
        return ("[" if low_op.endswith("=") else "(") + f"{low},{high}" + ("]" if high_op.endswith("=") else ")")
    return s


def _normalize(s):
    """(canonical string form, canonical unit or None) of one answer: string rewrites only."""
    s = s.strip()
    s = _SUPERSCRIPT_RE.sub(lambda m: "^{" + m.group(0).translate(_SUPERSCRIPTS) + "}", s)  # x² = x^{2}
    s = _SUBSCRIPT_RE.sub(lambda m: "_{" + "".join(str(ord(c) - 0x2080) for c in m.group(0)) + "}", s)
    for old, new in _UNICODE.items():
        s = s.replace(old, new)
    s = _SIZING_RE.sub("", s)
    for old, new in _REPLACE:
        s = s.replace(old, new)
    s = _SPACING_RE.sub("", s)
    s = s.strip().rstrip(".,").strip()
    s = re.sub(r"\\text\{\s*(?:and|or)\s*\}", ",", s)
    s = re.sub(r"_\{(\w)\}", r"_\1", s)  # 4210_{5} = 4210_5, x_{0} = x_0
    unit = None
    text_free = _UNIT_TEXT_RE.sub("", s).strip()
    if text_free != s and re.match(r"[-+.\d\\(]", text_free) and re.search(r"[\d}]", text_free):
        unit = _canonical_unit("".join(_UNIT_TEXT_RE.findall(s)))
        s = text_free  # "5.4 \text{ cents}", "864 \mbox{ inches}^2": the unit is compared apart
    else:
        s = _TEXT_RE.sub(lambda m: m.group(1), s).strip()  # "\text{east}", "\text{(C)}"
    m = _UNIT_WORD_RE.search(s)
    if m:
        unit, s = unit or _canonical_unit(m.group(0)), s[: m.start()]
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)  # "x \in [-2,7]"
    m = _CHOICE_RE.fullmatch(s)
    if m:
        s = m.group(1) or m.group(2)  # multiple choice: "(C)", "C." -> "C"
    m = _MIXED_RE.fullmatch(s)
    if m:
        s = f"{m.group(1)}({m.group(2)}+\\frac{m.group(3)}{m.group(4)})"  # 1\frac{4}{5} = 9/5
    s = _REPEATING_RE.sub(_repeating_decimal, s)
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"(?<![a-zA-Z]) | (?![a-zA-Z])", "", s)  # keep only spaces between letters
    if s in ("\\{\\}", "\\{ \\}"):
        s = "\\emptyset"
    s = _inequality_interval(s)
    return s.replace(",", "") if _THOUSANDS_RE.fullmatch(s) else s, unit


# ---- structure: tuples, intervals, sets, lists, unions, matrices, equations ----------------------


def _split_top(s, sep):
    """Split s at top-level occurrences of sep (outside any ( [ { ), or None if unbalanced."""
    parts, depth, start, i, n, k = [], 0, 0, 0, len(s), len(sep)
    while i < n:
        ch = s[i]
        if ch in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _Reject("nesting too deep")
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += k
            start = i
            continue
        i += 1
    if depth != 0:
        return None
    parts.append(s[start:])
    return parts


def _wrapped(s):
    """True when s[0] opens a bracket that closes at s[-1] (so "(a)(b)" is not wrapped)."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


_MATRIX_RE = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)


def _structure(s, level=0):
    """(kind, ...) for a normalised answer; scalars are kept as strings for _scalar_equal."""
    if level > 4 or len(s) > MAX_ANSWER_CHARS:
        raise _Reject("structure too deep or too long")
    m = _MATRIX_RE.fullmatch(s)
    if m:
        rows = [r for r in m.group(2).split("\\\\") if r.strip()]
        cells = [[_structure(c.strip(), level + 1) for c in r.split("&")] for r in rows]
        if sum(map(len, cells)) > MAX_ITEMS:
            raise _Reject("matrix too large")
        return ("matrix", cells)
    union = _split_top(s, "\\cup")
    if union and len(union) > 1:
        return ("union", [_structure(p.strip(), level + 1) for p in union])
    if s.startswith("\\{") and s.endswith("\\}"):
        items = _split_top(s[2:-2], ",")
        if items is not None:
            return ("set", _items(items, level))
    if len(s) > 1 and s[0] in "([" and s[-1] in ")]" and _wrapped(s):
        items = _split_top(s[1:-1], ",")
        if items and len(items) > 1:
            return ("seq", s[0] + s[-1], [_structure(p.strip(), level + 1) for p in items])
    items = _split_top(s, ",")
    if items and len(items) > 1:
        return ("list", _items(items, level))
    for pm in ("\\pm", "\\mp"):
        if pm in s:
            return ("list", _items([s], level))
    sides = _split_top(s, "=")
    if sides and len(sides) == 2 and all(p.strip() for p in sides):
        return ("eq", sides[0].strip(), sides[1].strip())
    return ("scalar", s)


def _items(parts, level):
    """Structures of list elements, with "a \\pm b" expanded into a + b and a - b."""
    out = []
    for p in parts:
        p = p.strip()
        for pm, first, second in (("\\pm", "+", "-"), ("\\mp", "-", "+")):
            if pm in p:
                out += [_structure(p.replace(pm, first, 1), level + 1),
                        _structure(p.replace(pm, second, 1), level + 1)]
                break
        else:
            out.append(_structure(p, level + 1))
    if len(out) > MAX_ITEMS:
        raise _Reject("too many items")
    return out


def _unordered_equal(xs, golds, rounding):
    if len(xs) != len(golds):
        return False
    unused = list(golds)
    for x in xs:
        for j, g in enumerate(unused):
            if _struct_equal(x, g, rounding):
                del unused[j]
                break
        else:
            return False
    return True


def _ordered_equal(xs, golds, rounding):
    return len(xs) == len(golds) and all(_struct_equal(x, g, rounding) for x, g in zip(xs, golds))


def _vector(struct):
    """Elements of a one-row or one-column matrix, or None."""
    rows = struct[1]
    if len(rows) == 1:
        return rows[0]
    if all(len(r) == 1 for r in rows):
        return [r[0] for r in rows]
    return None


def _struct_equal(a, g, rounding):
    ka, kg = a[0], g[0]
    if ka == "eq" or kg == "eq":
        return _equation_equal(a, g, rounding)
    if ka == kg == "scalar":
        return _scalar_equal(a[1], g[1], rounding)
    if ka in ("set", "list") and kg in ("set", "list"):
        return _unordered_equal(a[1], g[1], rounding)
    if ka == kg == "union":
        return _unordered_equal(a[1], g[1], rounding)
    if ka == kg == "seq":
        return a[1] == g[1] and _ordered_equal(a[2], g[2], rounding)
    # a bare "1, 2" answers the tuple (1, 2) in order; a bare list never answers an interval [a, b]
    if ka == "list" and kg == "seq" and g[1] == "()":
        return _ordered_equal(a[1], g[2], rounding)
    if kg == "list" and ka == "seq" and a[1] == "()":
        return _ordered_equal(a[2], g[1], rounding)
    if ka == kg == "matrix":
        return (len(a[1]) == len(g[1])
                and all(_ordered_equal(ra, rg, rounding) for ra, rg in zip(a[1], g[1])))
    # a column/row vector answers a tuple and vice versa
    if ka == "matrix" and kg == "seq" and g[1] == "()":
        vec = _vector(a)
        return vec is not None and _ordered_equal(vec, g[2], rounding)
    if kg == "matrix" and ka == "seq" and a[1] == "()":
        vec = _vector(g)
        return vec is not None and _ordered_equal(a[2], vec, rounding)
    return False


# ---- the LaTeX parser: string -> tree ------------------------------------------------------------
# Nodes: ("num", Fraction) ("sym", name) ("const", "pi"|"e"|"i"|"oo")
# ("add"|"sub"|"mul"|"div"|"pow", a, b) ("neg", a) ("fn", name, a) ("fact", a) ("binom", n, k)

_FUNCTIONS = {"sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh",
              "cosh", "tanh", "ln", "log", "exp", "sqrt"}
_WORD_FUNCTIONS = sorted(_FUNCTIONS | {"asin", "acos", "atan"}, key=len, reverse=True)
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
          "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau",
          "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda",
          "Xi", "Sigma", "Phi", "Psi", "Omega", "hbar", "ell"}
_NUM_RE = re.compile(r"(\d+\.?\d*|\.\d+)(?:[eE]([-+]?\d+)(?![\d.]))?")
_CMD_RE = re.compile(r"\\([a-zA-Z]+)")
_BRACKET_COMMANDS = {"lceil": ("rceil", "ceil"), "lfloor": ("rfloor", "floor")}


class _Parser:
    def __init__(self, s):
        self.s, self.i, self.nodes, self.depth = s, 0, 0, 0

    def fail(self, why="cannot parse"):
        raise _Reject(why)

    def node(self, *parts):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self.fail("expression too large")
        return parts

    def peek(self):
        s, n = self.s, len(self.s)
        while self.i < n and s[self.i] == " ":
            self.i += 1
        return s[self.i] if self.i < n else ""

    def command_at(self):
        m = _CMD_RE.match(self.s, self.i)
        return m.group(1) if m else None

    def parse(self):
        tree = self.expr()
        if self.peek():
            self.fail("trailing input")
        return tree

    def expr(self):
        left = self.unary()
        while True:
            ch = self.peek()
            if ch and ch in "+-":
                self.i += 1
                left = self.node("add" if ch == "+" else "sub", left, self.term())
            else:
                return left

    def unary(self):
        ch = self.peek()
        if ch and ch in "+-":
            self.i += 1
            inner = self.unary()
            return inner if ch == "+" else self.node("neg", inner)
        return self.term()

    def term(self):
        left = self.power()
        while True:
            ch = self.peek()
            cmd = self.command_at() if ch == "\\" else None
            if (ch and ch in "*/") or cmd in ("cdot", "times", "div"):
                self.i += 1 if ch in "*/" else len(cmd) + 1
                right = self.unary_power()
                left = self.node("div" if ch == "/" or cmd == "div" else "mul", left, right)
            elif ch and (ch.isalnum() or ch in "({[." or (ch == "\\" and cmd not in (
                    None, "cdot", "times", "div", "pm", "mp", "cup", "in", "leq", "geq", "le", "ge", "rceil",
                    "rfloor"))):
                left = self.node("mul", left, self.power())  # implicit product: 2x, 3\sqrt{2}
            else:
                return left

    def unary_power(self):
        if self.peek() == "-":
            self.i += 1
            return self.node("neg", self.unary_power())
        return self.power()

    def power(self):
        base = self.postfix()
        if self.peek() == "^":
            self.i += 1
            return self.node("pow", base, self.exponent())
        return base

    def exponent(self):
        ch = self.peek()
        if ch == "{" or ch == "(":
            return self.group()
        if ch == "-":
            self.i += 1
            return self.node("neg", self.exponent())
        if ch.isdecimal():  # TeX: x^23 is x^2 * 3
            self.i += 1
            return self.node("num", Fraction(int(ch)))
        return self.postfix()

    def postfix(self):
        base = self.primary()
        while self.peek() == "!":
            self.i += 1
            base = self.node("fact", base)
        return base

    def group(self):
        opener = self.s[self.i]
        closer = {"(": ")", "{": "}", "[": "]"}[opener]
        self.i += 1
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail("nesting too deep")
        inner = self.expr()
        if self.peek() != closer:
            self.fail("unbalanced bracket")
        self.i += 1
        self.depth -= 1
        return inner

    def tex_arg(self):
        """A TeX macro argument: {group} or one character/command (\\frac12, \\sqrt2)."""
        ch = self.peek()
        if ch == "{":
            return self.group()
        if ch.isdecimal():
            self.i += 1
            return self.node("num", Fraction(int(ch)))
        if ch.isalpha():
            self.i += 1
            return self.letter(ch)
        if ch == "\\":
            return self.primary()
        return self.fail("bad macro argument")

    def letter(self, ch):
        if ch in "ei":
            return self.node("const", ch)  # Euler's e and the imaginary unit
        return self.subscripted(ch)

    def subscripted(self, name):
        if self.peek() == "_":
            self.i += 1
            if self.peek() == "{":
                end = self.s.find("}", self.i)
                if end < 0:
                    self.fail("unbalanced subscript")
                sub, self.i = self.s[self.i + 1 : end], end + 1
            else:
                sub, self.i = self.s[self.i : self.i + 1], self.i + 1
            name += "_" + sub.replace(" ", "")
        return self.node("sym", name)

    def primary(self):
        ch = self.peek()
        if not ch:
            self.fail("unexpected end")
        if ch.isdecimal() or (ch == "." and self.s[self.i + 1 : self.i + 2].isdecimal()):  # not isdigit(): "²"
            m = _NUM_RE.match(self.s, self.i)
            self.i = m.end()
            mantissa = m.group(1)
            value = Fraction(mantissa.rstrip(".") or "0")
            if m.group(2):
                e = int(m.group(2))
                if abs(e) > MAX_EXPONENT:
                    self.fail("exponent too large")
                value *= Fraction(10) ** e
            if self.peek() == "_":
                self.fail("number in another base")  # 52_8 is compared as a string only
            return self.node("num", value)
        if ch in ("(", "{", "["):
            return self.group()
        if ch == "\\":
            return self.command()
        if ch.isalpha():
            for word in _WORD_FUNCTIONS:  # sqrt(2), arcsin(x), exp(t) written without backslash
                if self.s.startswith(word, self.i) and (word != "pi"):
                    self.i += len(word)
                    return self.function(word)
            if self.s.startswith("pi", self.i):
                self.i += 2
                return self.node("const", "pi")
            self.i += 1
            return self.letter(ch)
        return self.fail(f"unexpected {ch!r}")

    def command(self):
        name = self.command_at()
        if name is None:
            self.fail("stray backslash")
        self.i += len(name) + 1
        if name == "frac":
            return self.node("div", self.tex_arg(), self.tex_arg())
        if name == "binom":
            return self.node("binom", self.tex_arg(), self.tex_arg())
        if name == "sqrt":
            if self.peek() == "[":
                self.i += 1
                index = self.expr()
                if self.peek() != "]":
                    self.fail("bad root index")
                self.i += 1
                radicand = self.tex_arg()
                return self.node("pow", radicand, self.node("div", self.node("num", Fraction(1)), index))
            return self.node("fn", "sqrt", self.tex_arg())
        if name in _BRACKET_COMMANDS:  # \lceil x \rceil, \lfloor x \rfloor
            closer, fn = _BRACKET_COMMANDS[name]
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self.fail("nesting too deep")
            inner = self.expr()
            if self.peek() != "\\" or self.command_at() != closer:
                self.fail(f"no \\{closer}")
            self.i += len(closer) + 1
            self.depth -= 1
            return self.node("fn", fn, inner)
        if name == "pi":
            return self.node("const", "pi")
        if name == "infty":
            return self.node("const", "oo")
        if name in _GREEK:
            return self.subscripted(name)
        if name == "operatorname":
            inner = self.s[self.i :].lstrip()
            m = re.match(r"\{([a-z]+)\}", inner)
            if not m or m.group(1) not in _FUNCTIONS:
                self.fail("unknown operator")
            self.i = len(self.s) - len(inner) + m.end()
            name = m.group(1)
        if name in _FUNCTIONS:
            return self.function(name)
        return self.fail(f"unknown command \\{name}")

    def function(self, name):
        name = {"asin": "arcsin", "acos": "arccos", "atan": "arctan"}.get(name, name)
        power = base = None
        if name == "log" and self.peek() == "_":
            self.i += 1
            base = self.tex_arg()
        if self.peek() == "^":  # \sin^2 x = (\sin x)^2, \sin^{-1} x = \arcsin x
            self.i += 1
            power = self.exponent()
        if self.peek() in ("(", "{", "["):
            arg = self.group()
        else:  # \sin 2x: the argument is the following product
            arg = self.power()
            while self.peek() and (self.peek().isalnum()
                                   or (self.peek() == "\\" and self.command_at() in _GREEK | {"pi"})):
                arg = self.node("mul", arg, self.power())
        if power == ("neg", ("num", Fraction(1))) and name in ("sin", "cos", "tan"):
            return self.node("fn", "arc" + name, arg)
        out = self.node("fn", name, arg)
        if base is not None:
            out = self.node("div", out, self.node("fn", "ln", base))
        return self.node("pow", out, power) if power is not None else out


def _parse(s):
    if len(s) > MAX_ANSWER_CHARS:
        raise _Reject("answer too long")
    return _Parser(s).parse()


# ---- one evaluator, three number domains ---------------------------------------------------------
# A parsed tree is evaluated by _evaluate in one of three domains: exact rationals (Fraction: plain
# numbers, and rational functions at rational points), complex floating point (fast rejection at
# sample points) and sympy (symbolic confirmation). The operator dispatch is written once; a domain
# only says what the operations whose meaning differs between domains do.


class _Inexact(Exception):
    """The tree has no value in the exact domain (pi, sqrt(2), sin x, a symbol without a point)."""


@dataclasses.dataclass(frozen=True)
class _Domain:
    num: Callable  # Fraction -> value
    sym: Callable  # (name, env) -> value
    const: Callable  # "pi" | "e" | "i" | "oo" -> value
    fn: Callable  # (name, value) -> value
    fact: Callable
    binom: Callable
    mul: Callable
    div: Callable
    pow: Callable


def _evaluate(t, domain, env):
    kind = t[0]
    if kind == "num":
        return domain.num(t[1])
    if kind == "sym":
        return domain.sym(t[1], env)
    if kind == "const":
        return domain.const(t[1])
    if kind == "fn":
        return domain.fn(t[1], _evaluate(t[2], domain, env))
    if kind == "neg":
        return -_evaluate(t[1], domain, env)
    if kind == "fact":
        return domain.fact(_evaluate(t[1], domain, env))
    a, b = _evaluate(t[1], domain, env), _evaluate(t[2], domain, env)
    if kind == "add":
        return a + b
    if kind == "sub":
        return a - b
    if kind == "mul":
        return domain.mul(a, b)
    if kind == "div":
        return domain.div(a, b)
    if kind == "binom":
        return domain.binom(a, b)
    return domain.pow(a, b)


# ---- exact rationals: sizes are bounded by the size of the result, not of the input --------------


def _bits(v):
    return max(v.numerator.bit_length(), v.denominator.bit_length())


def _check_bits(bits):
    if bits > MAX_EXACT_BITS:
        raise _Reject("number too large")


def _exact_sym(name, env):
    if env is None or name not in env:
        raise _Inexact(name)
    return env[name]


def _exact_const(name):
    raise _Inexact(name)


def _exact_root(v, n):
    """The exact n-th root of the rational v >= 0, or _Inexact (sqrt(4) = 2, 8^(1/3) = 2)."""
    if v < 0 or n > 64 or _bits(v) > 4096:
        raise _Inexact("root")
    roots = []
    for part in (v.numerator, v.denominator):
        if n != 2 and part.bit_length() > 1000:
            raise _Inexact("root")  # the float guess below would overflow
        r = math.isqrt(part) if n == 2 else round(part ** (1.0 / n))  # a float guess, checked exactly below
        if r ** n != part:
            raise _Inexact("root")
        roots.append(r)
    return Fraction(roots[0], roots[1])


def _exact_fn(name, v):
    if name == "floor":
        return Fraction(math.floor(v))
    if name == "ceil":
        return Fraction(math.ceil(v))
    if name == "sqrt":
        return _exact_root(v, 2)
    raise _Inexact(name)


def _exact_integer(v):
    if v.denominator != 1:
        raise _Inexact("not an integer")
    return int(v)


def _exact_fact(v):
    n = _exact_integer(v)
    if n < 0:
        raise _Inexact("factorial of a negative number")
    _check_bits(0 if n < 2 else math.lgamma(n + 1) / math.log(2))
    return Fraction(math.factorial(n))


def _exact_binom(a, b):
    n, k = _exact_integer(a), _exact_integer(b)
    if n < 0:
        raise _Inexact("binomial of a negative number")
    if not 0 <= k <= n:
        return Fraction(0)
    _check_bits(min(k, n - k) * n.bit_length())  # C(n, k) < n^min(k, n-k)
    return Fraction(math.comb(n, k))


def _exact_mul(a, b):
    _check_bits((_bits(a) + _bits(b)) // 2)  # a product may reach twice the bound, no more
    return a * b


def _exact_div(a, b):
    if b == 0:
        raise _Inexact("division by zero")  # the complex domain finds no finite value either
    return a / b


def _exact_pow(a, b):
    if b.denominator != 1:
        if b.denominator > 64:
            raise _Inexact("root")
        a, b = _exact_root(a, b.denominator), Fraction(b.numerator)
    if a == 0:
        if b < 0:
            raise _Inexact("division by zero")
        return Fraction(1) if b == 0 else a
    if abs(a) == 1:
        return a ** int(b)  # (-1)^(10^999) is cheap
    _check_bits(_bits(a) * abs(b))
    return a ** int(b)


_EXACT = _Domain(num=lambda v: v, sym=_exact_sym, const=_exact_const, fn=_exact_fn, fact=_exact_fact,
                 binom=_exact_binom, mul=_exact_mul, div=_exact_div, pow=_exact_pow)


def _exact(t, env=None):
    """The tree's value as a Fraction (symbols taken from env), or None when it is not rational."""
    try:
        return _evaluate(t, _EXACT, env)
    except _Inexact:
        return None


# ---- complex floating point (fast rejection) -----------------------------------------------------


def _real_only(f):
    return lambda z: complex(f(z.real)) if z.imag == 0 else complex("nan")


_CMATH = {"sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "arcsin": cmath.asin,
          "arccos": cmath.acos, "arctan": cmath.atan, "sinh": cmath.sinh, "cosh": cmath.cosh,
          "tanh": cmath.tanh, "ln": cmath.log, "log": cmath.log, "exp": cmath.exp,
          "sqrt": cmath.sqrt, "sec": lambda z: 1 / cmath.cos(z), "csc": lambda z: 1 / cmath.sin(z),
          "cot": lambda z: 1 / cmath.tan(z), "floor": _real_only(math.floor), "ceil": _real_only(math.ceil)}
_CONSTS = {"pi": math.pi, "e": math.e, "i": 1j, "oo": math.inf}


def _complex_fact(v):
    if v.imag != 0:
        raise _Reject("factorial of a non-real number")
    if abs(v.real) > MAX_FACTORIAL:
        raise _Reject("factorial too large")
    return complex(math.gamma(v.real + 1))


def _complex_binom(a, b):
    if a.imag or b.imag or a.real != int(a.real) or b.real != int(b.real) or abs(a.real) > 1e6:
        return complex("nan")
    return complex(math.comb(int(a.real), int(b.real))) if 0 <= b.real <= a.real else 0j


def _complex_pow(a, b):
    if b.imag == 0 and b.real == int(b.real) and a.imag == 0:
        return complex(a.real ** int(b.real))  # keep (-8)^3 real
    return a ** b


_COMPLEX = _Domain(num=complex, sym=lambda name, env: env[name], const=_CONSTS.__getitem__,
                   fn=lambda name, z: _CMATH[name](z), fact=_complex_fact, binom=_complex_binom,
                   mul=operator.mul, div=operator.truediv, pow=_complex_pow)


def _numeric(t, env):
    """Complex value of the tree with symbols taken from env (may raise arithmetic errors)."""
    return _evaluate(t, _COMPLEX, env)


def _symbols(t, out):
    if t[0] == "sym":
        out.add(t[1])
    elif t[0] not in ("num", "const"):
        for child in t[1:]:
            if isinstance(child, tuple):
                _symbols(child, out)
    return out


def _max_exponent(t):
    """Largest |numeric exponent| in the tree (for the sympy size bound)."""
    if t[0] == "pow":
        try:
            e = abs(_numeric(t[2], {}))
        except Exception:
            e = 0.0
        return max(e, _max_exponent(t[1]), _max_exponent(t[2]))
    if t[0] in ("num", "sym", "const"):
        return 0.0
    return max(_max_exponent(c) for c in t[1:] if isinstance(c, tuple))


_POINTS = (0.5772156649, 1.3247179572, 0.8414709848, 1.6180339887, 0.6931471806, 2.2360679775)


def _sample_envs(symbols, count=3):
    names = sorted(symbols)
    return [{name: complex(_POINTS[(k + 2 * j) % len(_POINTS)] + 0.1 * j) for j, name in enumerate(names)}
            for k in range(count)]


def _numerically_equal(a, g, symbols):
    """True when a and g agree at every sample point where both are finite, and there is at least
    one such point (an answer like 2^{i!} that is nowhere finite is never handed to sympy)."""
    finite = False
    for env in _sample_envs(symbols):
        try:
            x, y = _numeric(a, env), _numeric(g, env)
        except (ArithmeticError, ValueError, KeyError):
            continue
        if not (cmath.isfinite(x) and cmath.isfinite(y)):
            continue
        if abs(x - y) > 1e-8 * max(abs(x), abs(y)) + 1e-12:
            return False
        finite = True
    return finite


# ---- the exact identity test at rational points (no sympy) ---------------------------------------

# Rational functions are compared exactly at rational points: two different rational functions of
# degree <= d agree at a random point with probability <= 2d / (size of the point set) (Schwartz-Zippel),
# so exact agreement at 3 points of large numerators and denominators is an identity test that needs no
# sympy. Floor and ceiling are piecewise constant and are left to sympy.
# In a rational function of pi, e, i and square roots of rational numbers (no other functions: 288\pi,
# 6-5i, \sqrt{117}) the constants are taken as symbols too, a root as its reduced form 3 * "#sqrt13".
# Identical rational functions have equal values, so "equal" is sound; a transcendental pi or e
# satisfies no polynomial identity, so "different" is sound for them, while i and roots (i^2 = -1,
# sqrt2 sqrt3 = sqrt6) leave a "different" to sympy.
_RATIONAL_POINTS = (Fraction(104729, 7919), Fraction(-1299709, 611953), Fraction(15485863, 32452843))


def _square_free(n):
    """(c, m) with n = c^2 m and m free of the squares of primes below 1000 (m = 1 for a perfect square)."""
    c = 1
    for d in range(2, 1000):
        if d * d > n:
            break
        while n % (d * d) == 0:
            n //= d * d
            c *= d
    r = math.isqrt(n)
    return (c * r, 1) if r * r == n else (c, n)


def _constants_as_symbols(t):
    """The tree with pi, e, i turned into symbols "#pi", "#e", "#i" and \\sqrt{r} (r > 0 rational) into
    c * "#sqrtm" when it is a rational function of its symbols and these constants (integer exponents
    only), else None."""
    kind = t[0]
    if kind == "fn" and t[1] == "sqrt":
        v = _exact(t[2])
        if v is None or v <= 0 or _bits(v) > 64:
            return None
        c, m = _square_free(v.numerator * v.denominator)  # sqrt(p/q) = sqrt(p q) / q
        coefficient = ("num", Fraction(c, v.denominator))
        return coefficient if m == 1 else ("mul", coefficient, ("sym", f"#sqrt{m}"))
    if kind == "const":
        return ("sym", "#" + t[1]) if t[1] != "oo" else None
    if kind in ("num", "sym"):
        return t
    if kind == "pow":
        exponent = _exact(t[2])
        base = _constants_as_symbols(t[1])
        return None if base is None or exponent is None or exponent.denominator != 1 else (kind, base, t[2])
    if kind not in ("neg", "add", "sub", "mul", "div"):
        return None  # functions, roots, factorials, binomials
    children = [_constants_as_symbols(c) for c in t[1:]]
    return None if None in children else (kind, *children)


def _exact_fn_at_points(name, v):
    if name in ("floor", "ceil"):
        raise _Inexact(name)
    return _exact_fn(name, v)


_EXACT_AT_POINTS = dataclasses.replace(_EXACT, fn=_exact_fn_at_points)


def _exact_identity(a, g, symbols, ratio=False):
    """True / False when a - g (ratio=True: a / g a nonzero constant) is decided exactly at rational
    points; None when a side is not a rational function of its symbols (sin x, sqrt x, floor)."""
    with_constants = _constants_as_symbols(a), _constants_as_symbols(g)
    uses_i = False
    if None not in with_constants and with_constants != (a, g):  # some constant or root became a symbol
        a, g = with_constants
        symbols = _symbols(a, set()) | _symbols(g, set())
        uses_i = any(name == "#i" or name.startswith("#sqrt") for name in symbols)
    names = sorted(symbols)
    values = []
    for k, point in enumerate(_RATIONAL_POINTS):
        env = {name: point + Fraction(j, 3 + k) for j, name in enumerate(names)}
        try:
            x, y = _evaluate(a, _EXACT_AT_POINTS, env), _evaluate(g, _EXACT_AT_POINTS, env)
        except (_Inexact, _Reject):
            return None
        values.append((x, y))
        if not symbols:
            break
    if not ratio:
        same = all(x == y for x, y in values)
    elif any(y == 0 for _, y in values):
        return None
    else:
        q = values[0][0] / values[0][1]
        same = q != 0 and all(x == q * y for x, y in values)
    return None if uses_i and not same else same


# ---- sympy (only for equal-looking pairs of different form) --------------------------------------

_sympy = None  # the module, imported on first use
_SYMPY = None  # its _Domain
_SYMPY_IMPORT = {"running": False}


def sympy_importing():
    """Is load_sympy importing sympy right now? verify.score's timer waits while it is: an import cut
    in half would leave sympy broken for the rest of the process."""
    return _SYMPY_IMPORT["running"]


def load_sympy():
    """Import sympy (once per process); a caller may pay for the import ahead of time-limited work."""
    global _sympy, _SYMPY
    if _sympy is not None:
        return
    _SYMPY_IMPORT["running"] = True  # an alarm now would leave sympy half-imported for the rest of the run
    try:
        import sympy as sp
    finally:
        _SYMPY_IMPORT["running"] = False
    names = {"ln": "log", "arcsin": "asin", "arccos": "acos", "arctan": "atan", "ceil": "ceiling"}
    consts = {"pi": sp.pi, "e": sp.E, "i": sp.I, "oo": sp.oo}
    _SYMPY = _Domain(num=lambda v: sp.Rational(v.numerator, v.denominator), sym=lambda name, env: sp.Symbol(name),
                     const=consts.__getitem__, fn=lambda name, x: getattr(sp, names.get(name, name))(x),
                     fact=sp.factorial, binom=sp.binomial, mul=operator.mul, div=operator.truediv,
                     pow=operator.pow)
    _sympy = sp


def _to_sympy(t):
    return _evaluate(t, _SYMPY, None)


def _sympy_zero(t_diff_a, t_diff_b, ratio=False):
    """Does sympy show a - b == 0 (or, with ratio=True, a / b a nonzero constant)?"""
    if max(_max_exponent(t_diff_a), _max_exponent(t_diff_b)) > MAX_SYMPY_EXPONENT:
        return False
    load_sympy()
    a, b = _to_sympy(t_diff_a), _to_sympy(t_diff_b)
    if ratio:
        q = _sympy.simplify(a / b)
        return not q.free_symbols and q.is_number and q != 0 and q.is_finite is True
    d = a - b
    if d == 0:
        return True
    simple = _sympy.simplify(d)
    if simple == 0:
        return True
    if d.has(_sympy.sin, _sympy.cos, _sympy.tan, _sympy.cot, _sympy.sec, _sympy.csc) and _sympy.fu(d) == 0:
        return True
    return simple.equals(0) is True


# ---- scalar comparison ---------------------------------------------------------------------------

_DECIMAL_RE = re.compile(r"[-+]?(\d*)\.?(\d*)(?:[eE]([-+]?\d+)|\\times10\^\{?([-+]?\d+)\}?)?")
_PLAIN_DECIMAL_RE = re.compile(r"[-+]?(\d*)\.(\d+)")
# "round your answer to", "to the nearest hundredth", "3 significant figures"; not "a round table", "the nearest
# vertex", "in every round" (checked on the problems of MATH, Minerva and OlympiadBench)
_ROUNDING_ASKED_RE = re.compile(r"\bround(?:ed|ing)?\s+(?:\w+\s+){0,4}?(?:to|off)\b|\bto the nearest\b|"
                                r"\bdecimal places?\b|\bsignificant (?:figure|digit)s?\b|\bto \w+ (?:digits|places)\b|"
                                r"\bapproximate(?:ly)?\b|\bestimate\b", re.IGNORECASE)
MIN_LONG_DECIMAL_DIGITS = 6


def rounding_asked(problem):
    """Does the problem text ask for a rounded answer ("to the nearest hundredth", "3 significant figures")?"""
    return bool(problem) and _ROUNDING_ASKED_RE.search(problem) is not None


def _gold_quantum(gold):
    """(rounding unit, scientific?) of a gold written as a decimal ("0.15" -> 1/100, "4.5e33" -> 1e32), else None."""
    m = _DECIMAL_RE.fullmatch(gold)
    if not m or not (m.group(1) or m.group(2)):
        return None
    exponent = m.group(3) or m.group(4)
    if "." not in gold and exponent is None:
        return None  # an integer gold is exact
    return Fraction(10) ** (int(exponent or 0) - len(m.group(2))), exponent is not None


def _rounds_to(value, gold_value, quantum):
    """Does value, rounded half away from zero to a multiple of quantum, equal gold_value?"""
    steps = abs(value) / quantum
    rounded = math.floor(steps + Fraction(1, 2)) * quantum
    return (rounded if value >= 0 else -rounded) == gold_value


def _long_decimal_matches(a, value, gold_value):
    """Rule 3: a decimal answer of >= 6 significant digits matches a rational gold that it agrees with
    on every digit it gives (the gold truncated or rounded at the answer's last place)."""
    m = _PLAIN_DECIMAL_RE.fullmatch(a)
    if not m or len((m.group(1) + m.group(2)).lstrip("0")) < MIN_LONG_DECIMAL_DIGITS:
        return False
    quantum = Fraction(1, 10 ** len(m.group(2)))
    return value == math.trunc(gold_value / quantum) * quantum or _rounds_to(gold_value, value, quantum)


def _percent_equal(a, g, rounding):
    """One side carries a percent sign: "25%" answers 25 (the gold left the sign out) and 0.25, but
    "5000%" does not answer 50: the reading x% = x/100 needs a plain side that is not an integer."""
    a_plain, g_plain = a.rstrip("%").strip(), g.rstrip("%").strip()
    if _scalar_equal(a_plain, g_plain, rounding):
        return True
    plain = g_plain if a.endswith("%") else a_plain
    value = _exact(_parse(plain))
    if value is None or value.denominator == 1:
        return False
    if a.endswith("%"):
        return _scalar_equal(f"({a_plain})/100", g_plain, rounding)
    return _scalar_equal(a_plain, f"({g_plain})/100", rounding)


def _real_value(t):
    """The real number a constant tree stands for, as a Fraction (through a float), or None."""
    try:
        x = _numeric(t, {})
    except (ArithmeticError, ValueError, KeyError):
        return None
    if not cmath.isfinite(x) or abs(x.imag) > 1e-12 * max(1.0, abs(x)):
        return None
    return Fraction(x.real)


def _scalar_equal(a, g, rounding=False):
    if a == g:
        return True
    if a.endswith("%") != g.endswith("%"):
        return _percent_equal(a, g, rounding)
    a, g = a.rstrip("%"), g.rstrip("%")
    if a == g:
        return True
    if re.fullmatch(r"[A-Za-z][A-Za-z ]+", a) and re.fullmatch(r"[A-Za-z][A-Za-z ]+", g):
        return a.lower() == g.lower()  # words: "East" answers \text{east}
    ta, tg = _parse(a), _parse(g)
    va, vg = _exact(ta), _exact(tg)
    decimal_gold = _gold_quantum(g)
    may_round = decimal_gold is not None and (rounding or decimal_gold[1])
    if va is not None and vg is not None:
        if va == vg:
            return True
        if may_round:
            return _rounds_to(va, vg, decimal_gold[0])
        return decimal_gold is None and _long_decimal_matches(a, va, vg)
    symbols = _symbols(ta, set()) | _symbols(tg, set())
    if decimal_gold is not None:  # a decimal gold and an irrational answer (\pi for 3.14) only match by rounding
        x = None if symbols or not may_round else _real_value(ta)
        return x is not None and _rounds_to(x, vg, decimal_gold[0])
    if not _numerically_equal(ta, tg, symbols):
        return False
    same = _exact_identity(ta, tg, symbols)
    return same if same is not None else _sympy_zero(ta, tg)


# ---- equations, and the entry point --------------------------------------------------------------


def _is_variable(s):
    """A variable ("x", "\\theta", "a_1") or a function of variables ("f(x)", "g(x,y)")."""
    return re.fullmatch(r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\([a-zA-Z](?:,[a-zA-Z])*\))?", s) is not None


def _equation_equal(a, g, rounding):
    if a[0] == "eq" and g[0] == "eq":
        if a[1] == g[1] and _is_variable(g[1]):
            return _struct_equal(_structure(a[2]), _structure(g[2]), rounding)
        # general equations: (l1 - r1) is a nonzero constant multiple of (l2 - r2)
        da = _parse(f"{a[1]}-({a[2]})")
        dg = _parse(f"{g[1]}-({g[2]})")
        symbols = _symbols(da, set()) | _symbols(dg, set())
        ratios = []
        for env in _sample_envs(symbols):
            try:
                x, y = _numeric(da, env), _numeric(dg, env)
                ratios.append(x / y)
            except (ArithmeticError, ValueError, KeyError):
                continue
        if not ratios or any(abs(r - ratios[0]) > 1e-8 * abs(ratios[0]) for r in ratios):
            return False
        same = _exact_identity(da, dg, symbols, ratio=True)
        return same if same is not None else _sympy_zero(da, dg, ratio=True)
    if a[0] == "eq":  # "x = 5" answers 5, "f(x) = 2x" answers 2x
        return _is_variable(a[1]) and _struct_equal(_structure(a[2]), g, rounding)
    return _is_variable(g[1]) and _struct_equal(a, _structure(g[2]), rounding)


def is_equivalent(answer, gold, problem=None):
    """Is the bare answer equal to the bare gold answer? Not symmetric: the gold is the reference
    (its form sets the decimal policy); `problem` only says whether rounding was asked for."""
    if not isinstance(answer, str) or not isinstance(gold, str):
        return False
    if len(answer) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    (a, a_unit), (g, g_unit) = _normalize(answer), _normalize(gold)
    if a_unit and g_unit and a_unit != g_unit:
        return False  # 5 km is not 5 m; a unit on one side only is ignored
    if a == g:
        return bool(a)
    try:
        return _struct_equal(_structure(a), _structure(g), rounding_asked(problem))
    except (_Reject, RecursionError, ArithmeticError, ValueError):
        return False

