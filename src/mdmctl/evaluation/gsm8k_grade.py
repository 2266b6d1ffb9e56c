"""GSM8K grading, two rules side by side (docs/method.md §6).

**mdmctl's rule** (``extract_answer``, the "accuracy" column): the first number after the first
``####`` (stage 2 writes the marker and the answer; anything a model repeats after it does not
count), a spelled-out number there too (``#### twelve``); without a marker, the number of the
last "answer is / answer:" statement, else the last number in the text. Numbers are parsed to
exact fractions, so ``$1,200.00``, ``1200`` and ``1200.0`` agree, ``1/2`` is 0.5, ``3 1/2`` is
3.5, and very large values never collide (no floats anywhere). A minus sign counts only when it
is attached to the number and does not follow a word or a number: ``10-15`` is a range, ``- 12``
a bullet; the Unicode minus ``−`` is a minus. Thousands separators are commas between groups of
exactly three digits: ``1,2,3`` is not 123. A clock time (``8:30``) is one value, never 8 or 30.

**SMDM's rule** (``smdm_correct``, the paper's, ``evaluate_gsm8k.py``'s ``get_acc``): the text of
``#### (.*)$`` (a space after the marker; without ``re.MULTILINE`` only a marker on the text's
last line matches), else the empty string; both it and the reference go through the Minerva
normalisation (``eval/math_normalization.py``) and are compared with sympy's equivalence, which
for the numbers GSM8K answers are is equality of values, and otherwise equality of the strings.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

GRADERS = {
    "accuracy": "mdmctl's rule (the first number after the first ####)",
    "accuracy_smdm": "SMDM's rule, the paper's (the last line's '#### ...', normalised)",
}
"""What each accuracy column of ``eval gsm8k`` grades by (the JSON carries it)."""

_NUMBER = re.compile(
    r"(?P<time>(?<![\d.:])\d{1,2}:\d{2}(?![\d:]))|"  # 8:30 is one value, not 8 and 30
    r"(?P<sign>(?<![\w.])[-−+])?[$€£]?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+]?\d+(?![\w.]))?"
    r"(?:\s+(?P<mixed_num>\d+)/(?P<mixed_den>\d+)|/(?P<den>\d+))?"
)


def _value(m: re.Match[str]) -> Fraction | str | None:
    if m["time"]:
        return m["time"]
    try:
        v = Fraction(Decimal(m["num"].replace(",", "") + (m["exp"] or "")))
    except (InvalidOperation, ValueError):
        return None
    if m["den"]:
        if int(m["den"]) == 0:
            return None
        v /= int(m["den"])
    elif m["mixed_den"]:
        if int(m["mixed_den"]) == 0:
            return None
        v += Fraction(int(m["mixed_num"]), int(m["mixed_den"]))
    return -v if m["sign"] in ("-", "−") else v


def canonical(v: Fraction) -> str:
    """Exact text of a rational: '12', '-3.5', '0.125'; a non-terminating one as 'p/q'."""
    if v.denominator == 1:
        return str(v.numerator)
    d, twos, fives = v.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return f"{v.numerator}/{v.denominator}"
    k = max(twos, fives)
    digits = str(abs(v.numerator) * 10**k // v.denominator).rjust(k + 1, "0")
    return ("-" if v < 0 else "") + (digits[:-k] + "." + digits[-k:]).rstrip("0")


def numbers(text: str) -> list[str]:
    """Every number in ``text``, in order, as canonical text (a clock time as it is written)."""
    return [
        v if isinstance(v, str) else canonical(v)
        for m in _NUMBER.finditer(text)
        if (v := _value(m)) is not None
    ]


def normalize_number(s: str) -> str | None:
    """Canonical text of the first number in ``s``: '$1,200.00' -> '1200', '-3.50' -> '-3.5'."""
    found = numbers(s.replace("%", ""))
    return found[0] if found else None


_STATEMENT = re.compile(r"\banswer\s*(?:is|:|=)", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """mdmctl's rule: the first number (or number in words) after the first '####'; else the
    number of the last answer statement ('the answer is 18', so a check after it is not read);
    else the last number in the text."""
    if "####" in text:
        after = text.split("####", 1)[1]
        found = numbers(after) or word_number(after)
        if found:
            return found[0]
    for m in reversed(list(_STATEMENT.finditer(text))):
        found = numbers(text[m.end() :])
        if found:
            return found[0]
    found = numbers(text)
    return found[-1] if found else None


_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split()
)}  # fmt: skip
_TENS = {w: 10 * i for i, w in enumerate(
    "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_WORD = re.compile(r"[a-z]+")


def word_number(text: str) -> list[str]:
    """The number written in words at the start of ``text`` ('twelve', 'one hundred and five',
    'twenty-five'), as canonical text; [] when ``text`` does not start with one."""
    total, part, seen = 0, 0, False
    for w in _WORD.findall(text.strip().lower()[:80]):
        if w in _UNITS or w in _TENS:
            part += _UNITS.get(w, _TENS.get(w, 0))
        elif w == "hundred" and seen:
            part *= 100
        elif w in _SCALES and seen:
            total, part = total + part * _SCALES[w], 0
        elif w == "and" and seen:
            continue
        else:
            break
        seen = True
    return [str(total + part)] if seen else []


# --- SMDM's rule -------------------------------------------------------------------------------
_SMDM_MARKER = re.compile(r"#### (.*)$")  # evaluate_gsm8k.py: findall, the last match
# The Minerva normalisation (Lewkowycz et al. 2022) as SMDM's math_normalization.py applies it.
_SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), ("\\%", "%"), (" ", ""),
    ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]  # fmt: skip
_REMOVED = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
    "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots",
]  # fmt: skip


def smdm_normalize(answer: str) -> str:
    """SMDM's ``normalize_final_answer``: the text after the last '=', units and TeX removed."""
    answer = answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in _REMOVED:
        answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for macro in ("text", "textbf", "overline"):
        answer = re.sub(r"(\\" + macro + r"\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


_PLAIN = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)|[-+]?\d+/\d+|\\frac\{-?\d+\}\{\d+\}")


def _exact(s: str) -> Fraction | None:
    """The value of a plain number as parse_latex reads it ('-3', '2.50', '1/2', '\\frac{1}{2}')."""
    if not _PLAIN.fullmatch(s):
        return None
    if s.startswith("\\frac"):
        num, den = re.findall(r"-?\d+", s)
        return Fraction(int(num), int(den)) if int(den) else None
    try:
        return Fraction(s.rstrip(".") or "0")
    except (ValueError, ZeroDivisionError):
        return None


def smdm_correct(text: str, target: str) -> bool:
    """SMDM's verdict on a generation against the reference's final answer text."""
    found = _SMDM_MARKER.findall(text)
    pred, ref = smdm_normalize(found[-1] if found else ""), smdm_normalize(target)
    a, b = _exact(pred), _exact(ref)
    return a == b if a is not None and b is not None else pred == ref
