"""Layout parsing on outputs written in each model's documented format."""
from __future__ import annotations

import json

import pytest

from models.contract import Block
from models.vlm.layout_parsing import (
    blocks_to_text,
    dots_blocks_to_markdown,
    html_table_to_markdown,
    parse_dots_layout,
    parse_qwen_grounding,
    strip_special_tokens,
)

# ------------------------------------------------------------------ Qwen grounding

# Qwen2-VL line spotting: bbox_2d in the resized input's pixels (page 2240x2800 -> 1120x1400).
QWEN2_SPOTTING = """```json
[
\t{"bbox_2d": [84, 56, 532, 98], "text_content": "INVOICE No. 2024-0173"},
\t{"bbox_2d": [84, 130, 700, 158], "text_content": "Bill to: Müller & Söhne GmbH"},
\t{"bbox_2d": [460, 196, 84, 170], "text_content": "Total due: €1,250.00"},
\t{"bbox_2d": [1090, 1362, 1130, 1390], "text_content": "1/2"},
\t{"bbox_2d": [1200, 10, 1300, 40], "text_content": "outside"},
\t{"bbox_2d": [300, 300, 300, 340], "text_content": "zero width"}
]
```"""

# Qwen3-VL grounding: 0..1000 relative coordinates, label is text or a layout category.
QWEN3_GROUNDING = """[
  {"bbox_2d": [62, 38, 938, 71], "label": "Quarterly Sales Summary"},
  {"bbox_2d": [62, 96, 512, 120], "text_content": "Region: North-East", "label": "text"},
  {"bbox_2d": [62, 130, 938, 560], "label": "table"},
  {"bbox_2d": [62, 600, 512, 640], "label": "section_header", "text": "Notes"}
]"""

# QwenVL HTML document parsing (Qwen2.5-VL style, absolute input pixels, page 1700x2200).
QWEN_HTML = """```html
<html><body>
<div class="header" data-bbox="60 30 400 52">ACME Corp · Internal</div>
<h1 data-bbox="60 80 790 130">Annual Report 2023</h1>
<h2 data-bbox="60 150 400 180">1. Overview</h2>
<p data-bbox="60 190 790 260">Revenue grew by 12% &amp; margins improved.<br/>See Table 1 below.</p>
<style>table1 { border: 1px solid }</style><table data-bbox="60 280 790 420" class="table1"><tr><th>Year</th><th>Revenue</th></tr><tr><td>2022</td><td>1.0 M</td></tr><tr><td>2023</td><td>1.12 M</td></tr></table>
<div class="formula" data-bbox="200 440 650 480"><img data-bbox="200 440 650 480" /><div> $$E = mc^2$$ </div></div>
<div class="image caption" data-bbox="60 500 790 700"><img data-bbox="60 500 790 660" /><p> Figure 1: Revenue by region </p></div>
<div class="image" data-bbox="60 720 400 900"><img data-bbox="60 720 400 900" /></div>
<div class="footer" data-bbox="400 1060 450 1080">3</div>
</body></html>
```"""


def test_qwen2_spotting_pixels_scaled_clamped_and_fixed():
    blocks = parse_qwen_grounding(QWEN2_SPOTTING, "pixels", (1120, 1400), (2240, 2800))
    assert [(b.bbox, b.category, b.text) for b in blocks] == [
        ((168, 112, 1064, 196), "Text", "INVOICE No. 2024-0173"),
        ((168, 260, 1400, 316), "Text", "Bill to: Müller & Söhne GmbH"),
        ((168, 340, 920, 392), "Text", "Total due: €1,250.00"),  # corners were swapped
        ((2180, 2724, 2240, 2780), "Text", "1/2"),  # clamped to the page's right edge
    ]


def test_qwen2_non_uniform_scale():
    text = '[{"bbox_2d": [100, 200, 300, 400], "text_content": "x"}]'
    (block,) = parse_qwen_grounding(text, "pixels", (1000, 800), (1500, 1000))
    assert block.bbox == (150, 250, 450, 500)


def test_qwen3_relative_coordinates_and_labels():
    blocks = parse_qwen_grounding(QWEN3_GROUNDING, "relative1000", (1024, 1440), (1654, 2339))
    assert [(b.bbox, b.category, b.text) for b in blocks] == [
        ((102.55, 88.88, 1551.45, 166.07), "Text", "Quarterly Sales Summary"),
        ((102.55, 224.54, 846.85, 280.68), "Text", "Region: North-East"),
        ((102.55, 304.07, 1551.45, 1309.84), "Table", ""),
        ((102.55, 1403.4, 846.85, 1496.96), "Section-header", "Notes"),
    ]


def test_qwen_single_object_and_truncated_output():
    single = '{"bbox_2d": [0, 0, 500, 500], "label": "Total: 42"}'
    (block,) = parse_qwen_grounding(single, "relative1000", (0, 0), (200, 100))
    assert block.bbox == (0, 0, 100, 50) and block.text == "Total: 42"

    truncated = ('```json\n[\n {"bbox_2d": [10, 10, 50, 20], "text_content": "first"},\n'
                 ' {"bbox_2d": [10, 30, 50, 40], "text_content": "sec')
    blocks = parse_qwen_grounding(truncated, "pixels", (100, 100), (100, 100))
    assert [b.text for b in blocks] == ["first"]


def test_qwen_html_blocks():
    blocks = parse_qwen_grounding(QWEN_HTML, "pixels", (850, 1100), (1700, 2200))
    assert [(b.bbox, b.category) for b in blocks] == [
        ((120, 60, 800, 104), "Page-header"),
        ((120, 160, 1580, 260), "Title"),
        ((120, 300, 800, 360), "Section-header"),
        ((120, 380, 1580, 520), "Text"),
        ((120, 560, 1580, 840), "Table"),
        ((400, 880, 1300, 960), "Formula"),
        ((120, 1000, 1580, 1400), "Caption"),
        ((120, 1440, 800, 1800), "Picture"),
        ((800, 2120, 900, 2160), "Page-footer"),
    ]
    texts = [b.text for b in blocks]
    assert texts[0] == "ACME Corp · Internal"
    assert texts[3] == "Revenue grew by 12% & margins improved.\nSee Table 1 below."
    assert texts[4] == ("<table><tr><th>Year</th><th>Revenue</th></tr><tr><td>2022</td>"
                        "<td>1.0 M</td></tr><tr><td>2023</td><td>1.12 M</td></tr></table>")
    assert texts[5] == "$$E = mc^2$$"
    assert texts[6] == "Figure 1: Revenue by region"
    assert texts[7] == ""


def test_qwen_html_relative_and_truncated():
    text = ('<html><body><h2 data-bbox="100 100 900 150">Résumé</h2>'
            '<p data-bbox="100 200 900 400">First paragraph'
            '<p data-bbox="100 420 900 500">Second, cut o')
    blocks = parse_qwen_grounding(text, "relative1000", (0, 0), (1000, 2000))
    assert [(b.bbox, b.category, b.text) for b in blocks] == [
        ((100, 200, 900, 300), "Section-header", "Résumé"),
        ((100, 400, 900, 800), "Text", "First paragraph"),
        ((100, 840, 900, 1000), "Text", "Second, cut o"),
    ]


# Qwen2-VL's own grounding markup: special tokens around the reference and the box, [0,1000) grid.
QWEN2_NATIVE = (
    "The page reads:\n"
    "<|object_ref_start|>INVOICE No. 2024-0173<|object_ref_end|><|box_start|>(50,20),(320,35)<|box_end|>\n"
    "<|object_ref_start|>Paid<|object_ref_end|><|box_start|>(50,40),(90,50)<|box_end|>"
    "<|box_start|>(500,40),(540,50)<|box_end|>\n"
    "Total: 1,250.00<|box_start|>(50, 900), (400, 930)<|box_end|>\n"
    "<|object_ref_start|>cut off<|object_ref_end|><|box_start|>(10,9"
)


def test_qwen2_native_grounding_markup():
    blocks = parse_qwen_grounding(QWEN2_NATIVE, "relative1000", (1064, 1484), (2000, 3000))
    assert [(b.bbox, b.text) for b in blocks] == [
        ((100, 60, 640, 105), "INVOICE No. 2024-0173"),
        ((100, 120, 180, 150), "Paid"),
        ((1000, 120, 1080, 150), "Paid"),  # two boxes for one reference
        ((100, 2700, 800, 2790), "Total: 1,250.00"),  # a box after plain text takes that line
    ]
    assert strip_special_tokens(QWEN2_NATIVE).startswith("The page reads:\nINVOICE No. 2024-0173(50,20),(320,35)")


def test_qwen3_python_literal_answers_whole_and_truncated():
    literal = ("```python\n[{'bbox_2d': [100, 100, 500, 150], 'text_content': 'Tom\\'s {cafe}'}, "
               "{'bbox_2d': [100, 200, 500, 250], 'text_content': \"it's [done]\"}, "
               "{'bbox_2d': [100, 300, 500, 350], 'text_content': 'cut o")
    blocks = parse_qwen_grounding(literal, "relative1000", (0, 0), (1000, 1000))
    assert [(b.bbox, b.text) for b in blocks] == [
        ((100, 100, 500, 150), "Tom's {cafe}"), ((100, 200, 500, 250), "it's [done]")]


def test_dots_json_repair_mends_what_the_model_gets_wrong():
    text = ('[{bbox: [0, 0, 10, 10], "category": "Text", "text": "unquoted key"}, '
            '{"bbox": [0, 20, 10, 30], "category": "Text", "text": "trailing comma",}]')
    blocks, warnings = parse_dots_layout(text, (100, 100), (100, 100))
    assert [b.text for b in blocks] == ["unquoted key", "trailing comma"]
    assert warnings == ["repaired 2 malformed element(s)"]


def test_dots_element_cut_at_a_tag_end_is_kept():
    """Where the loop guard stops a table it cuts after a closing tag: the table's rows are kept."""
    table = "<table><tr><td>Tea</td><td>1.20</td></tr><tr><td>Tea</td><td>1.20</td></tr>"
    text = "[" + el(0, 0, 100, 10, "Title", "Prices") + ', {"bbox": [0, 20, 100, 90], "category": "Table", "text": "'
    blocks, warnings = parse_dots_layout(text + table, (100, 100), (100, 100))
    assert [(b.category, b.text) for b in blocks] == [("Title", "Prices"), ("Table", table)]
    assert warnings == ["output was truncated: kept the last element up to the line or tag where it was cut"]
    assert blocks_to_text(blocks) == "Prices\nTea\t1.20\nTea\t1.20"


def test_qwen_garbage_gives_no_blocks():
    assert parse_qwen_grounding("I cannot see any text.", "pixels", (10, 10), (10, 10)) == []
    assert parse_qwen_grounding("", "relative1000", (10, 10), (10, 10)) == []
    assert parse_qwen_grounding("[1, 2, {oops", "pixels", (10, 10), (10, 10)) == []


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        parse_qwen_grounding("[]", "normalized", (10, 10), (10, 10))
    with pytest.raises(ValueError):
        parse_dots_layout("[]", (0, 10), (10, 10))


# ------------------------------------------------------------------ dots.ocr

# Page 1700x2200 (letter at 200 dpi); dots' smart resize rounds it to 1708x2212 (28-multiples).
PAGE, INPUT = (1700, 2200), (1708, 2212)
DOTS_ITEMS = [
    {"bbox": [142, 62, 980, 96], "category": "Page-header",
     "text": "Journal of Document Engineering, Vol. 12, No. 3"},
    {"bbox": [142, 160, 1566, 262], "category": "Title",
     "text": "Robust Parsing of Layout Outputs"},
    {"bbox": [142, 300, 640, 344], "category": "Section-header", "text": "1. Introduction"},
    {"bbox": [142, 360, 1566, 520], "category": "Text",
     "text": "Layout models return **blocks** in reading order."},
    {"bbox": [170, 536, 1566, 580], "category": "List-item",
     "text": "- Tables are emitted as HTML."},
    {"bbox": [520, 600, 1190, 690], "category": "Formula",
     "text": "$$\n\\frac{a}{b} = \\sum_{i=1}^{n} x_i\n$$"},
    {"bbox": [142, 720, 1566, 1100], "category": "Table",
     "text": "<table><thead><tr><th>Model</th><th>Edit ↓</th></tr></thead><tbody><tr><td>dots.ocr"
             "</td><td>0.032</td></tr><tr><td>A &amp; B</td><td>0.1|0.2</td></tr></tbody></table>"},
    {"bbox": [300, 1150, 1400, 1800], "category": "Picture"},
    {"bbox": [300, 1810, 1400, 1850], "category": "Caption",
     "text": "Figure 1: Edit distance per model."},
    {"bbox": [142, 1980, 1000, 2020], "category": "Footnote", "text": "¹ Lower is better."},
    {"bbox": [820, 2120, 880, 2150], "category": "Page-footer", "text": "3"},
]
DOTS_OUTPUT = json.dumps(DOTS_ITEMS, ensure_ascii=False)

DOTS_MARKDOWN = """# Robust Parsing of Layout Outputs

## 1. Introduction

Layout models return **blocks** in reading order.

- Tables are emitted as HTML.

$$
\\frac{a}{b} = \\sum_{i=1}^{n} x_i
$$

| Model | Edit ↓ |
| --- | --- |
| dots.ocr | 0.032 |
| A & B | 0.1\\|0.2 |

![Picture](page region 299,1144,1393,1790)

Figure 1: Edit distance per model.

¹ Lower is better."""


def el(x1, y1, x2, y2, category="Text", text="t"):
    return json.dumps({"bbox": [x1, y1, x2, y2], "category": category, "text": text})


def test_dots_full_layout_maps_boxes_to_page():
    blocks, warnings = parse_dots_layout(DOTS_OUTPUT, INPUT, PAGE)
    assert warnings == []
    assert [b.category for b in blocks] == [item["category"] for item in DOTS_ITEMS]
    assert blocks[0].bbox == (141.33, 61.66, 975.41, 95.48)
    assert blocks[1].bbox == (141.33, 159.13, 1558.67, 260.58)
    assert blocks[7].bbox == (298.59, 1143.76, 1393.44, 1790.24)
    assert blocks[7].text == ""
    assert blocks[10].bbox == (816.16, 2108.5, 875.88, 2138.34)
    assert blocks[5].text == "$$\n\\frac{a}{b} = \\sum_{i=1}^{n} x_i\n$$"


def test_dots_markdown():
    blocks, _ = parse_dots_layout(DOTS_OUTPUT, INPUT, PAGE)
    assert dots_blocks_to_markdown(blocks) == DOTS_MARKDOWN
    with_margins = dots_blocks_to_markdown(blocks, include_headers_footers=True)
    assert with_margins.startswith("Journal of Document Engineering, Vol. 12, No. 3\n\n# Robust")
    assert with_margins.endswith("¹ Lower is better.\n\n3")


def test_dots_plain_text():
    blocks, _ = parse_dots_layout(DOTS_OUTPUT, INPUT, PAGE)
    assert blocks_to_text(blocks) == "\n".join([
        "Journal of Document Engineering, Vol. 12, No. 3",
        "Robust Parsing of Layout Outputs",
        "1. Introduction",
        "Layout models return **blocks** in reading order.",
        "- Tables are emitted as HTML.",
        "\\frac{a}{b} = \\sum_{i=1}^{n} x_i",
        "Model\tEdit ↓",
        "dots.ocr\t0.032",
        "A & B\t0.1|0.2",
        "Figure 1: Edit distance per model.",
        "¹ Lower is better.",
        "3",
    ])


def test_dots_code_fence_and_single_escaped_latex():
    text = ('```json\n[{"bbox": [0, 0, 100, 50], "category": "Formula",'
            ' "text": "\\alpha + \\beta"},'
            ' {"bbox": [0, 60, 100, 90], "category": "Text", "text": "ok"}]\n```')
    blocks, warnings = parse_dots_layout(text, (100, 100), (100, 100))
    assert [b.text for b in blocks] == ["\\alpha + \\beta", "ok"]
    assert warnings == ["repaired 1 malformed element(s)"]


def test_dots_truncated_mid_string():
    text = "[" + ", ".join([el(10, 10, 90, 20, text="one"), el(10, 30, 90, 40, text="two")])
    text += ', {"bbox": [10, 50, 90, 60], "category": "Text", "text": "The quick br'
    blocks, warnings = parse_dots_layout(text, (100, 100), (200, 200))
    assert [(b.bbox, b.text) for b in blocks] == [
        ((20, 20, 180, 40), "one"), ((20, 60, 180, 80), "two")]
    assert warnings == ["output was truncated: dropped an incomplete element"]


def test_dots_truncated_mid_element():
    text = "[" + el(10, 10, 90, 20, "Title", "Report") + ',\n{"bbox": [10, 30, 9'
    blocks, warnings = parse_dots_layout(text, (100, 100), (100, 100))
    assert [(b.category, b.text) for b in blocks] == [("Title", "Report")]
    assert warnings == ["output was truncated: dropped an incomplete element"]


def test_dots_truncated_after_complete_element():
    text = "[" + el(10, 10, 90, 20) + ", "
    blocks, warnings = parse_dots_layout(text, (100, 100), (100, 100))
    assert len(blocks) == 1
    assert warnings == ["output was truncated: added the missing closing bracket"]


def test_dots_missing_commas_and_trailing_comma():
    text = ("[" + el(0, 0, 10, 10, text="a") + el(0, 20, 10, 30, text="b") + "\n"
            + el(0, 40, 10, 50, text="c") + ",\n" + el(0, 60, 10, 70, text="d") + ",\n]")
    blocks, warnings = parse_dots_layout(text, (100, 100), (100, 100))
    assert [b.text for b in blocks] == ["a", "b", "c", "d"]
    assert warnings == [
        "inserted 2 missing comma(s) between elements",
        "removed a trailing comma before the closing bracket",
    ]


def test_dots_missing_comma_inside_element():
    text = '[{"bbox": [0, 0, 10, 10] "category": "Text", "text": "x"}]'
    blocks, warnings = parse_dots_layout(text, (100, 100), (100, 100))
    assert [(b.bbox, b.text) for b in blocks] == [((0, 0, 10, 10), "x")]
    assert warnings == ["repaired 1 malformed element(s)"]


def test_dots_repetition_loop_is_deduplicated():
    head = [el(0, 0, 100, 20, "Title", "Price list"), el(0, 30, 100, 40, "Text", "Item ........ 4")]
    loop = [el(0, 50, 100, 60, "Text", "........"), el(0, 60, 100, 70, "Text", "........")]
    text = "[" + ", ".join(head + loop * 25) + ', {"bbox": [0, 50, 100, 6'
    blocks, warnings = parse_dots_layout(text, (100, 100), (100, 100))
    assert [(b.bbox[1], b.text) for b in blocks] == [
        (0, "Price list"), (30, "Item ........ 4"), (50, "........"), (60, "........")]
    assert warnings == [
        "output was truncated: dropped an incomplete element",
        "removed 48 duplicate blocks (repeated output)",
    ]


def test_dots_invalid_and_degenerate_boxes_are_dropped():
    items = [
        {"bbox": [0, 0, 50, 50], "category": "Text", "text": "kept"},
        {"bbox": [0, 0, 50], "category": "Text", "text": "three numbers"},
        {"category": "Text", "text": "no box"},
        {"bbox": [200, 200, 300, 300], "category": "Text", "text": "off page"},
        {"bbox": [10, 10, 10, 40], "category": "Text", "text": "zero width"},
    ]
    blocks, warnings = parse_dots_layout(json.dumps(items), (100, 100), (100, 100))
    assert [b.text for b in blocks] == ["kept"]
    assert warnings == [
        "dropped 2 element(s) without a valid bbox",
        "dropped 2 box(es) with zero area or outside the page",
    ]


def test_dots_category_spelling_is_normalised():
    text = '[{"bbox": [0, 0, 10, 10], "category": "section_header", "text": "Intro"}]'
    blocks, _ = parse_dots_layout(text, (10, 10), (10, 10))
    assert blocks[0].category == "Section-header"


@pytest.mark.parametrize("garbage", [
    "I'm sorry, but I can't process this image.",
    "{{{{{{",
    "# Heading\n\nThe value is \\frac{1}{2} of the total.",
    '[{"bbox": [1, 2, 3',
])
def test_dots_garbage_returns_no_blocks_and_one_warning(garbage):
    blocks, warnings = parse_dots_layout(garbage, (100, 100), (100, 100))
    assert blocks == []
    assert len(warnings) == 1


def test_dots_empty_page_and_empty_output():
    assert parse_dots_layout("[]", (100, 100), (100, 100)) == ([], [])
    assert parse_dots_layout("  ", (100, 100), (100, 100)) == ([], ["model output was empty"])


# ------------------------------------------------------------------ rendering


def block(category, text="", bbox=(0, 0, 10, 10)):
    return Block(bbox=bbox, category=category, text=text)


def test_markdown_keeps_existing_heading_marks_and_spanned_tables():
    spanned = ('<table><tr><td rowspan="2">Q1</td><td>Jan</td></tr><tr><td>Feb</td></tr></table>')
    blocks = [
        block("Section-header", "### 2.1 Setup"),
        block("Title", ""),
        block("Table", spanned),
        block("Formula", "\\[ x^2 \\]"),
    ]
    assert dots_blocks_to_markdown(blocks) == f"### 2.1 Setup\n\n{spanned}\n\n$$\nx^2\n$$"


def test_html_table_to_markdown_pads_short_rows():
    table = "<table><tr><td>a</td><td>b</td><td>c</td></tr><tr><td>1<br>2</td></tr></table>"
    assert html_table_to_markdown(table) == "| a | b | c |\n| --- | --- | --- |\n| 1 2 |  |  |"
    assert html_table_to_markdown("<table><tr><td><table></table></td></tr></table>") is None
    assert html_table_to_markdown("<p>not a table</p>") is None


def test_plain_text_flattens_spanned_tables_and_strips_tags():
    blocks = [
        block("Section-header", "## Results"),
        block("Table", '<table><tr><th colspan="2">Total</th></tr>'
                       '<tr><td>1</td><td>2</td></tr></table>'),
        block("Text", "H<sub>2</sub>O &lt; 5 &amp; x<y"),
        block("Picture", "ignored"),
    ]
    assert blocks_to_text(blocks) == "Results\nTotal\n1\t2\nH2O < 5 & x<y"


def test_dots_latex_swallowed_by_valid_json_escapes_is_restored():
    # Valid JSON, but "\frac" and "\theta" were written with one backslash: form feed and tab.
    text = '[{"bbox": [0, 0, 10, 10], "category": "Formula", "text": "\\frac{1}{2} \\theta"}]'
    blocks, warnings = parse_dots_layout(text, (10, 10), (10, 10))
    assert blocks[0].text == "\\frac{1}{2} \\theta"
    assert warnings == []


def test_dots_text_around_the_json_is_ignored_with_warnings():
    text = "Here is the layout:\n[" + el(0, 0, 10, 10) + "]\nDone."
    blocks, warnings = parse_dots_layout(text, (10, 10), (10, 10))
    assert len(blocks) == 1
    assert warnings == ["ignored text after the closing bracket", "ignored text before the JSON"]


def test_qwen_html_table_div_with_a_table_inside_and_without_one():
    text = ('<div class="table" data-bbox="0 0 50 50">'
            '<table><tr><td>a</td><td>b</td></tr></table></div>'
            '<div class="table" data-bbox="0 50 50 100">Data not legible</div>')
    blocks = parse_qwen_grounding(text, "pixels", (100, 100), (100, 100))
    assert [(b.category, b.text) for b in blocks] == [
        ("Table", "<table><tr><td>a</td><td>b</td></tr></table>"),
        ("Table", "Data not legible"),
    ]
    assert blocks_to_text(blocks) == "a\tb\nData not legible"
    assert dots_blocks_to_markdown(blocks) == "| a | b |\n| --- | --- |\n\nData not legible"
