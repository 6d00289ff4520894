"""The History page through AppTest: stored results listed newest first, filtered, searched, reopened
with their page after a restart, exported and deleted."""
from __future__ import annotations

import json

import pytest

from tests.conftest import png_bytes, render_text_page
from tests.test_documents import make_pdf
from utils.config import cached_settings
from utils.documents.reader import open_document
from utils.engine.loader import Loader
from utils.engine.runner import run_pages
from utils.store import Store


@pytest.fixture
def stored(tmp_path, monkeypatch) -> Store:
    """A store holding real Tesseract results: a PNG, then two pages of a PDF; the app pointed at it."""
    path = tmp_path / "results.db"
    monkeypatch.setenv("OCR_STORE_DB", str(path))
    store = Store(path)
    invoice = open_document("invoice.png", png_bytes(render_text_page(["Invoice 4521 for March", "Счёт на оплату"])))
    report = open_document("report.pdf", make_pdf(2))
    loader = Loader(cached_settings())
    try:
        for document, pages, task in ((invoice, [0], "text"), (report, [0, 1], "layout")):
            for outcome in run_pages(loader, document, pages, "tesseract", task):
                store.save(outcome.key, outcome.result, document)
    finally:
        loader.close()
    return store


def open_history(app_test):
    at = app_test()
    at.switch_page("pages/history.py").run()
    assert not at.exception, at.exception
    return at


def opened_json(at) -> dict:
    return json.loads(at.json[0].value)


def test_lists_newest_first_and_reopens_with_the_page_after_a_restart(stored, app_test):
    at = open_history(app_test)
    assert at.title[0].value == "History"
    table = at.dataframe[0].value
    assert list(table["document"]) == ["report.pdf", "report.pdf", "invoice.png"]
    assert list(table["page"]) == [2, 1, 1]
    opened = opened_json(at)
    assert opened["task"] == "layout" and opened["page"] == 1 and opened["blocks"]
    assert len(at.get("image")) == 1  # the page with its boxes
    at.selectbox(key="history_open").select_index(2).run()
    assert "Invoice 4521 for March" in at.text_area[0].value

    again = open_history(app_test)  # a new session: nothing comes from the old one's state
    again.selectbox(key="history_open").select_index(2).run()
    assert again.text_area[0].value == at.text_area[0].value
    assert opened_json(again) == opened_json(at)


def test_filters_and_search(stored, app_test):
    at = open_history(app_test)
    at.selectbox(key="history_document").set_value("invoice.png").run()
    assert list(at.dataframe[0].value["document"]) == ["invoice.png"]
    at.selectbox(key="history_document").set_value("All")
    at.selectbox(key="history_task").set_value("layout").run()
    assert list(at.dataframe[0].value["task"]) == ["layout", "layout"]
    at.selectbox(key="history_task").set_value("All")
    at.text_input(key="history_search").input("счет").run()
    assert list(at.dataframe[0].value["document"]) == ["invoice.png"]
    at.text_input(key="history_search").input("no such words anywhere").run()
    assert at.info[0].value == "Nothing matches these filters."


def test_exports_and_delete(stored, app_test):
    at = open_history(app_test)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["⬇ TXT", "⬇ MD", "⬇ JSON", "⬇ PDF (searchable)",  # the page
                      "⬇ TXT", "⬇ MD", "⬇ JSON", "⬇ ZIP (all)", "⬇ PDF (searchable)"]  # its two-page document
    at.button(key="history_delete_one").click().run()
    assert not at.exception
    assert list(at.dataframe[0].value["page"]) == [1, 1]
    assert stored.count() == 2
    at.checkbox(key="history_delete_confirm").check().run()
    at.button(key="history_delete_many").click().run()
    assert stored.count() == 0
    assert at.info[0].value.startswith("No results stored yet")
