"""GSM8K grading: the final number of a generation, compared exactly with the reference.

Extraction: the first number after the first ``####`` (stage 2 writes the marker and the answer;
anything a model repeats after it does not count); without a marker, the last number in the text.
Numbers are parsed to exact fractions, so ``$1,200.00``, ``1200`` and ``1200.0`` agree, ``1/2`` is
0.5, ``3 1/2`` is 3.5, and very large values never collide (no floats anywhere). A minus sign
counts only when it is attached to the number and does not follow a word or a number: ``10-15``
is a range, ``- 12`` a bullet; the Unicode minus ``−`` is a minus. Thousands separators are commas
between groups of exactly three digits: ``1,2,3`` is not 123.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_NUMBER = re.compile(
    r"(?P<sign>(?<![\w.])[-−+])?[$€£]?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+]?\d+(?![\w.]))?"
    r"(?:\s+(?P<mixed_num>\d+)/(?P<mixed_den>\d+)|/(?P<den>\d+))?"
)


def _value(m: re.Match[str]) -> Fraction | None:
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
    """Every number in ``text``, in order, as canonical text."""
    return [canonical(v) for m in _NUMBER.finditer(text) if (v := _value(m)) is not None]


def normalize_number(s: str) -> str | None:
    """Canonical text of the first number in ``s``: '$1,200.00' -> '1200', '-3.50' -> '-3.5'."""
    found = numbers(s.replace("%", ""))
    return found[0] if found else None


def extract_answer(text: str) -> str | None:
    """The first number after the first '####', else the last number in the text."""
    if "####" in text:
        found = numbers(text.split("####", 1)[1])
        if found:
            return found[0]
    found = numbers(text)
    return found[-1] if found else None
