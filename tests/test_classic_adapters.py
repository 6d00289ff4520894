"""The classic engines on real rendered text, through the loader as the app uses them."""
import pytest
from PIL import Image
from rapidfuzz.distance import Levenshtein

from tests.conftest import RU_EN_LINES, render_text_page
from utils.config import cached_settings
from utils.engine.pool import AdapterPool

EN_LINES = ["The quick brown fox jumps over the lazy dog", "Invoice 4521 total 1250 dollars",
            "Please pay within fourteen days"]


def cer(hypothesis: str, reference: str) -> float:
    fold = lambda s: " ".join(s.split())  # noqa: E731 — whitespace is not what is measured here
    return Levenshtein.distance(fold(hypothesis), fold(reference)) / len(fold(reference))


@pytest.fixture(scope="module")
def pool():
    pool = AdapterPool(cached_settings())
    yield pool
    pool.close()


def test_tesseract_reads_russian_and_english_under_2_percent_cer(pool, ru_en_page):
    result = pool.run("tesseract", ru_en_page, "text")
    assert cer(result.text, "\n".join(RU_EN_LINES)) < 0.02, result.text
    assert result.model == "tesseract" and result.device == "cpu" and result.seconds > 0
    assert len(result.blocks) == len(RU_EN_LINES)
    first = result.blocks[0]
    x1, y1, x2, y2 = first.bbox
    assert 60 <= x1 <= 100 and 50 <= y1 <= 80 and x2 > 600  # the first line's box on the page
    assert "Invoice" in first.text and 0 < first.score <= 1


def test_tesseract_stays_loaded_between_pages(pool, ru_en_page):
    pool.run("tesseract", ru_en_page, "text")
    again = pool.run("tesseract", ru_en_page, "text")
    assert again.load_seconds is None and pool.resident == ["tesseract"]


def test_tesseract_layout_gives_blocks_with_categories(pool, ru_en_page):
    result = pool.run("tesseract", ru_en_page, "layout")
    assert result.blocks and all(b.category in ("Text", "Section-header") for b in result.blocks)
    assert "Счёт" in " ".join(b.text for b in result.blocks)


def test_rapidocr_reads_english_with_boxes(pool):
    page = render_text_page(EN_LINES)
    result = pool.run("rapidocr", page, "text")
    assert cer(result.text, "\n".join(EN_LINES)) < 0.05, result.text
    assert result.text.splitlines()[0].startswith("The quick brown fox")
    assert len(result.blocks) >= len(EN_LINES)
    assert all(0 <= b.bbox[0] < b.bbox[2] <= page.width for b in result.blocks)


def test_switching_models_frees_the_previous_one(pool, ru_en_page):
    pool.run("tesseract", ru_en_page, "text")
    pool.run("rapidocr", ru_en_page, "text")
    assert pool.resident == ["rapidocr"]


def test_unsupported_task_is_a_clear_error(pool, ru_en_page):
    with pytest.raises(ValueError, match="rapidocr does not do 'markdown'; it supports: text, layout"):
        pool.run("rapidocr", ru_en_page, "markdown")


def test_tesseract_reads_a_page_taller_than_its_limit_in_strips(pool):
    top, bottom = render_text_page(EN_LINES[:2], width=900), render_text_page(RU_EN_LINES[1:3], width=900)
    tall = Image.new("RGB", (900, 40000), "white")
    tall.paste(top, (0, 0))
    tall.paste(bottom, (0, 39000))
    result = pool.run("tesseract", tall, "text")
    assert result.warnings == ["the page is 40,000 px tall, over Tesseract's limit of 32,767 px a side: "
                               "read in 2 overlapping strips"]
    assert cer(result.text, "\n".join(EN_LINES[:2] + RU_EN_LINES[1:3])) < 0.03, result.text
    assert len(result.blocks) == 4 and all(39000 < b.bbox[1] < 39200 for b in result.blocks[2:])  # page coordinates
    assert "Счёт" in result.markdown and result.height == 40000
