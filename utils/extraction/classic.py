"""Fields out of a classic engine's OCR: labels found in the recognised lines, values beside or below.

For each field, its labels (the template's, plus the engine's hints) are looked for in every line.
Where labels overlap the longest wins ("Due date" over "Date", "Итого без НДС" over "Итого"). The
value is looked for in the text after the label up to the next label on that line; failing that,
in the line to its right on the same row (label and value columns), then in the line just below
it (label above value). A neighbour line counts only when it holds the value and nothing else that
looks like another value. Labels and text are compared with case, "ё", and Latin/Cyrillic look-alike
letters folded (OCR mixes the two scripts), so "Cчёт" with a Latin C still matches "Счёт".

Words are placed by the engine's own word boxes where it gives them (Tesseract), else from the ink
of the page. `field_lines` also says which lines each value rests on and whether the reading looks
unsure; `line_sheet` and `read_back` set such lines alone on a sheet for the engine to read again
(utils/extraction/extract.py decides which reading to keep; this module runs no engine).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.contract import Block, PageResult
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
    if label == "№":  # alone, only the sign itself: "No" and "#" are everywhere in English text
        return r"(?<![^\W\d_])(?:№|n[°º])(?![^\W\d_])"
    parts = []
    for position, ch in enumerate(fold(label)):
        if ch == " ":
            parts.append(r"[\s.,:;'‘’`\"-]*")
        elif ch == "." and position < len(label) - 1:
            parts.append(r"\.?")
        elif ch == "-":
            parts.append(_DASH)
        elif ch == "№":
            parts.append(r"\s*" + _NUMERO)
        else:
            parts.append(re.escape(ch))
    before = r"(?<!\w)" if re.match(r"[\w№]", label) else ""
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
    # (x1, x2) of each whitespace-separated word, when the page image showed them.
    words: tuple[tuple[float, float], ...] | None = None
    score: float | None = None  # the engine's confidence in the line's reading, 0-1, when it gives one
    weakest: float | None = None  # its confidence in the line's least sure word (else in the line), 0-1


def _otsu(pixels: np.ndarray) -> float:
    """The grey level that best splits ink from paper in this crop."""
    histogram = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    total = histogram.sum()
    levels = np.arange(256)
    weight = np.cumsum(histogram)
    mean = np.cumsum(histogram * levels)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1e-9)
    return float(np.argmax(between))


def _ink_runs(gray: Image.Image, box: Box) -> list[tuple[int, int]]:
    """Runs of page columns holding ink in the middle band of `box`, in page x. The band leaves out
    the top and bottom of the box, where the lines above and below reach in."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    if x2 <= x1 or y2 - y1 < 3:
        return []
    margin = (y2 - y1) // 5
    y1, y2 = y1 + margin, y2 - margin
    pixels = np.asarray(gray.crop((x1, y1, x2, y2)))
    column_ink = (pixels < _otsu(pixels)).sum(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], (column_ink > 0).astype(np.int8), [0]))))
    # A run with less ink than a full stop is a speck of noise, not a character.
    return [(x1 + int(a), x1 + int(b)) for a, b in zip(edges[::2], edges[1::2])
            if column_ink[a:b].sum() >= max(4, 0.3 * (y2 - y1))]


def _split(lengths: list[int], widths: list[int]) -> list[int]:
    """How many words go into each chunk so that the chunks' character counts best match their
    widths in pixels (least squares; every chunk gets at least one word)."""
    n, k = len(lengths), len(widths)
    per_char = sum(widths) / max(sum(lengths) + n - k, 1)
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)

    def cost(chunk: int, first: int, last: int) -> float:  # words first..last-1 in this chunk
        chars = prefix[last] - prefix[first] + (last - first - 1)
        return (chars * per_char - widths[chunk]) ** 2

    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    choice = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for chunk in range(1, k + 1):
        for last in range(chunk, n - (k - chunk) + 1):
            for first in range(chunk - 1, last):
                total = best[chunk - 1][first] + cost(chunk - 1, first, last)
                if total < best[chunk][last]:
                    best[chunk][last], choice[chunk][last] = total, first
    counts, last = [], n
    for chunk in range(k, 0, -1):
        first = choice[chunk][last]
        counts.append(last - first)
        last = first
    return counts[::-1]


def word_spans(gray: Image.Image, box: Box, text: str, line_height: float | None = None
               ) -> tuple[tuple[float, float], ...] | None:
    """Where each whitespace-separated word of a line lies along x, from the ink in its box.

    OCR lines come with one box, but label and value columns need the words' places. The ink
    falls into chunks where the blank between two runs of ink is wider than about three spaces
    (between the columns of a table or a form); the words are shared among the chunks so that
    character counts match widths, and placed in proportion to their characters inside their
    chunk. `line_height` (the page's usual line box height) sets how wide a column gap is; a line
    of digits alone has a lower box than its font size suggests. None when the box shows no ink.
    """
    words = text.split()
    runs = _ink_runs(gray, box)
    if not words or not runs:
        return None
    height = max(box[3] - box[1], line_height or 0.0)
    chunks = [list(runs[0])]
    for a, b in runs[1:]:
        if a - chunks[-1][1] > 0.7 * height:
            chunks.append([a, b])
        else:
            chunks[-1][1] = b
    while len(chunks) > len(words):
        gaps = [chunks[i + 1][0] - chunks[i][1] for i in range(len(chunks) - 1)]
        narrowest = gaps.index(min(gaps))
        chunks[narrowest:narrowest + 2] = [[chunks[narrowest][0], chunks[narrowest + 1][1]]]
    counts = _split([len(w) for w in words], [b - a for a, b in chunks])
    spans: list[tuple[float, float]] = []
    index = 0
    for (left, right), count in zip(chunks, counts):
        group = words[index:index + count]
        index += count
        chars = sum(map(len, group)) + len(group) - 1
        offset = 0
        for word in group:
            spans.append((left + (right - left) * offset / chars, left + (right - left) * (offset + len(word)) / chars))
            offset += len(word) + 1
    return tuple(spans)


def engine_word_spans(block: Block) -> tuple[tuple[float, float], ...] | None:
    """Where each whitespace-separated word of a line lies along x, from the engine's own word boxes;
    a box the engine gave to a few words at once (a word read again as two) is shared among them in
    proportion to their characters. None when the engine gave no word boxes, or words that do not
    make up the line's text."""
    if not block.words or " ".join(word.text for word in block.words).split() != block.text.split():
        return None
    spans: list[tuple[float, float]] = []
    for word in block.words:
        parts = word.text.split()
        chars = sum(map(len, parts)) + len(parts) - 1
        left, right = word.bbox[0], word.bbox[2]
        offset = 0
        for part in parts:
            spans.append((left + (right - left) * offset / chars, left + (right - left) * (offset + len(part)) / chars))
            offset += len(part) + 1
    return tuple(spans)


def lines_of(result: PageResult, page: int, image: Image.Image | None = None) -> list[Line]:
    """The recognised lines of one page with their boxes and their words' places: the engine's word
    boxes where it gives them, else estimated from the ink of the page image when it is given; the
    plain text's lines when the engine gave no boxes."""
    gray = image.convert("L") if image is not None else None
    blocks = [block for block in result.blocks if block.text.strip()]
    usual = float(np.median([block.bbox[3] - block.bbox[1] for block in blocks])) if blocks else None
    lines = []
    for block in blocks:
        words = engine_word_spans(block)
        if words is None and gray is not None:
            words = word_spans(gray, block.bbox, block.text, usual)
        scores = [word.score for word in block.words if word.score is not None]
        lines.append(Line(page, block.text, block.bbox, words, block.score, min(scores) if scores else block.score))
    if lines:
        return lines
    return [Line(page, text, (0.0, 0.0, 0.0, 0.0)) for text in result.text.splitlines() if text.strip()]


@dataclass(frozen=True)
class SheetRow:
    line: Line  # the line as first read
    cut: tuple[int, int, int, int]  # the part of the page cut out for it
    top: int  # where the cut lies on the sheet (its left edge is at the sheet's margin)
    scale: float  # sheet pixels per page pixel


@dataclass(frozen=True)
class LineSheet:
    """Lines cut out of their page, each at a few sizes on rows of a blank sheet, for reading again."""

    image: Image.Image
    rows: tuple[SheetRow, ...]
    margin: int


# Line heights in pixels a line is set at: Tesseract reads letters of 20-30 pixels best, but which size
# reads a given blurred or noisy line right varies, so it is read at a few.
SHEET_HEIGHTS = (32, 48, 64)


def line_sheet(image: Image.Image, lines: Sequence[Line], heights: Sequence[int] = SHEET_HEIGHTS) -> LineSheet:
    """Each line's box cut out of the page and set, once per height, on a row of its own: scaled so that
    the box is at least that high, with a blank as high as the tallest row between rows.

    Read in the page, a line shares the engine's view with its neighbours: a label above a value, a
    column's edge, a stamp. Alone, and on a plain background, its few characters get the attention. The
    sheet's paper is the cuts' own paper grey, so no cut has an edge of its own."""
    gray = image.convert("L")
    cuts: list[tuple[Line, tuple[int, int, int, int], Image.Image, float]] = []
    papers: list[float] = []
    for line in lines:
        x1, y1, x2, y2 = line.bbox
        box_height = max(y2 - y1, 1.0)
        cut = (max(0, int(x1 - 0.3 * box_height)), max(0, int(y1 - 0.08 * box_height)),
               min(gray.width, int(x2 + 0.3 * box_height) + 1), min(gray.height, int(y2 + 0.08 * box_height) + 1))
        if cut[2] <= cut[0] or cut[3] <= cut[1]:
            continue
        piece = gray.crop(cut)
        papers.append(float(np.percentile(np.asarray(piece), 90)))
        for height in heights:
            scale = max(1.0, height / box_height)
            sized = piece.resize((round(piece.width * scale), round(piece.height * scale)),
                                 Image.Resampling.LANCZOS) if scale > 1.0 else piece
            cuts.append((line, cut, sized, scale))
    margin = max(heights, default=48)
    width = max((piece.width for _, _, piece, _ in cuts), default=1) + 2 * margin
    total = margin + sum(piece.height + margin for _, _, piece, _ in cuts) + margin
    sheet = Image.new("L", (width, total), int(np.median(papers)) if papers else 255)
    rows = []
    top = margin
    for line, cut, piece, scale in cuts:
        sheet.paste(piece, (margin, top))
        rows.append(SheetRow(line, cut, top, scale))
        top += piece.height + margin
    return LineSheet(sheet, tuple(rows), margin)


def read_back(sheet: LineSheet, result: PageResult) -> list[list[Line]]:
    """What the engine read in each row of the sheet (in the order of sheet.rows), in the page's pixels:
    empty where it found nothing. A reading off the row's middle is left out: the tails of the letters
    of a line above or below that came into the cut."""
    again: list[list[Line]] = [[] for _ in sheet.rows]
    for read in lines_of(result, 0, sheet.image):
        middle = (read.bbox[1] + read.bbox[3]) / 2
        number = next((number for number, row in enumerate(sheet.rows)
                       if abs(middle - _row_middle(row)) <= 0.3 * _height(row.line.bbox) * row.scale), None)
        if number is None:
            continue
        row = sheet.rows[number]

        def x(value: float, row: SheetRow = row) -> float:
            return row.cut[0] + (value - sheet.margin) / row.scale

        def y(value: float, row: SheetRow = row) -> float:
            return row.cut[1] + (value - row.top) / row.scale

        words = tuple((x(a), x(b)) for a, b in read.words) if read.words is not None else None
        again[number].append(Line(row.line.page, read.text, (x(read.bbox[0]), y(read.bbox[1]), x(read.bbox[2]),
                                                              y(read.bbox[3])), words, read.score, read.weakest))
    return again


def _row_middle(row: SheetRow) -> float:
    """Where the middle of the row's line lies on the sheet."""
    return row.top + ((row.line.bbox[1] + row.line.bbox[3]) / 2 - row.cut[1]) * row.scale


@dataclass(frozen=True)
class _Label:
    field: str | None  # None: an ignored phrase (it only ends the segment of the label before it)
    start: int
    end: int
    after: str | None = None  # counts only right after a label of this field


@dataclass(frozen=True)
class _Compiled:
    # (field or None for an ignored phrase, the field a label must follow or None, pattern)
    patterns: tuple[tuple[str | None, str | None, re.Pattern[str]], ...]
    values: dict[str, re.Pattern[str] | None]


def _compile(template: Template, kind: str, model: str) -> _Compiled:
    patterns: list[tuple[str | None, str | None, re.Pattern[str]]] = []
    values: dict[str, re.Pattern[str] | None] = {}
    for name, spec in template.fields.items():
        hint = spec.hint(kind, model)
        for label in dict.fromkeys(spec.labels + hint.labels):
            patterns.append((name, None, re.compile(label_regex(label))))
        for before, labels in hint.after.items():
            for label in dict.fromkeys(labels):
                patterns.append((name, before, re.compile(label_regex(label))))
        values[name] = re.compile(hint.pattern) if hint.pattern else None
    for phrase in template.ignore:
        patterns.append((None, None, re.compile(label_regex(phrase))))
    return _Compiled(tuple(patterns), values)


def _labels(line: Line, compiled: _Compiled) -> list[_Label]:
    """The labels in a line, longest first where they overlap, in reading order; a label that must
    follow another field's label and does not is dropped."""
    folded = fold(line.text)
    found = [_Label(name, m.start(), m.end(), after) for name, after, pattern in compiled.patterns
             for m in pattern.finditer(folded) if m.end() > m.start()]
    found.sort(key=lambda label: (label.start, -(label.end - label.start)))
    kept: list[_Label] = []
    for label in found:
        if kept and label.start < kept[-1].end:
            continue
        if label.after is not None and (not kept or kept[-1].field != label.after):
            continue
        kept.append(label)
    return kept


def _worded_labels(line: Line, compiled: _Compiled) -> Counter[str]:
    """The fields whose labels in this line hold letters ("Date", "Счёт №"; not "№" or "#" alone)."""
    folded = fold(line.text)
    return Counter(label.field for label in _labels(line, compiled)
                   if label.field is not None and len(re.findall(r"[^\W\d_]", folded[label.start:label.end])) >= 2)


def labels_kept(template: Template, old: Line, new: Sequence[Line], kind: str = "classic", model: str = "") -> bool:
    """Whether a line's new reading still holds every label with letters its first reading held. A
    sign read in a word ("№1" for "NW1") may go; a word going ("Дата" read as "lata") means the new
    reading lost what the first one had."""
    compiled = _compile(template, kind, model)
    kept: Counter[str] = Counter()
    for line in new:
        kept += _worded_labels(line, compiled)
    return not (_worded_labels(old, compiled) - kept)


def _x_at(line: Line, offset: int, end: bool) -> float:
    """The x of a character offset in a line: inside its word's ink when the words' places are known,
    else in proportion to the line's length."""
    x1, _, x2, _ = line.bbox
    if line.words is not None:
        for (start, stop), (left, right) in zip(((m.start(), m.end()) for m in re.finditer(r"\S+", line.text)),
                                                line.words):
            if (offset < stop) if not end else (offset <= stop):
                if offset <= start:
                    return left
                return left + (right - left) * (offset - start) / max(stop - start, 1)
        return line.words[-1][1] if line.words else x2
    return x1 + (x2 - x1) * offset / max(len(line.text), 1)


def _span_box(line: Line, start: int, end: int) -> Box:
    """The part of a line's box that characters start..end cover."""
    return (_x_at(line, start, end=False), line.bbox[1], _x_at(line, end, end=True), line.bbox[3])


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

    def beside(self, index: int, box: Box, side: str) -> list[int]:
        """Lines on the same row as `box`, wholly to its right (or left), nearest first."""
        x1, y1, x2, y2 = box
        row = []
        for other, line in enumerate(self.lines):
            if other == index or (line.bbox[0] < x2 - 2 if side == "right" else line.bbox[2] > x1 + 2):
                continue
            overlap = min(y2, line.bbox[3]) - max(y1, line.bbox[1])
            if overlap >= 0.4 * min(y2 - y1, _height(line.bbox)):  # a skewed page shifts the row a little
                row.append(other)
        return sorted(row, key=lambda other: self.lines[other].bbox[0], reverse=side == "left")

    def below(self, index: int, box: Box) -> list[int]:
        """The nearest line under `box` that overlaps it horizontally, when it is close. OCR boxes
        of neighbouring lines may overlap a little, so "under" is judged by their middles."""
        x1, y1, x2, y2 = box
        height = _height(box)
        middle = (y1 + y2) / 2
        under = []
        for other, line in enumerate(self.lines):
            if other == index or (line.bbox[1] + line.bbox[3]) / 2 < middle + 0.6 * height:
                continue
            if line.bbox[1] - y2 > 1.6 * height or min(x2, line.bbox[2]) - max(x1, line.bbox[0]) <= 0:
                continue
            under.append(other)
        under.sort(key=lambda other: self.lines[other].bbox[1])
        return under[:1]


def _column(line: Line, labels: list[_Label], left: float, right: float) -> tuple[str, int] | None:
    """The words of a line whose middles lie between x = left and right, with the offset of the
    first; None when there are none or a label is among them (that is another field's column)."""
    words = [m for m in re.finditer(r"\S+", line.text)
             if left <= (_x_at(line, m.start(), end=False) + _x_at(line, m.end(), end=True)) / 2 < right]
    if not words:
        return None
    start, end = words[0].start(), words[-1].end()
    if any(label.start < end and label.end > start for label in labels):
        return None
    return line.text[start:end], start


# A space OCR put on one side of a dash or slash inside a code ("БП- 003274", "INV-2025 -8624"); one on
# each side ("145 - 12.03.2024") is punctuation between two things.
_SPACED_JOIN = re.compile(r"(?<=[^\W_][-/]) (?=[^\W_])|(?<=[^\W_]) (?=[-/][^\W_])")


def _find(spec: TemplateField, text: str, pattern: re.Pattern[str] | None) -> Found | None:
    """A value of the field's type in `text`, its span in `text`. A code is looked for with the O's
    that stand for zeros as zeros ("A-O1383") and without the spaces OCR put beside its dashes."""
    if not spec.identifier:
        return find_value(spec.type, text, pattern=pattern, order=spec.date_order)
    kept = [i for i in range(len(text)) if not (text[i] == " " and _SPACED_JOIN.match(text, i))]
    joined = zeros_for_o("".join(text[i] for i in kept))
    found = find_value(spec.type, joined, pattern=pattern, order=spec.date_order)
    if found is None or found.end <= found.start:
        return found
    return Found(found.value, kept[found.start], kept[found.end - 1] + 1)


def _partial(text: str, start: int, end: int) -> bool:
    """The value at start..end is only part of the word it is in: letters, digits or slashes touch it
    ("1" of "1№\\/003465"), beyond punctuation and currency signs."""
    before = re.search(r"\S*$", text[:start])
    after = re.match(r"\S*", text[end:])
    rest = (before.group() if before else "") + (after.group() if after else "")
    return bool(re.search(r"[\w\\/|]", rest))


COLUMN_GAP = 1.5  # a blank this many line heights wide between words parts columns; word gaps are ~0.3


def _column_end(line: Line, start: int, end: int) -> int:
    """Where the text start..end of a line meets a blank as wide as a column gap (the next column's
    text, say a label the engine misread: "Дата выставления      Срок‘оплаты"); `end` when it does not,
    or when the words' places are not known."""
    if line.words is None:
        return end
    previous = _x_at(line, start, end=True)
    for word in re.finditer(r"\S+", line.text[start:end]):
        if _x_at(line, start + word.start(), end=False) - previous > COLUMN_GAP * _height(line.bbox):
            return start + word.start()
        previous = _x_at(line, start + word.end(), end=True)
    return end


def _value_near(page: _Page, index: int, position: int, spec: TemplateField,
                pattern: re.Pattern[str] | None) -> tuple[ExtractedField, Line, bool] | None:
    """The value a label points at, the line it was read from, and whether it is only part of a word."""
    line = page.lines[index]
    labels = page.labels[index]
    label = labels[position]
    following = labels[position + 1] if position + 1 < len(labels) else None
    end = following.start if following is not None else len(line.text)
    segment = line.text[label.end:end]
    found = _find(spec, segment, pattern)
    if found is not None and spec.type == "string" and re.search(r"[^\W_]", segment[:found.start]):
        found = None  # a text value follows its label: "Счёт действителен 10 дней" is no number
    if found is not None:
        start, end = label.end + found.start, label.end + found.end
        return ExtractedField(value=found.value, source=line.text[start:end].strip(), page=line.page,
                              bbox=_span_box(line, start, end)), line, _partial(line.text, start, end)
    if re.search(r"\d|[^\W\d_]{2}", line.text[label.end:_column_end(line, label.end, end)]):
        return None  # something else follows the label in its column (not punctuation, not a stray letter)
    if not re.search(r"[^\W\d_]", line.text[label.start:label.end]):
        return None  # a sign alone ("№" heading a table's first column) points at nothing beside or below
    label_box = _span_box(line, label.start, label.end)
    # Beside the label: the text of the line to its right, before any label of its own.
    right_lines = page.beside(index, label_box, "right")
    candidates = [(other, page.unlabelled_prefix(other), 0) for other in right_lines]
    # Under the label: the words of the next line in this label's column, which ends where the
    # next word on the label's row starts ("Invoice #   Date   Due date"), in its line or another.
    # Specks read as punctuation ("Счёт № . Дата") are no words: they would move the column's edges.
    words = [w for w in re.finditer(r"\S+", line.text) if re.search(r"[^\W_]", w.group())]
    before = [w.end() for w in words if w.end() <= label.start]
    after = [w.start() for w in words if w.start() >= label.end]
    left_lines = page.beside(index, label_box, "left")
    previous_x = _x_at(line, before[-1], end=True) if before else \
        page.lines[left_lines[0]].bbox[2] if left_lines else None
    # Values sit under their label, left-aligned or centred, and may start a little left of it: a
    # word a quarter of the way back towards the previous column is already this column's, and one
    # a quarter of the way back from the next column is already the next column's.
    label_x = _x_at(line, label.start, end=False)
    left = label_x - 0.25 * (label_x - previous_x) if previous_x is not None else float("-inf")
    next_x = _x_at(line, after[0], end=False) if after else \
        page.lines[right_lines[0]].bbox[0] if right_lines else None
    label_end = _x_at(line, label.end, end=True)
    right = next_x - 0.25 * (next_x - label_end) if next_x is not None else float("inf")
    for other in page.below(index, label_box):
        column = _column(page.lines[other], page.labels[other], left, right)
        if column is not None:
            candidates.append((other, *column))
    for other, text, offset in candidates:
        found = _find(spec, text, pattern)
        if found is not None and _alone(spec.type, found, text, pattern):
            neighbour = page.lines[other]
            start, end = offset + found.start, offset + found.end
            return ExtractedField(value=found.value, source=text[found.start:found.end].strip(), page=neighbour.page,
                                  bbox=_span_box(neighbour, start, end)), neighbour, \
                _partial(neighbour.text, start, end)
    return None


def find_fields(template: Template, lines: Iterable[Line], kind: str = "classic",
                model: str = "") -> dict[str, ExtractedField]:
    """Every template field found in the lines (of one or more pages); absent fields have value None."""
    return field_lines(template, lines, kind, model)[0]


@dataclass(frozen=True)
class FieldLines:
    """The lines a field's value rests on: the line of every label tried, up to the one that gave the
    value, and the value's own line. `doubtful`: the value was only part of a word there, or a code
    that needed repair (an O for a zero, a letter of the other script) — the reading was unsure."""

    lines: tuple[Line, ...] = ()
    doubtful: bool = False


def field_lines(template: Template, lines: Iterable[Line], kind: str = "classic", model: str = ""
                ) -> tuple[dict[str, ExtractedField], dict[str, FieldLines]]:
    """`find_fields`, and for each field the lines its value rests on."""
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
    used: dict[str, FieldLines] = {}
    for name, spec in template.fields.items():
        fields[name] = ExtractedField()
        tried: list[Line] = []
        doubtful = False
        candidates = sorted(occurrences.get(name, []))
        if spec.pick == "last":
            candidates.reverse()
        for _, number, index, position in candidates:
            tried.append(pages[number].lines[index])
            value = _value_near(pages[number], index, position, spec, compiled.values[name])
            if value is not None:
                fields[name] = _typed(spec, value[0], _mostly_cyrillic(pages[number].lines))
                tried.append(value[1])
                code = fields[name].value
                doubtful = value[2] or (spec.identifier and isinstance(code, str) and (
                    code != value[0].source or unsure_code(code, _mostly_cyrillic(pages[number].lines))))
                break
        used[name] = FieldLines(tuple(dict.fromkeys(tried)), doubtful)
    return fields, used


_LATIN_LOOKS = "ABCEHKMOPTXaceopxy"
_CYRILLIC_LOOKS = "АВСЕНКМОРТХасеорху"
_TO_CYRILLIC = str.maketrans(_LATIN_LOOKS, _CYRILLIC_LOOKS)
_TO_LATIN = str.maketrans(_CYRILLIC_LOOKS, _LATIN_LOOKS)
# An O (Latin or Cyrillic) read for a zero: between digits, before digits after a prefix of two
# letters or more ("INVO03960"; "PO123" keeps its O), or after a dash or slash that follows a letter
# or digit ("A-O1383", "2021/O75").
_O_FOR_ZERO = re.compile(r"(?<=\d)[OoОо]+(?=\d)|(?<=[^\W\d_]{2})[OoОо]+(?=\d)|(?<=[^\W_][-/])[OoОо]+(?=\d)")


def zeros_for_o(text: str) -> str:
    """`text` with the O's that stand for zeros in codes as zeros; as long as `text`."""
    return _O_FOR_ZERO.sub(lambda match: "0" * len(match.group()), text)


def repair_identifier(value: str, cyrillic: bool) -> str:
    """A code as OCR misreads it, repaired: look-alike letters in the page's script ("А-05558" with
    a Cyrillic А on an English page), and zeros read as O ("INVO03960", "INV00O5225")."""
    if cyrillic:
        latin = [ch for ch in value if "a" <= ch.lower() <= "z"]
        if latin and all(ch in _LATIN_LOOKS for ch in latin):
            value = value.translate(_TO_CYRILLIC)
    else:
        foreign = [ch for ch in value if "а" <= ch.lower() <= "я" or ch in "ёЁ"]
        if foreign and all(ch in _CYRILLIC_LOOKS for ch in foreign):
            value = value.translate(_TO_LATIN)
    return zeros_for_o(value)


def unsure_code(value: str, cyrillic: bool) -> bool:
    """A code (after repair) that OCR probably misread: letters of both scripts, or of the script the
    page is not in ("BN-008606" on a Russian page), or letters and digits mixed in a part before a dash
    or slash ("Б1-000267", "Б11-003959": "П" read as "1" or "11") or a letter after a digit. Codes keep
    letters and digits in parts of their own ("БП-000267", "INV-2024-0042"), or end in letters then
    digits ("INV003736")."""
    latin = re.search(r"[A-Za-z]", value) is not None
    russian = re.search(r"[а-яёА-ЯЁ]", value) is not None
    if (latin and russian) or (latin if cyrillic else russian):
        return True
    parts = re.split(r"[-/\s]+", value)
    return any(re.search(r"\d[^\W\d_]", part) for part in parts) or \
        any(re.search(r"\d", part) and re.search(r"[^\W\d_]", part) for part in parts[:-1])


def _mostly_cyrillic(lines: Sequence[Line]) -> bool:
    text = " ".join(line.text for line in lines)
    cyrillic = len(re.findall(r"[а-яёА-ЯЁ]", text))
    return cyrillic > len(re.findall(r"[A-Za-z]", text))


def _typed(spec: TemplateField, field: ExtractedField, cyrillic: bool) -> ExtractedField:
    """String values cleaned like a person's entry would be (codes repaired); typed values are
    already normalised."""
    if spec.type != "string":
        return field
    value = normalise("string", field.value)
    if spec.identifier and isinstance(value, str):
        value = repair_identifier(value, cyrillic)
    return field.model_copy(update={"value": value})
