"""Fields out of a classic engine's OCR: labels found in the recognised lines, values beside or below.

For each field, its labels (the template's, plus the engine's hints) are looked for in every line.
Where labels overlap the longest wins ("Due date" over "Date", "Итого без НДС" over "Итого"). The
value is looked for in the text after the label up to the next label on that line; failing that,
in the line to its right on the same row (label and value columns), then in the line just below
it (label above value). A neighbour line counts only when it holds the value and nothing else that
looks like another value. Labels and text are compared with case, "ё", and Latin/Cyrillic look-alike
letters folded (OCR mixes the two scripts), so "Cчёт" with a Latin C still matches "Счёт".
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from models.contract import PageResult
from utils.extraction.normalise import Found, find_value, normalise
from utils.extraction.result import ExtractedField
from utils.extraction.templates import Template, TemplateField

Box = tuple[float, float, float, float]

# One character each way, so positions in the folded text are positions in the original.
_LOOKALIKES = str.maketrans({"а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
                             "т": "t", "у": "y", "х": "x"})


def _base(ch: str) -> str:
    """A letter without its accent ("é" -> "e", "ё" -> "е", "й" -> "и"): OCR adds and drops them."""
    lowered = ch.lower()
    if len(lowered) != 1:
        return ch
    return unicodedata.normalize("NFD", lowered)[0] if not lowered.isascii() else lowered


def fold(text: str) -> str:
    """Lower case, accents dropped, look-alike Cyrillic letters as Latin ones; as long as `text`."""
    return "".join(_base(ch) for ch in text).translate(_LOOKALIKES)


# How OCR reads "№": N°, Nº, No, No., Ne, N2, Ns, #.
_NUMERO = r"(?:№|n[o0°ºe2s]\.?|#)"
_DASH = r"\s*[-‐‑–—]?\s*"


def label_regex(label: str) -> str:
    """A label as a pattern over folded text: inner spaces and dots optional, dashes and "№" as OCR
    reads them; never the middle of a word, and "1." never the start of "1.5"."""
    label = label.strip()
    parts = []
    for position, ch in enumerate(fold(label)):
        if ch == " ":
            parts.append(r"[\s.,:]*")
        elif ch == "." and position < len(label) - 1:
            parts.append(r"\.?")
        elif ch == "-":
            parts.append(_DASH)
        elif ch == "№":
            parts.append(r"\s*" + _NUMERO)
        else:
            parts.append(re.escape(ch))
    before = r"(?<!\w)" if re.match(r"\w", label) else ""
    if label.endswith("№"):
        after = r"(?![^\W\d_])"  # "№145": digits may touch it
    elif label.endswith("."):
        after = r"(?!\d)"
    elif re.search(r"\w$", label):
        after = r"(?!\w)"
    else:
        after = ""
    return before + "".join(parts) + after


@dataclass(frozen=True)
class Line:
    page: int
    text: str
    bbox: Box


def lines_of(result: PageResult, page: int) -> list[Line]:
    """The recognised lines of one page with their boxes; the plain text's lines when there are no boxes."""
    lines = [Line(page, block.text, block.bbox) for block in result.blocks if block.text.strip()]
    if lines:
        return lines
    return [Line(page, text, (0.0, 0.0, 0.0, 0.0)) for text in result.text.splitlines() if text.strip()]


@dataclass(frozen=True)
class _Label:
    field: str | None  # None: an ignored phrase (it only ends the segment of the label before it)
    start: int
    end: int


@dataclass(frozen=True)
class _Compiled:
    patterns: tuple[tuple[str | None, re.Pattern[str]], ...]
    values: dict[str, re.Pattern[str] | None]


def _compile(template: Template, kind: str, model: str) -> _Compiled:
    patterns: list[tuple[str | None, re.Pattern[str]]] = []
    values: dict[str, re.Pattern[str] | None] = {}
    for name, spec in template.fields.items():
        hint = spec.hint(kind, model)
        for label in dict.fromkeys(spec.labels + hint.labels):
            patterns.append((name, re.compile(label_regex(label))))
        values[name] = re.compile(hint.pattern) if hint.pattern else None
    for phrase in template.ignore:
        patterns.append((None, re.compile(label_regex(phrase))))
    return _Compiled(tuple(patterns), values)


def _labels(line: Line, compiled: _Compiled) -> list[_Label]:
    """The labels in a line, longest first where they overlap, in reading order."""
    folded = fold(line.text)
    found = [_Label(name, m.start(), m.end()) for name, pattern in compiled.patterns
             for m in pattern.finditer(folded) if m.end() > m.start()]
    found.sort(key=lambda label: (label.start, -(label.end - label.start)))
    kept: list[_Label] = []
    for label in found:
        if not kept or label.start >= kept[-1].end:
            kept.append(label)
    return kept


def _span_box(line: Line, start: int, end: int) -> Box:
    """The part of a line's box that characters start..end cover, assuming even character widths."""
    x1, y1, x2, y2 = line.bbox
    length = max(len(line.text), 1)
    width = x2 - x1
    return (x1 + width * start / length, y1, x1 + width * end / length, y2)


def _height(box: Box) -> float:
    return max(box[3] - box[1], 1.0)


def _alone(kind: str, found: Found, text: str, pattern: re.Pattern[str] | None) -> bool:
    """A neighbour line counts only when the value is all it holds (bar punctuation and a currency)."""
    rest = (text[:found.start] + " " + text[found.end:]).strip(" \t:;,.-–—|")
    if kind == "string":
        return not rest or (pattern is not None and not re.search(r"\d", rest) and len(rest) <= 3)
    return not re.search(r"\d", rest) and len(rest) <= 12


class _Page:
    """The lines of one page with their labels, for looking at neighbours."""

    def __init__(self, lines: Sequence[Line], compiled: _Compiled):
        self.lines = list(lines)
        self.labels = [_labels(line, compiled) for line in self.lines]

    def unlabelled_prefix(self, index: int) -> str:
        """The text of a line before its first label (the whole line when it has none)."""
        labels = self.labels[index]
        return self.lines[index].text[:labels[0].start] if labels else self.lines[index].text

    def right_of(self, index: int, box: Box) -> list[int]:
        """Lines on the same row that start right of `box`, nearest first."""
        _, y1, x2, y2 = box
        row = []
        for other, line in enumerate(self.lines):
            if other == index or line.bbox[0] < x2 - 2:
                continue
            overlap = min(y2, line.bbox[3]) - max(y1, line.bbox[1])
            if overlap >= 0.5 * min(y2 - y1, _height(line.bbox)):
                row.append(other)
        return sorted(row, key=lambda other: self.lines[other].bbox[0])

    def below(self, index: int, box: Box) -> list[int]:
        """The nearest line under `box` that overlaps it horizontally, when it is close."""
        x1, _, x2, y2 = box
        line_height = _height(self.lines[index].bbox)
        under = []
        for other, line in enumerate(self.lines):
            if other == index or line.bbox[1] < y2 - 0.3 * line_height:
                continue
            if line.bbox[1] - y2 > 1.6 * line_height:
                continue
            if min(x2, line.bbox[2]) - max(x1, line.bbox[0]) <= 0:
                continue
            under.append(other)
        under.sort(key=lambda other: self.lines[other].bbox[1])
        return under[:1]


def _column(line: Line, labels: list[_Label], left: float, right: float) -> tuple[str, int] | None:
    """The words of a line whose middles lie between x = left and right, with the offset of the
    first; None when there are none or a label is among them (that is another field's column)."""
    x1, _, x2, _ = line.bbox
    length = max(len(line.text), 1)
    words = [m for m in re.finditer(r"\S+", line.text)
             if left <= x1 + (x2 - x1) * (m.start() + m.end()) / 2 / length < right]
    if not words:
        return None
    start, end = words[0].start(), words[-1].end()
    if any(label.start < end and label.end > start for label in labels):
        return None
    return line.text[start:end], start


def _value_near(page: _Page, index: int, position: int, spec: TemplateField,
                pattern: re.Pattern[str] | None) -> ExtractedField | None:
    line = page.lines[index]
    labels = page.labels[index]
    label = labels[position]
    following = labels[position + 1] if position + 1 < len(labels) else None
    end = following.start if following is not None else len(line.text)
    segment = line.text[label.end:end]
    found = find_value(spec.type, segment, pattern=pattern, order=spec.date_order)
    if found is not None:
        start = label.end + found.start
        return ExtractedField(value=found.value, source=line.text[start:label.end + found.end].strip(),
                              page=line.page, bbox=_span_box(line, start, label.end + found.end))
    if segment.strip(" \t:;.-–—|#№"):
        return None  # something else follows the label on its line: not this field's value
    label_box = _span_box(line, label.start, label.end)
    # Beside the label: the text of the line to its right, before any label of its own.
    candidates = [(other, page.unlabelled_prefix(other), 0) for other in page.right_of(index, label_box)]
    # Under the label: the words of the next line in this label's column, which runs from the end
    # of the label before it to the start of the label after it ("Invoice #   Date   Due date").
    left = _span_box(line, labels[position - 1].end, labels[position - 1].end)[0] if position else float("-inf")
    right = _span_box(line, following.start, following.start)[0] if following is not None else float("inf")
    for other in page.below(index, label_box):
        column = _column(page.lines[other], page.labels[other], left, right)
        if column is not None:
            candidates.append((other, *column))
    for other, text, offset in candidates:
        found = find_value(spec.type, text, pattern=pattern, order=spec.date_order)
        if found is not None and _alone(spec.type, found, text, pattern):
            neighbour = page.lines[other]
            return ExtractedField(value=found.value, source=text[found.start:found.end].strip(), page=neighbour.page,
                                  bbox=_span_box(neighbour, offset + found.start, offset + found.end))
    return None


def find_fields(template: Template, lines: Iterable[Line], kind: str = "classic",
                model: str = "") -> dict[str, ExtractedField]:
    """Every template field found in the lines (of one or more pages); absent fields have value None."""
    compiled = _compile(template, kind, model)
    by_page: dict[int, list[Line]] = {}
    for line in lines:
        by_page.setdefault(line.page, []).append(line)
    pages = {number: _Page(page_lines, compiled) for number, page_lines in sorted(by_page.items())}
    # Every label occurrence of every field, in reading order: page, then top to bottom, left to right.
    occurrences: dict[str, list[tuple[tuple[int, float, float, int], int, int, int]]] = {}
    for number, page in pages.items():
        for index, labels in enumerate(page.labels):
            box = page.lines[index].bbox
            for position, label in enumerate(labels):
                if label.field is not None:
                    order = (number, box[1], box[0], label.start)
                    occurrences.setdefault(label.field, []).append((order, number, index, position))
    fields: dict[str, ExtractedField] = {}
    for name, spec in template.fields.items():
        fields[name] = ExtractedField()
        candidates = sorted(occurrences.get(name, []))
        if spec.pick == "last":
            candidates.reverse()
        for _, number, index, position in candidates:
            value = _value_near(pages[number], index, position, spec, compiled.values[name])
            if value is not None:
                fields[name] = _typed(spec, value)
                break
    return fields


def _typed(spec: TemplateField, field: ExtractedField) -> ExtractedField:
    """String values cleaned like a person's entry would be; typed values are already normalised."""
    if spec.type == "string":
        return field.model_copy(update={"value": normalise("string", field.value)})
    return field
