"""A page's structure from a classic engine's boxes, written as Markdown.

Engines give lines of words with boxes (Tesseract: its text lines in reading order; RapidOCR: rows of
detected segments). From their geometry alone this module finds
- tables: runs of three or more rows split into cells by wide gaps, whose cells line up in the same
  columns and are short (prose in two columns has long lines and stays prose);
- headings: short paragraphs set clearly larger than the body text, `#` for the largest size;
- paragraphs: lines that follow each other closely in the same column at the same size; a wider gap,
  a change of size or the engine's own paragraph break starts a new one. Inside a paragraph, wrapped
  lines stay soft breaks and a line that ends early (addresses, verse) becomes a hard break.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from models.reading_order import group_rows

Box = tuple[float, float, float, float]

CELL_GAP = 1.5  # a gap wider than this many line heights separates table cells; word gaps are ~0.3
TABLE_MIN_ROWS = 3
TABLE_MAX_CELL_WORDS = 4  # median words per cell: prose columns have more
TABLE_ROW_GAP = 2.5  # rows further apart than this many heights end a table
HEADING_RATIO = 1.3  # a heading's size over the body size
HEADING_LEVEL_STEP = 1.15  # sizes closer than this share a heading level
HEADING_MAX_WORDS = 15
SIZE_CHANGE = 1.25  # a line this much larger or smaller than the previous one starts a paragraph
PARAGRAPH_GAP = 0.6  # line heights beyond the page's usual line gap that separate paragraphs


@dataclass
class Word:
    text: str
    bbox: Box
    score: float | None = None  # the engine's confidence in the word, 0-1, where it gives one


@dataclass
class Line:
    words: list[Word]
    size: float | None = None  # font size in px where the engine knows it (Tesseract's row height)
    block: int = 0  # the engine's block (column, region) the line belongs to
    new_paragraph: bool = False  # the engine found a paragraph break before this line (e.g. an indent)
    score: float | None = None

    @property
    def text(self) -> str:
        return " ".join(w.text.strip() for w in self.words if w.text.strip())

    @property
    def bbox(self) -> Box:
        return union(w.bbox for w in self.words)

    @property
    def height(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return max(self.size or (y2 - y1), 1.0)


@dataclass
class Cell:
    words: list[Word]
    line: int  # index of the line it came from

    @property
    def bbox(self) -> Box:
        return union(w.bbox for w in self.words)

    @property
    def text(self) -> str:
        return " ".join(w.text.strip() for w in self.words if w.text.strip())


@dataclass
class Table:
    rows: list[list[str]]
    lines: set[int] = field(default_factory=set)


def union(boxes) -> Box:
    boxes = list(boxes)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def page_text(lines: list[Line]) -> str:
    """Plain text as Tesseract writes it: a line per line, a blank line where the engine starts a paragraph."""
    out: list[str] = []
    for i, line in enumerate(lines):
        if not line.text:
            continue
        if out and i and (line.new_paragraph or line.block != lines[i - 1].block):
            out.append("")
        out.append(line.text)
    return "\n".join(out)


def to_markdown(lines: list[Line]) -> str:
    lines = [line for line in lines if line.text]
    if not lines:
        return ""
    body = _body_size(lines)
    tables = find_tables(lines)
    table_of = {i: t for t in tables for i in t.lines}
    parts: list[Table | int] = []  # tables, and paragraphs by number until the headings are known
    paragraphs: list[list[int]] = []
    gap = _usual_gap(lines)
    for i, line in enumerate(lines):
        table = table_of.get(i)
        if table is not None:
            if not any(part is table for part in parts):
                parts.append(table)
        elif (parts and isinstance(parts[-1], int) and paragraphs
              and _continues(lines[paragraphs[-1][-1]], line, gap)):
            paragraphs[-1].append(i)
        else:
            parts.append(len(paragraphs))
            paragraphs.append([i])
    levels = _heading_levels(lines, paragraphs, body)
    out = []
    for part in parts:
        if isinstance(part, Table):
            out.append(_pipe_table(part.rows))
        elif part in levels:
            out.append("#" * levels[part] + " " + " ".join(_escape(lines[i].text) for i in paragraphs[part]))
        else:
            out.append(_paragraph([lines[i] for i in paragraphs[part]], lines))
    return "\n\n".join(out) + "\n"


def find_tables(lines: list[Line]) -> list[Table]:
    cells = [Cell(words, i) for i, line in enumerate(lines) for words in split_cells(line)]
    rows = group_rows(cells)
    tables: list[Table] = []
    run: list[list[Cell]] = []
    for row in rows + [[]]:
        if len(row) >= 2 and (not run or _close_rows(run[-1], row)):
            run.append(row)
            continue
        table = _as_table(run)
        if table is not None:
            tables.append(table)
        run = [row] if len(row) >= 2 else []
    return tables


def split_cells(line: Line) -> list[list[Word]]:
    """The line's words, split where the gap is far wider than a space."""
    words = sorted((w for w in line.words if w.text.strip()), key=lambda w: w.bbox[0])
    cells: list[list[Word]] = []
    for word in words:
        if cells and word.bbox[0] - cells[-1][-1].bbox[2] <= CELL_GAP * line.height:
            cells[-1].append(word)
        else:
            cells.append([word])
    return cells


def _close_rows(upper: list[Cell], lower: list[Cell]) -> bool:
    top = min(c.bbox[1] for c in lower)
    bottom = max(c.bbox[3] for c in upper)
    height = statistics.median(c.bbox[3] - c.bbox[1] for c in upper)
    return top - bottom <= TABLE_ROW_GAP * height


def _as_table(run: list[list[Cell]]) -> Table | None:
    if len(run) < TABLE_MIN_ROWS:
        return None
    cells = [c for row in run for c in row]
    if statistics.median(len(c.text.split()) for c in cells) > TABLE_MAX_CELL_WORDS:
        return None
    columns: list[list[float]] = []  # x-ranges of the columns: overlapping cells share one
    for c in sorted(cells, key=lambda c: c.bbox[0]):
        if columns and c.bbox[0] <= columns[-1][1]:
            columns[-1][1] = max(columns[-1][1], c.bbox[2])
        else:
            columns.append([c.bbox[0], c.bbox[2]])
    if len(columns) < 2:
        return None
    rows = []
    for row in run:
        texts = [""] * len(columns)
        for c in row:
            column = next(k for k, (left, right) in enumerate(columns) if left <= c.bbox[0] <= right)
            texts[column] = f"{texts[column]} {c.text}".strip()
        if sum(1 for t in texts if t) < 2:
            return None  # a row that fills one column only: the columns are not clear
        rows.append(texts)
    return Table(rows=rows, lines={c.line for c in cells})


def _body_size(lines: list[Line]) -> float:
    """The size most of the text is set in: the median line height, weighted by characters."""
    sizes = sorted((line.height, len(line.text)) for line in lines)
    half = sum(n for _, n in sizes) / 2
    seen = 0
    for size, n in sizes:
        seen += n
        if seen >= half:
            return size
    return sizes[-1][0]


def _usual_gap(lines: list[Line]) -> float:
    """The median gap between consecutive lines of one column: wider gaps separate paragraphs."""
    gaps = [line.bbox[1] - prev.bbox[3] for prev, line in zip(lines, lines[1:])
            if _same_column(prev, line) and _similar_size(prev, line)
            and line.bbox[1] >= prev.bbox[3] - prev.height / 2]
    return statistics.median(gaps) if gaps else 0.0


def _same_column(upper: Line, lower: Line) -> bool:
    return lower.bbox[0] < upper.bbox[2] and upper.bbox[0] < lower.bbox[2]


def _similar_size(a: Line, b: Line) -> bool:
    return max(a.height, b.height) <= SIZE_CHANGE * min(a.height, b.height)


def _continues(prev: Line, line: Line, usual_gap: float) -> bool:
    if line.new_paragraph and line.block == prev.block:
        return False
    gap = line.bbox[1] - prev.bbox[3]
    return (_same_column(prev, line) and _similar_size(prev, line) and -prev.height / 2 <= gap
            and gap <= max(usual_gap, 0.0) + PARAGRAPH_GAP * prev.height)


def _heading_levels(lines: list[Line], paragraphs: list[list[int]], body: float) -> dict[int, int]:
    candidates = {}
    for number, indices in enumerate(paragraphs):
        text = " ".join(lines[i].text for i in indices)
        size = statistics.median(lines[i].height for i in indices)
        if (size >= HEADING_RATIO * body and len(indices) <= 2 and len(text.split()) <= HEADING_MAX_WORDS
                and sum(ch.isalpha() for ch in text) >= 3):  # a drop cap or a blot is not a heading
            candidates[number] = size
    levels: dict[int, int] = {}
    level, level_size = 0, float("inf")
    for number, size in sorted(candidates.items(), key=lambda item: -item[1]):
        if size * HEADING_LEVEL_STEP < level_size:
            level, level_size = level + 1, size
        levels[number] = min(level, 3)
    return levels


def _paragraph(lines: list[Line], page: list[Line]) -> str:
    """The lines joined by soft breaks, or hard ones where the next line's first word would still have
    fitted before the right edge of the text column (the widest line at this size across the paragraph)."""
    left, right = min(line.bbox[0] for line in lines), max(line.bbox[2] for line in lines)
    right = max([right] + [other.bbox[2] for other in page
                           if other.bbox[0] < right and left < other.bbox[2] and _similar_size(other, lines[0])])
    out = []
    for line, following in zip(lines, lines[1:] + [None]):
        text = _escape(line.text)
        if following is not None and right - line.bbox[2] > _first_word_width(following) + line.height / 2:
            text += "  "  # Markdown's hard line break
        out.append(text)
    return "\n".join(out)


def _first_word_width(line: Line) -> float:
    """Width of the line's first word; for an engine that boxes whole segments, its share of the first one."""
    first = next((w for w in line.words if w.text.strip()), None)
    if first is None:
        return 0.0
    return (first.bbox[2] - first.bbox[0]) * len(first.text.split()[0]) / len(first.text)


_BLOCK_START = re.compile(r"^(#|>|=+$|-{3,}$|\*{3,}$|_{3,}$)")


def _escape(text: str) -> str:
    """Keep recognised text from turning into Markdown structure it does not have."""
    return "\\" + text if _BLOCK_START.match(text) else text


def _pipe_table(rows: list[list[str]]) -> str:
    def row_text(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row_text(rows[0]), "| " + " | ".join("---" for _ in rows[0]) + " |",
                      *(row_text(r) for r in rows[1:])])
