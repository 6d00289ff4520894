"""Turn the layout output of the VLMs into Blocks in original page pixels.

Covers Qwen2-VL's native grounding markup (<|object_ref_start|>text<|object_ref_end|><|box_start|>
(x1,y1),(x2,y2)<|box_end|>), Qwen grounding lists (bbox_2d) written as JSON or as Python literals,
QwenVL HTML (data-bbox) and dots.ocr layout JSON (bbox/category/text). Model output is untrusted:
these functions repair what they can (json-repair for malformed elements) and never raise on
malformed text.
"""
from __future__ import annotations

import ast
import html
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import json_repair

from models.contract import Block

DOTS_CATEGORIES = (
    "Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header",
    "Picture", "Section-header", "Table", "Text", "Title",
)
_CATEGORY_BY_KEY = {re.sub(r"[-_\s]", "", c).lower(): c for c in DOTS_CATEGORIES}
_CATEGORY_BY_KEY.update({"figure": "Picture", "image": "Picture", "equation": "Formula"})

_QWEN_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
_QWEN_TEXT_KEYS = ("text_content", "text", "content")
_QWEN_CATEGORY_KEYS = ("category", "label", "type")

Box = tuple[float, float, float, float]
Scale = tuple[float, float]
# (raw box, category, text, score) read from one JSON element
Fields = tuple[Any, str, str, float | None]


# ---------------------------------------------------------------- public API


def parse_qwen_grounding(
    text: str, coord_mode: str, input_size: tuple[int, int], page_size: tuple[int, int]
) -> list[Block]:
    """Blocks from Qwen grounding: native box markup, a bbox_2d list (JSON or Python literal) or
    QwenVL HTML.

    coord_mode "pixels": boxes in the resized input's pixels; "relative1000": 0..1000 of the image.
    """
    scale = _scale(coord_mode, input_size, page_size)
    if not text or not text.strip():
        return []
    if BOX_START in text:
        blocks, _ = _items_to_blocks(_grounding_items(text), _qwen_fields, scale, page_size)
        return blocks
    if "data-bbox" in text:
        return _qwen_html_blocks(text, scale, page_size)
    items, _ = _json_items(text, python=True)
    blocks, _ = _items_to_blocks(items or [], _qwen_fields, scale, page_size)
    return blocks


def parse_dots_layout(
    text: str, input_size: tuple[int, int], page_size: tuple[int, int]
) -> tuple[list[Block], list[str]]:
    """Blocks from dots.ocr prompt_layout_all_en output, plus a warning for every repair made."""
    scale = _scale("pixels", input_size, page_size)
    if not text or not text.strip():
        return [], ["model output was empty"]
    items, repairs = _json_items(text)
    if items is None:
        return [], ["model output is not layout JSON: no blocks could be parsed"]
    blocks, problems = _items_to_blocks(items, _dots_fields, scale, page_size)
    warnings = repairs + problems
    if not blocks and warnings:
        return [], ["no layout blocks could be parsed from the model output ("
                    + "; ".join(warnings) + ")"]
    return blocks, warnings


def strip_special_tokens(text: str) -> str:
    """Text without the models' special-token markup (<|box_start|>, <|im_end|>, ...)."""
    return _SPECIAL_TOKEN.sub("", text)


def dots_blocks_to_markdown(blocks: list[Block], include_headers_footers: bool = False) -> str:
    """Markdown in the given reading order, one paragraph per block."""
    parts = []
    for block in blocks:
        if block.category in ("Page-header", "Page-footer") and not include_headers_footers:
            continue
        part = _block_markdown(block)
        if part:
            parts.append(part)
    return "\n\n".join(parts)


def blocks_to_text(blocks: list[Block]) -> str:
    """Plain text in the given order: tables as tab-separated rows, tags stripped, no pictures."""
    lines = []
    for block in blocks:
        if block.category == "Picture":
            continue
        text = _block_plain_text(block)
        if text:
            lines.append(text)
    return "\n".join(lines)


def html_table_to_markdown(table_html: str) -> str | None:
    """A GitHub pipe table, or None when the table has row/col spans or nesting (keep the HTML)."""
    table = _parse_table(table_html)
    if table.complex or not table.rows:
        return None
    width = max(len(row) for row in table.rows)
    header, *body = table.rows
    lines = [_pipe_row(header, width), "| " + " | ".join(["---"] * width) + " |"]
    lines += [_pipe_row(row, width) for row in body]
    return "\n".join(lines)


# ---------------------------------------------------------------- boxes


def _check_size(size: Any, name: str) -> tuple[float, float]:
    try:
        width, height = (float(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (width, height), got {size!r}") from None
    if not (width > 0 and height > 0):
        raise ValueError(f"{name} must be positive, got {size!r}")
    return width, height


def _scale(coord_mode: str, input_size: Any, page_size: Any) -> Scale:
    page_w, page_h = _check_size(page_size, "page_size")
    if coord_mode == "relative1000":
        return page_w / 1000, page_h / 1000
    if coord_mode == "pixels":
        input_w, input_h = _check_size(input_size, "input_size")
        return page_w / input_w, page_h / input_h
    raise ValueError(f"coord_mode must be 'pixels' or 'relative1000', got {coord_mode!r}")


def _coerce_coords(raw: Any) -> Box | None:
    if isinstance(raw, str):
        raw = re.split(r"[\s,]+", raw.strip().strip("[]()"))
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        return None
    try:
        coords = tuple(float(v) for v in raw if not isinstance(v, bool))
    except (TypeError, ValueError):
        return None
    if len(coords) != 4 or not all(math.isfinite(v) for v in coords):
        return None
    return coords


def _place_box(coords: Box, scale: Scale, page_size: Any) -> Box | None:
    """Scale to the page, order the corners, clamp to the page; None when nothing is left."""
    (sx, sy), (page_w, page_h) = scale, _check_size(page_size, "page_size")
    x1, x2 = sorted((coords[0] * sx, coords[2] * sx))
    y1, y2 = sorted((coords[1] * sy, coords[3] * sy))
    x1, x2 = min(max(x1, 0.0), page_w), min(max(x2, 0.0), page_w)
    y1, y2 = min(max(y1, 0.0), page_h), min(max(y2, 0.0), page_h)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)


# ---------------------------------------------------------------- Qwen2-VL grounding markup

BOX_START = "<|box_start|>"
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")
_COORD = r"\s*(-?\d+(?:\.\d+)?)\s*"
_GROUNDING = re.compile(
    r"<\|object_ref_start\|>(?P<ref>.*?)<\|object_ref_end\|>"
    rf"|<\|box_start\|>\s*\({_COORD},{_COORD}\)\s*,\s*\({_COORD},{_COORD}\)\s*<\|box_end\|>",
    re.DOTALL)


def _grounding_items(text: str) -> list[dict]:
    """{bbox_2d, text_content} per box. Boxes right after a reference belong to it (one reference may
    have several); a box without one takes the last line of plain text written before it."""
    items: list[dict] = []
    ref: str | None = None
    plain_from = 0
    for match in _GROUNDING.finditer(text):
        if match.group("ref") is not None:
            ref = match.group("ref").strip()
            continue
        if ref is not None:
            label = ref
        else:
            lines = strip_special_tokens(text[plain_from:match.start()]).strip().splitlines()
            label = lines[-1].strip() if lines else ""
        items.append({"bbox_2d": [float(v) for v in match.groups()[1:]], "text_content": label})
        plain_from = match.end()
        if not text[plain_from:].lstrip().startswith(BOX_START):
            ref = None  # this reference's boxes have ended
    return items


# ---------------------------------------------------------------- JSON with repair

_FENCE = re.compile(r"```[ \t]*[A-Za-z]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)


def _strip_fence(text: str) -> str:
    match = _FENCE.search(text)
    return match.group(1) if match else text


def _literal(text: str, python: bool) -> Any:
    """JSON, else (python=True) a Python literal, as Qwen3-VL's cookbook reads its answers; raises
    ValueError. Only for Qwen: dots.ocr writes LaTeX, whose backslashes Python would read as escapes."""
    try:
        return json.loads(text, strict=False)
    except ValueError:
        if not python:
            raise
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("neither JSON nor a Python literal") from None


def _json_items(text: str, python: bool = False) -> tuple[list | None, list[str]]:
    """The elements of the list in text and the repairs made; None when there is no list or object."""
    body = _strip_fence(text).strip()
    try:
        data = _literal(body, python)
    except ValueError:
        return _salvage_items(body, python)
    if isinstance(data, dict):
        return [data], []
    if isinstance(data, list):
        return data, []
    return None, []


@dataclass
class _Scan:
    spans: list[tuple[int, int]] = field(default_factory=list)
    start: int = 0
    opened_list: bool = False
    truncated: bool = False
    closed_at: int | None = None
    open_begin: int = 0  # where the unterminated element starts, when truncated


def _scan_objects(body: str, python: bool) -> _Scan | None:
    """Top-level {...} spans, tracking strings (also single-quoted ones with python=True) so braces in
    text do not count."""
    first = re.search(r"[\[{]", body)
    if first is None:
        return None
    scan = _Scan(start=first.start(), opened_list=first.group() == "[")
    depth, begin, quote, escaped = 0, 0, "", False
    for i in range(first.start(), len(body)):
        ch = body[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch == '"' or (python and ch == "'" and depth > 0):
            quote = ch
        elif ch == "{":
            if depth == 0:
                begin = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                scan.spans.append((begin, i + 1))
        elif ch == "]" and depth == 0:
            scan.closed_at = i
            break
    scan.truncated = depth > 0
    scan.open_begin = begin
    return scan


def _salvage_items(body: str, python: bool) -> tuple[list | None, list[str]]:
    scan = _scan_objects(body, python)
    if scan is None:
        return None, []
    warnings = []
    cut_item = _cut_element(body[scan.open_begin:]) if scan.truncated else None
    if cut_item is not None:
        warnings.append("output was truncated: kept the last element up to the line or tag where it was cut")
    elif scan.truncated:
        warnings.append("output was truncated: dropped an incomplete element")
    elif scan.opened_list and scan.closed_at is None:
        warnings.append("output was truncated: added the missing closing bracket")

    gaps = [body[a[1]:b[0]] for a, b in zip(scan.spans, scan.spans[1:])]
    missing = sum("," not in gap for gap in gaps)
    if missing:
        warnings.append(f"inserted {missing} missing comma(s) between elements")
    if scan.closed_at is not None and scan.spans and "," in body[scan.spans[-1][1]:scan.closed_at]:
        warnings.append("removed a trailing comma before the closing bracket")
    if scan.closed_at is not None and body[scan.closed_at + 1:].strip():
        warnings.append("ignored text after the closing bracket")
    if body[:scan.start].strip():
        warnings.append("ignored text before the JSON")

    items, repaired, dropped = [], 0, 0
    for begin, end in scan.spans:
        item, was_repaired = _parse_element(body[begin:end], python)
        if item is None:
            dropped += 1
            continue
        repaired += was_repaired
        items.append(item)
    if cut_item is not None:
        items.append(cut_item)
    if repaired:
        warnings.append(f"repaired {repaired} malformed element(s)")
    if dropped:
        warnings.append(f"dropped {dropped} malformed element(s)")
    return items, warnings


def _cut_element(raw: str) -> dict | None:
    """An element cut off at the end of a line or tag (where the loop guard cuts), closed by json-repair;
    None when it was cut mid-word or mid-box, or has no box: then its text cannot be trusted."""
    if not raw.rstrip(" ").endswith((">", "\n", "\\n")):
        return None
    item = json_repair.loads(raw)
    return item if isinstance(item, dict) and "bbox" in item else None


def _parse_element(raw: str, python: bool) -> tuple[Any, bool]:
    """One {...} element and whether it needed repair. json-repair mends what models get wrong (missing
    or trailing commas, LaTeX backslashes that are not JSON escapes, unquoted keys); what it cannot
    read at all is dropped."""
    try:
        return _literal(raw, python), False
    except ValueError:
        pass
    repaired = json_repair.loads(raw)
    return (repaired, True) if isinstance(repaired, dict) and repaired else (None, False)


# ---------------------------------------------------------------- elements to blocks


def _canonical_category(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return _CATEGORY_BY_KEY.get(re.sub(r"[-_\s]", "", value).lower())


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else str(value)


def _as_score(item: dict) -> float | None:
    for key in ("score", "confidence"):
        value = item.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _restore_latex(text: str, formula: bool) -> str:
    r"""Undo JSON escapes that swallowed a LaTeX command ("\frac" arrives as form feed + "rac")."""
    text = text.replace("\b", "\\b").replace("\f", "\\f")
    if formula:  # outside formulas a tab or CR before a letter can be real
        text = re.sub(r"\r(?=[A-Za-z])", r"\\r", text)
        text = re.sub(r"\t(?=[A-Za-z])", r"\\t", text)
    return text


def _dots_fields(item: dict) -> Fields:
    raw_category = item.get("category")
    category = _canonical_category(raw_category) or _as_text(raw_category) or "Text"
    text = item.get("text")
    if isinstance(text, str):  # before stripping, which would eat a leading form feed
        text = _restore_latex(text, category == "Formula")
    return item.get("bbox"), category, _as_text(text), _as_score(item)


def _qwen_fields(item: dict) -> Fields:
    box = next((item[k] for k in _QWEN_BOX_KEYS if k in item), None)
    text_key = next((k for k in _QWEN_TEXT_KEYS if k in item), None)
    label = next((item[k] for k in _QWEN_CATEGORY_KEYS if k in item), None)
    category = _canonical_category(label)
    if text_key is not None:
        text = _as_text(item[text_key])
    else:
        # Without a text key the label is the spotted text, unless it names a layout category.
        text = "" if category else _as_text(label)
    return box, category or "Text", text, _as_score(item)


def _items_to_blocks(
    items: list, fields: Callable[[dict], Fields], scale: Scale, page_size: Any
) -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    seen: set[tuple] = set()
    no_box = off_page = duplicates = 0
    for item in items:
        if not isinstance(item, dict):
            no_box += 1
            continue
        raw_box, category, text, score = fields(item)
        coords = _coerce_coords(raw_box)
        if coords is None:
            no_box += 1
            continue
        bbox = _place_box(coords, scale, page_size)
        if bbox is None:
            off_page += 1
            continue
        key = (coords, category, text)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        blocks.append(Block(bbox=bbox, category=category, text=text, score=score))
    warnings = []
    if duplicates:
        warnings.append(f"removed {duplicates} duplicate blocks (repeated output)")
    if no_box:
        warnings.append(f"dropped {no_box} element(s) without a valid bbox")
    if off_page:
        warnings.append(f"dropped {off_page} box(es) with zero area or outside the page")
    return blocks, warnings


# ---------------------------------------------------------------- QwenVL HTML

_TABLE_CELL = re.compile(r"<t[rdh]\b", re.IGNORECASE)
_VOID_TAGS = frozenset({"img", "br", "hr", "input", "meta", "link", "area", "col", "source", "wbr"})
_KEPT_ATTRS = ("rowspan", "colspan")
_CLASS_CATEGORIES = (  # checked in order: "image caption" is a Caption, not a Picture
    ("caption", "Caption"), ("formula", "Formula"), ("footnote", "Footnote"),
    ("header", "Page-header"), ("footer", "Page-footer"), ("page_number", "Page-footer"),
    ("image", "Picture"), ("chart", "Picture"),
    ("figure", "Picture"), ("table", "Table"), ("title", "Title"),
)
_TAG_CATEGORIES = {
    "h1": "Title", "h2": "Section-header", "h3": "Section-header", "h4": "Section-header",
    "h5": "Section-header", "h6": "Section-header", "p": "Text", "table": "Table",
    "img": "Picture", "figure": "Picture", "li": "List-item", "ul": "List-item",
    "ol": "List-item", "header": "Page-header", "footer": "Page-footer",
    "caption": "Caption", "figcaption": "Caption",
}


@dataclass
class _HtmlElement:
    tag: str
    classes: str
    bbox: str
    parts: list[str] = field(default_factory=list)

    def category(self) -> str:
        whole = _canonical_category(self.classes)
        if whole:
            return whole
        tokens = re.split(r"[\s-]+", self.classes.lower())
        for token, category in _CLASS_CATEGORIES:
            if token in tokens:
                return category
        return _TAG_CATEGORIES.get(self.tag, "Text")


class _BboxElementParser(HTMLParser):
    """Collects the outermost elements with data-bbox; their content is rebuilt as clean HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[_HtmlElement] = []
        self._open: _HtmlElement | None = None
        self._depth = 0  # how deep the open element's own tag is nested inside itself

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        bbox = attributes.get("data-bbox")
        if self._open is not None and bbox is not None and tag == self._open.tag:
            self._open = None  # an unclosed sibling such as <p>..<p>: the first one has ended
        if self._open is None:
            if bbox is None:
                return
            element = _HtmlElement(tag, attributes.get("class") or "", bbox)
            self.elements.append(element)
            if tag not in _VOID_TAGS:
                self._open, self._depth = element, 1
            return
        if tag == self._open.tag:
            self._depth += 1
        kept = "".join(f' {k}="{html.escape(v or "")}"' for k, v in attrs if k in _KEPT_ATTRS)
        self._open.parts.append(f"<{tag}{kept}>")

    def handle_endtag(self, tag: str) -> None:
        if self._open is None:
            return
        if tag == self._open.tag:
            self._depth -= 1
            if self._depth == 0:
                self._open = None
                return
        if tag not in _VOID_TAGS:
            self._open.parts.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.parts.append(html.escape(data, quote=False))


def _qwen_html_blocks(text: str, scale: Scale, page_size: Any) -> list[Block]:
    parser = _BboxElementParser()
    parser.feed(_strip_fence(text))
    parser.close()
    blocks = []
    for element in parser.elements:
        coords = _coerce_coords(element.bbox)
        bbox = _place_box(coords, scale, page_size) if coords else None
        if bbox is None:
            continue
        category = element.category()
        inner = "".join(element.parts)
        if category == "Table" and _TABLE_CELL.search(inner):
            body = inner.strip() if "<table" in inner else f"<table>{inner}</table>"
        else:
            body = _html_to_plain(inner)
        blocks.append(Block(bbox=bbox, category=category, text=body))
    return blocks


# ---------------------------------------------------------------- HTML tables and text

_TAG_NAMES = (
    "a|b|i|u|s|em|strong|sup|sub|span|div|p|br|hr|img|table|thead|tbody|tfoot|tr|td|th|"
    "caption|colgroup|col|ul|ol|li|h[1-6]|code|pre|small|mark|del|ins|font|center|html|body|"
    "blockquote|figure|figcaption|section|article|header|footer"
)
_TAG = re.compile(rf"</?(?:{_TAG_NAMES})\b[^<>]*>", re.IGNORECASE)
_LINE_BREAK_TAG = re.compile(r"<br\s*/?>|</(?:p|div|li|tr|h[1-6]|table)\s*>", re.IGNORECASE)
_CELL_END_TAG = re.compile(r"</t[dh]\s*>", re.IGNORECASE)


def _html_to_plain(text: str) -> str:
    text = _CELL_END_TAG.sub(" ", _LINE_BREAK_TAG.sub("\n", text))
    text = _TAG.sub("", text)
    lines = (" ".join(line.split()) for line in html.unescape(text).splitlines())
    return "\n".join(line for line in lines if line)


@dataclass
class _Table:
    rows: list[list[str]] = field(default_factory=list)
    complex: bool = False  # spans or nested tables: a pipe table cannot show it


class _TableParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.table = _Table()
        self._depth = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._depth += 1
            self.table.complex |= self._depth > 1
        elif tag == "tr" and self._depth <= 1:
            self._finish_cell()
            self.table.rows.append([])
        elif tag in ("td", "th") and self._depth <= 1:
            self._finish_cell()
            if not self.table.rows:
                self.table.rows.append([])
            self._cell = []
            spans = (v for k, v in attrs if k in _KEPT_ATTRS)
            self.table.complex |= any((v or "1").strip() not in ("", "1") for v in spans)
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "tr") and self._depth <= 1:
            self._finish_cell()
        elif tag == "table":
            self._finish_cell()
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def _finish_cell(self) -> None:
        if self._cell is not None:
            self.table.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None


def _parse_table(table_html: str) -> _Table:
    parser = _TableParser()
    parser.feed(table_html)
    parser.close()
    parser._finish_cell()  # a truncated table may end inside a cell
    parser.table.rows = [row for row in parser.table.rows if row]
    return parser.table


def _pipe_row(cells: list[str], width: int) -> str:
    padded = [c.replace("|", "\\|") for c in cells] + [""] * (width - len(cells))
    return "| " + " | ".join(padded) + " |"


# ---------------------------------------------------------------- block rendering

_MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("$", "$"))


def _strip_math(text: str) -> str:
    text = text.strip()
    for opening, closing in _MATH_DELIMITERS:
        if (text.startswith(opening) and text.endswith(closing)
                and len(text) >= len(opening) + len(closing)):
            return text[len(opening):len(text) - len(closing)].strip()
    return text


def _picture_placeholder(block: Block) -> str:
    x1, y1, x2, y2 = (round(v) for v in block.bbox)
    return f"![Picture](page region {x1},{y1},{x2},{y2})"


def _block_markdown(block: Block) -> str:
    text = block.text.strip()
    category = block.category
    if category == "Picture":
        return "\n\n".join(p for p in (_picture_placeholder(block), text) if p)
    if not text:
        return ""
    if category in ("Title", "Section-header"):
        return text if text.startswith("#") else ("# " if category == "Title" else "## ") + text
    if category == "Formula":
        return f"$$\n{_strip_math(text)}\n$$"
    if category == "Table" and "<table" in text.lower():
        return html_table_to_markdown(text) or text
    return text


def _block_plain_text(block: Block) -> str:
    text = block.text.strip()
    rows = _parse_table(text).rows if block.category == "Table" and "<table" in text.lower() else []
    if rows:
        return "\n".join("\t".join(row) for row in rows)
    if block.category in ("Title", "Section-header"):
        text = re.sub(r"^#+\s*", "", text)
    elif block.category == "Formula":
        text = _strip_math(text)
    return _html_to_plain(text)
