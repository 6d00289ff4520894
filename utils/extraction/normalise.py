"""Field values as data: dates to ISO 8601, amounts to decimal numbers, integers, clean strings.

`find_*` locate a value of a type inside a stretch of OCR text (returning its span, so the caller
can place its box); `normalise` turns a value a person or a model wrote into the field's type.
Both read Russian and English: month names in every case ("март", "марта", "Mar", "March"),
numeric dates, and amounts written with spaces, commas or dots as separators.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Literal

FieldType = Literal["string", "date", "amount", "integer"]
FIELD_TYPES: tuple[str, ...] = ("string", "date", "amount", "integer")
DateOrder = Literal["dmy", "mdy"]  # how a numeric date such as 03/04/2024 is read

# Month stems: a word is a month when it starts with one of these (after case folding and ё -> е).
# Russian stems cover every case: "март", "марта", "мар."; "май"/"мая" share "ма" + й/я.
_MONTH_STEMS: tuple[tuple[str, int], ...] = (
    ("январ", 1), ("янв", 1), ("феврал", 2), ("фев", 2), ("март", 3), ("мар", 3), ("апрел", 4), ("апр", 4),
    ("май", 5), ("мая", 5), ("июн", 6), ("июл", 7), ("август", 8), ("авг", 8), ("сентябр", 9), ("сен", 9),
    ("октябр", 10), ("окт", 10), ("ноябр", 11), ("ноя", 11), ("декабр", 12), ("дек", 12),
    ("january", 1), ("jan", 1), ("february", 2), ("feb", 2), ("march", 3), ("mar", 3), ("april", 4),
    ("apr", 4), ("may", 5), ("june", 6), ("jun", 6), ("july", 7), ("jul", 7), ("august", 8), ("aug", 8),
    ("september", 9), ("sept", 9), ("sep", 9), ("october", 10), ("oct", 10), ("november", 11), ("nov", 11),
    ("december", 12), ("dec", 12),
)
_RU_MONTH = re.compile(r"^(январ|феврал|март|апрел|ма[йя]|июн|июл|август|сентябр|октябр|ноябр|декабр)[а-я]*$|"
                       r"^(янв|фев|мар|апр|июн|июл|авг|сент?|окт|ноя|дек)$")
_EN_MONTH = re.compile(r"^(january|february|march|april|may|june|july|august|september|october|november|december|"
                       r"jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)$")

_TO_LATIN = str.maketrans("аеорсухкмтв", "aeopcyxkmtb")
_TO_CYRILLIC = str.maketrans("aeopcyxkmtb", "аеорсухкмтв")
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2212"
_SPACES = "\u00a0\u2007\u2009\u202f"
_WORD = r"[^\W\d_]"


def _fold(text: str) -> str:
    return text.casefold().replace("ё", "е")


def month_number(word: str) -> int | None:
    """1-12 for a month name or its abbreviation in Russian or English (any case, any grammatical case)."""
    word = _fold(word).rstrip(".")
    # OCR writes a Latin word with a Cyrillic letter now and then ("Мау"), and the other way round.
    for candidate in (word, word.translate(_TO_LATIN), word.translate(_TO_CYRILLIC)):
        if _RU_MONTH.match(candidate) or _EN_MONTH.match(candidate):
            return next(number for stem, number in _MONTH_STEMS if candidate.startswith(stem))
    return None


@dataclass(frozen=True)
class Found:
    """A value found in a text: the normalised value and the span it was read from."""

    value: str | float | int
    start: int
    end: int


def _year(text: str) -> int:
    year = int(text)
    return year + 2000 if len(text) == 2 else year


def _iso(year: int, month: int, day: int) -> str | None:
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def _numeric_order(a: int, b: int, order: DateOrder) -> tuple[int, int]:
    """(day, month) of a numeric date a/b/year: the written order, unless only the other one is a date."""
    if order == "mdy":
        return (b, a) if a <= 12 or b > 12 else (a, b)
    return (a, b) if b <= 12 or a > 12 else (b, a)


# Each pattern's groups are named; textual months go through month_number.
_DATE_PATTERNS = (
    re.compile(r"(?<!\d)(?P<y>\d{4})[-./](?P<m>\d{1,2})[-./](?P<d>\d{1,2})(?!\d)"),
    re.compile(r"(?<!\d)(?P<a>\d{1,2})\s?(?P<sep>[./-])\s?(?P<b>\d{1,2})\s?(?P=sep)\s?(?P<y>\d{4}|\d{2})(?![\d])"),
    # OCR reads a dot as a comma, a colon or a semicolon now and then: "30,09.2024", "17:04;2024"
    # (four-digit years only, so that a time of day is no date)
    re.compile(r"(?<![\d,.:;])(?P<a>\d{1,2})\s?[.,:;]\s?(?P<b>\d{1,2})\s?[.,:;]\s?(?P<y>\d{4})(?![\d])"),
    # «12» марта 2024 г., where OCR often splits the quoted day ("«1 8»") and reads specks as
    # punctuation around the month ("«08».марта 2019", "«02» ноября .2024")
    re.compile(r"[«\"“„]\s?(?P<qd>\d\s?\d?)\s?[»\"”][.,]?\s*(?P<mon>" + _WORD + r"{3,})\.?,?\s*[.,`'’]?"
               r"(?P<y>\d{4})(?!\d)"),
    # 12 марта 2024 г. · 12-Mar-2024 · 1st of March, 2024 · 2. January 2024
    re.compile(r"(?<!\d)(?P<d>\d{1,2})(?:st|nd|rd|th|\.)?\s*[»\"'”]?\s*(?:of\s+)?[-\s]?\s*(?P<mon>" + _WORD
               + r"{3,})\.?,?[-\s]?\s*[.,`'’]?(?P<y>\d{4})(?!\d)", re.IGNORECASE),
    # March 12, 2024 · Mar. 12 2024 · June 29,. 2026 · May- 13,2021 (OCR's stray dots and dashes)
    re.compile(r"(?<!" + _WORD + r")(?P<mon>" + _WORD + r"{3,})[.-]?\s+[.,]?(?P<d>\d{1,2})(?:st|nd|rd|th)?[,.]{0,2}\s*"
               r"(?P<y>\d{4})(?!\d)", re.IGNORECASE),
)


def find_date(text: str, order: DateOrder = "dmy") -> Found | None:
    """The earliest date written in `text`, as YYYY-MM-DD."""
    best: Found | None = None
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            groups = match.groupdict()
            if groups.get("mon"):
                month = month_number(groups["mon"])
                day = int((groups.get("d") or groups["qd"]).replace(" ", ""))
                iso = _iso(int(groups["y"]), month, day) if month else None
            elif groups.get("a"):
                day, month = _numeric_order(int(groups["a"]), int(groups["b"]), order)
                iso = _iso(_year(groups["y"]), month, day)
            else:
                iso = _iso(int(groups["y"]), int(groups["m"]), int(groups["d"]))
            if iso is not None:
                if best is None or match.start() < best.start:
                    best = Found(iso, match.start(), match.end())
                break
    return best


# An amount as documents write it: digit groups split by spaces, dots, commas or apostrophes, an
# optional decimal part of one or two digits; a minus sign only when it touches the digits (a dash
# after a label, "Total - 1 234,56", is punctuation). Never part of a longer number such as a date.
# The decimal part keeps OCR's stray space beside the separator when two digits follow ("37933, 72").
# OCR reads a space between groups as a speck now and then ("290:775.65", "39. 026.47") and a decimal
# comma as a semicolon ("21217;92"): groups of exactly three digits and two decimals tell them apart.
_DECIMALS = r"(?:(?: (?=[.,;] ?\d\d(?!\d)))?(?:[.,]|;(?=\d\d(?!\d)))(?: (?=\d\d(?!\d)))?\d{1,2})?"
_AMOUNT = re.compile(
    r"(?<![\d.,])(?P<sign>(?<![^\s:(])[-\u2212](?=\d))?"
    r"(?P<num>\d{1,3}(?P<group>[ " + _SPACES + r".,'’:]|[.:] )\d{3}(?:(?P=group)\d{3})*" + _DECIMALS
    + r"|\d+" + _DECIMALS + r")(?![\d]|[.,]\d)")


def _amount_value(number: str) -> Decimal:
    digits = re.sub(r"[\s'’:]", "", number).replace(";", ",")
    last = max(digits.rfind("."), digits.rfind(","))
    decimal: int | None = None
    if last >= 0 and len(digits) - last - 1 <= 2:  # "1 234,56", "1.234,5", even "67.973.03"
        decimal = last
    elif "." in digits and "," in digits:  # both kinds: the last one ("1,234.567")
        decimal = last
    # else none, or thousands only: "1,234", "1.234.567"
    if decimal is None:
        return Decimal(re.sub(r"[.,]", "", digits))
    return Decimal(f"{re.sub(r'[.,]', '', digits[:decimal])}.{digits[decimal + 1:]}")


def find_amounts(text: str) -> list[Found]:
    """Every amount written in `text`, in order, as floats."""
    found = []
    for match in _AMOUNT.finditer(text):
        value = _amount_value(match.group("num"))
        found.append(Found(float(-value if match.group("sign") else value), match.start(), match.end()))
    return found


def find_amount(text: str) -> Found | None:
    """The amount a label points at: the last one with a decimal part, else the last one.

    "Total (3 items): 1 234,56 RUB" -> 1234.56: a count before the amount is not the amount.
    """
    found = find_amounts(text)
    with_cents = [f for f in found if re.search(r"[.,] ?\d{1,2}$", text[f.start:f.end])]
    chosen = with_cents or found
    return chosen[-1] if chosen else None


_INTEGER = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:[ " + _SPACES + r"]\d{3})+|\d+)(?![\d]|[.,]\d)")


def find_integer(text: str) -> Found | None:
    match = _INTEGER.search(text)
    if match is None:
        return None
    return Found(int(re.sub(r"\D", "", match.group())), match.start(), match.end())


_LEADING = re.compile(r"^[\s:;#№=\-" + _DASHES + r"]+")
_TRAILING = re.compile(r"[\s:;,.\-" + _DASHES + r"]+$")


def find_string(text: str, pattern: re.Pattern[str] | None = None) -> Found | None:
    """The value a label points at: the pattern's first match (its first group when it has one),
    or the text without leading separators (": ", "№", "#") and trailing punctuation."""
    if pattern is not None:
        match = pattern.search(text)
        if match is None:
            return None
        group = 1 if match.groups() else 0
        return Found(match.group(group), match.start(group), match.end(group)) if match.group(group) else None
    lead = _LEADING.match(text)
    start = lead.end() if lead else 0
    trail = _TRAILING.search(text, start)
    end = trail.start() if trail else len(text)
    return Found(text[start:end], start, end) if end > start else None


def find_value(kind: str, text: str, *, pattern: re.Pattern[str] | None = None,
               order: DateOrder = "dmy") -> Found | None:
    """A value of this field type in `text`, or None."""
    if kind == "date":
        return find_date(text, order)
    if kind == "amount":
        return find_amount(text)
    if kind == "integer":
        return find_integer(text)
    return find_string(text, pattern)


class NotAValue(ValueError):
    """A value that does not fit its field's type; the message is the one line a user reads."""


def _only(found: Found | None, text: str) -> bool:
    """The value was found and no other digits are around it ("1 234,56 руб." yes, "12 of 15" no)."""
    return found is not None and not re.search(r"\d", text[:found.start] + text[found.end:])


def normalise(kind: str, value: object, order: DateOrder = "dmy") -> str | float | int | None:
    """A value a person or a model gave, in the field's type; None when empty. Raises NotAValue."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (dict, list, tuple, bool)):
        raise NotAValue(f"{value!r} is not a single value")
    if kind == "string":
        return str(value).strip()
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if re.fullmatch(r"\d{1,3}(?:[ " + _SPACES + r"]\d{3})+|\d+", text):
            return int(re.sub(r"\D", "", text))
        raise NotAValue(f"{value!r} is not a whole number")
    if kind == "amount":
        if isinstance(value, (int, float)):
            return round(float(value), 2)
        text = str(value)
        found = find_amount(text)
        if found is not None and _only(found, text):
            return found.value
        raise NotAValue(f"{value!r} is not an amount")
    if kind == "date":
        text = str(value)
        found = find_date(text, order)
        if found is not None and _only(found, text):
            return found.value
        raise NotAValue(f"{value!r} is not a date")
    raise NotAValue(f"unknown field type {kind!r}")
