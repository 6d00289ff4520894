"""Scripts and languages: no Cyrillic look-alikes in English text from Tesseract's rus+eng, languages per
document, and a warning where RapidOCR meets a script its bundled models cannot read."""
import re

import pytest

from models.classic.script import (
    OsdScriptDetector,
    dominant_script,
    letter_script,
    script_letters,
    split_by_script,
    unread_share,
)
from models.contract import RunOptions
from models.registry import ModelSpec, Profile
from models.tesseract_ocr import TesseractAdapter
from tests.conftest import RU_EN_LINES, render_text_page
from tests.test_classic_adapters import cer
from utils.config import cached_settings
from utils.engine.pool import AdapterPool

CYRILLIC = re.compile("[\u0400-\u04ff]")
# Upper-case English that rus+eng reads as Cyrillic ("Раде", "САРЕХ", "РОН"), amid ordinary prose.
LOOKALIKE_LINES = [
    "Page 4 of 10", "CAPEX TAX PERMIT", "HOME PAGE TYPE", "Type: POH 1PC",
    "The quarterly statement lists every payment made",
    "from the operating account during the period and",
    "the balance carried forward to the following month",
    "together with the fees charged by the bank for",
    "transfers, card payments and cash withdrawals.",
]
RU_LINES = ["Получатель: общество с ограниченной ответственностью", "Спасибо за своевременную оплату услуг",
            "Счёт на оплату услуг связи за март месяц", "Директор предприятия подписал договор"]
EN_LINES = ["The quick brown fox jumps over the lazy dog", "Invoice 4521 total 1250 dollars",
            "Please pay within fourteen days"]


def cyrillic_words(text: str) -> list[str]:
    return [w for w in text.split() if CYRILLIC.search(w)]


@pytest.fixture(scope="module")
def pool():
    pool = AdapterPool(cached_settings())
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def lookalike_page():
    return render_text_page(LOOKALIKE_LINES, size=34)


def tesseract(**options) -> TesseractAdapter:
    spec = ModelSpec(adapter="tesseract_ocr", label="t", tasks=["text", "layout"], options=options)
    adapter = TesseractAdapter("tesseract", spec, Profile(device="cpu"))
    adapter.load()
    return adapter


def test_letters_are_counted_per_script_in_words_of_three_letters_or_more():
    assert [letter_script(c) for c in "aд1中"] == ["Latin", "Cyrillic", None, "Han"]
    counts = script_letters(["Page", "Раде", "на", "1РС", "Ω"])
    assert counts == {"Latin": 4, "Cyrillic": 4}
    assert dominant_script(counts) is None  # half and half: mixed
    assert dominant_script(script_letters(["Latin"] * 5 + ["Раде"])) == "Latin"
    assert dominant_script(script_letters(["short"])) is None  # too few letters to tell
    assert split_by_script(["rus", "eng", "equ", "deu"], "Latin") == (["eng", "deu"], ["rus"])


def test_unread_share_counts_the_word_slots_left_empty():
    assert unread_share(EN_LINES) == 0.0
    assert unread_share([" 24  2013 . N 842"]) == pytest.approx(3 / 7)
    assert unread_share([":    "]) == 1.0 and unread_share([]) == 0.0


def test_english_page_gets_no_cyrillic_lookalikes(pool, lookalike_page):
    unchecked = tesseract(script_check=False)
    try:
        before = unchecked.run(lookalike_page, "text", RunOptions())
    finally:
        unchecked.close()
    assert len(cyrillic_words(before.text)) >= 3, before.text  # the page does provoke look-alikes

    result = pool.run("tesseract", lookalike_page, "text")
    assert cyrillic_words(result.text) == [] and cyrillic_words(result.markdown) == []
    assert all(not CYRILLIC.search(b.text) for b in result.blocks)
    assert cer(result.text, "\n".join(LOOKALIKE_LINES)) < 0.03, result.text
    assert "CAPEX" in result.text and "Page 4 of 10" in result.text


def test_russian_and_mixed_pages_keep_their_cyrillic(pool):
    russian = pool.run("tesseract", render_text_page(RU_LINES), "text")
    assert cer(russian.text, "\n".join(RU_LINES)) < 0.02, russian.text
    mixed = pool.run("tesseract", render_text_page(RU_EN_LINES), "text")
    assert cer(mixed.text, "\n".join(RU_EN_LINES)) < 0.02, mixed.text


def test_languages_chosen_per_document_are_honoured(pool, ru_en_page):
    english_only = pool.run("tesseract", ru_en_page, "text", RunOptions(languages="eng"))
    assert cyrillic_words(english_only.text) == []
    russian_only = pool.run("tesseract", ru_en_page, "text", RunOptions(languages="rus"))
    assert "Счёт" in russian_only.text and russian_only.text != english_only.text
    default = pool.run("tesseract", ru_en_page, "text")
    assert cer(default.text, "\n".join(RU_EN_LINES)) < 0.02  # the choice does not stick to later documents


@pytest.mark.parametrize(("languages", "message"), [
    ("xyz", r"^Tesseract has no language data for xyz \(installed: .*eng.*rus.*\); install tesseract-ocr-xyz$"),
    ("rus eng", r"^Tesseract languages 'rus eng': give language codes joined by '\+', e.g. rus\+eng$"),
])
def test_unknown_languages_are_one_clear_line(pool, ru_en_page, languages, message):
    with pytest.raises(ValueError, match=message):
        pool.run("tesseract", ru_en_page, "text", RunOptions(languages=languages))


def test_engines_for_chosen_languages_stay_loaded_within_a_bound(ru_en_page, monkeypatch):
    monkeypatch.setattr(TesseractAdapter, "MAX_EXTRA_ENGINES", 1)
    adapter = tesseract()
    try:
        assert set(adapter._engines) == {"rus+eng", "eng"}  # the configured set and its Latin part
        adapter.run(ru_en_page, "text", RunOptions(languages="rus"))
        engine = adapter._engines["rus"]
        adapter.run(ru_en_page, "text", RunOptions(languages="rus"))
        assert adapter._engines["rus"] is engine  # loaded once
        adapter.run(ru_en_page, "text", RunOptions(languages="eng+rus"))
        assert set(adapter._engines) == {"rus+eng", "eng", "eng+rus"}  # the older choice was let go
    finally:
        adapter.close()
    assert not adapter._engines


def test_rapidocr_warns_on_a_cyrillic_page_and_names_the_engine_that_reads_it(pool):
    result = pool.run("rapidocr", render_text_page(RU_LINES), "text")
    assert len(result.warnings) == 1, result.warnings
    warning = result.warnings[0]
    assert "Tesseract (rus+eng)" in warning and "Latin and Chinese only" in warning
    if OsdScriptDetector.create() is not None:
        assert warning.startswith("this page looks Cyrillic;")


def test_rapidocr_warns_on_a_half_russian_page_but_not_on_english(pool, ru_en_page):
    assert pool.run("rapidocr", render_text_page(EN_LINES), "text").warnings == []
    mixed = pool.run("rapidocr", ru_en_page, "text")
    assert len(mixed.warnings) == 1 and "Tesseract" in mixed.warnings[0], mixed.warnings


def test_rapidocr_warning_without_script_detection(pool, monkeypatch):
    monkeypatch.setattr(OsdScriptDetector, "create", classmethod(lambda cls: None))
    pool.close()  # a fresh adapter, which finds no script detection
    result = pool.run("rapidocr", render_text_page(RU_LINES), "text")
    assert result.warnings and re.match(r"^\d+% of the words on this page came back empty: .* use Tesseract",
                                        result.warnings[0]), result.warnings
    pool.close()
