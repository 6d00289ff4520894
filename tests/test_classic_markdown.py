"""Markdown from the classic engines' layout: headings by size, paragraphs, line breaks, pipe tables."""
import pytest
from PIL import Image, ImageDraw

from models.classic.layout import Line, Word, find_tables, page_text, to_markdown
from tests.conftest import font, render_text_page
from utils.config import cached_settings
from utils.engine.pool import AdapterPool

PROSE = ["Sales grew in every region this quarter, led by strong",
         "demand for the new product line and steady service revenue."]
PROSE_2 = ["The board approved the budget for the next year and",
           "asked for a review of the travel expenses in March."]
TABLE = [("Region", "Units", "Revenue"), ("North", "1200", "45000"), ("South", "950", "38500"),
         ("East", "1430", "51200"), ("West", "780", "29900")]


def report_page() -> Image.Image:
    """A title, two paragraphs and a table with three clear columns, like a rendered report page."""
    image = Image.new("RGB", (1400, 1000), "white")
    draw = ImageDraw.Draw(image)
    draw.text((80, 60), "Quarterly Report", font=font(64), fill="black")
    body = font(30)
    y = 180
    for paragraph in (PROSE, PROSE_2):
        for line in paragraph:
            draw.text((80, y), line, font=body, fill="black")
            y += 50
        y += 50
    y += 10
    for row in TABLE:
        for x, cell in zip((80, 560, 1000), row):
            draw.text((x, y), cell, font=body, fill="black")
        y += 60
    return image


@pytest.fixture(scope="module")
def pool():
    pool = AdapterPool(cached_settings())
    yield pool
    pool.close()


def paragraphs(markdown: str) -> list[str]:
    return [p for p in markdown.strip().split("\n\n") if p]


@pytest.mark.parametrize("model", ["tesseract", "rapidocr"])
def test_report_page_becomes_heading_paragraphs_and_pipe_table(pool, model):
    result = pool.run(model, report_page(), "text")
    parts = paragraphs(result.markdown)
    assert parts[0] == "# Quarterly Report", result.markdown
    assert " ".join(parts[1].split()) == " ".join(PROSE), result.markdown
    assert " ".join(parts[2].split()) == " ".join(PROSE_2), result.markdown
    assert parts[3].splitlines() == ["| Region | Units | Revenue |", "| --- | --- | --- |", "| North | 1200 | 45000 |",
                                     "| South | 950 | 38500 |", "| East | 1430 | 51200 |", "| West | 780 | 29900 |"]
    assert len(parts) == 4
    assert result.markdown != result.text  # the MD download is no longer the TXT one


@pytest.mark.parametrize("model", ["tesseract", "rapidocr"])
def test_plain_prose_stays_prose(pool, model):
    lines = PROSE + PROSE_2
    result = pool.run(model, render_text_page(lines, size=30), "text")
    assert "#" not in result.markdown and "|" not in result.markdown
    assert " ".join(result.markdown.split()) == " ".join(lines), result.markdown


def line(text: str, x: float, y: float, height: float = 30, char: float = 15, **fields) -> Line:
    """A line of words laid out left to right at `x`, `y` with a fixed character width."""
    words = []
    for word in text.split():
        if word == "~":  # a wide gap
            x += 20 * char
            continue
        words.append(Word(text=word, bbox=(x, y, x + len(word) * char, y + height)))
        x += (len(word) + 1) * char
    return Line(words=words, **fields)


def test_two_columns_of_prose_are_not_a_table():
    left = ["the first column holds a long sentence", "that runs on over several lines of", "text set in one size"]
    right = ["while the second column tells another", "story in words that are just as long", "and just as many"]
    lines = [line(t, 50, 100 + 45 * i, block=0) for i, t in enumerate(left)]
    lines += [line(t, 700, 100 + 45 * i, block=1) for i, t in enumerate(right)]
    assert find_tables(lines) == []
    assert "|" not in to_markdown(lines)


def test_a_table_in_one_line_per_row_is_split_at_wide_gaps():
    rows = ["Item ~ Qty ~ Price", "Apples ~ 3 ~ 1.20", "Pears ~ 12 ~ 0.80", "Plums ~ 7 ~ 2.10"]
    markdown = to_markdown([line(t, 50, 100 + 45 * i) for i, t in enumerate(rows)])
    assert markdown.splitlines()[:3] == ["| Item | Qty | Price |", "| --- | --- | --- |", "| Apples | 3 | 1.20 |"]


def test_two_rows_are_not_enough_for_a_table():
    rows = ["Name: ~ John Smith", "Date: ~ 12 March"]
    assert find_tables([line(t, 50, 100 + 45 * i) for i, t in enumerate(rows)]) == []


def test_short_lines_keep_hard_breaks_and_wrapped_lines_do_not():
    address = [line("Bernal Cutlery", 50, 100), line("766 Valencia Street", 50, 140), line("San Francisco", 50, 180),
               line("Thank you for shopping with us, see you again soon", 50, 300)]
    assert paragraphs(to_markdown(address))[0] == "Bernal Cutlery  \n766 Valencia Street  \nSan Francisco"
    prose = [line("a line of prose that fills the column", 50, 100), line("to the end and wraps", 50, 140)]
    assert to_markdown(prose) == "a line of prose that fills the column\nto the end and wraps\n"


def test_heading_levels_follow_the_size_and_a_blot_is_no_heading():
    lines = [line("Annual Review", 50, 50, height=80, char=40), line("Results", 50, 170, height=50, char=25),
             line("the body text is set in this size", 50, 260), line("and goes on here", 50, 300),
             line("S", 50, 400, height=120, char=60), line("more body text in the same size", 50, 560)]
    parts = paragraphs(to_markdown(lines))
    assert parts[:3] == ["# Annual Review", "## Results", "the body text is set in this size\nand goes on here"]
    assert not any(p.startswith("#") for p in parts[3:])


def test_recognised_text_does_not_become_markdown_syntax():
    for text in ("# 12 total", "=====", "> 5 mm", "---"):
        assert to_markdown([line(text, 50, 100)]) == "\\" + text + "\n"
    assert to_markdown([line("5 > 4 # 1", 50, 100)]) == "5 > 4 # 1\n"


def test_page_text_puts_a_blank_line_between_engine_paragraphs():
    lines = [line("first", 50, 100), line("second", 50, 140), line("third", 50, 180, new_paragraph=True),
             line("other column", 700, 100, block=1)]
    assert page_text(lines) == "first\nsecond\n\nthird\n\nother column"
