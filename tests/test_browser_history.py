"""The History page in headless chromium: results written by a batch job are there, reopen with their
page image, and are still there after the server restarts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, render_text_page, serve_app

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def results_db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("history")
    (folder / "scans").mkdir()
    render_text_page(["Delivery note 3141 for the warehouse", "Signed by the driver"], size=32).save(
        folder / "scans" / "delivery.png")
    render_text_page(["Receipt 2718 paid in cash", "Thank you for your visit"], size=32).save(
        folder / "scans" / "receipt.png")
    db = folder / "results.db"
    done = subprocess.run([sys.executable, "cli.py", "batch", str(folder / "scans"), "--model", "tesseract",
                           "--out", str(folder / "out"), "--db", str(db), "--workers", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return db


def reopen(browser, url: str, document: str) -> str:
    """Open the History page, open `document`'s result, and return the text shown for it."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        tab.goto(f"{url}/history")
        tab.get_by_role("heading", name="History").wait_for()
        tab.get_by_text("2 result(s) · store:").wait_for()
        picker = tab.get_by_test_id("stSelectbox").filter(has_text="Open a result")
        picker.get_by_role("combobox").click()
        tab.get_by_role("option").filter(has_text=document).click()
        tab.get_by_role("heading", name=f"{document}, page 1").wait_for()
        image = tab.get_by_test_id("stImage").locator("img").first
        image.wait_for()
        tab.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        assert tab.get_by_text("Traceback").count() == 0
        return tab.get_by_label("Recognised text").input_value()
    finally:
        context.close()


def test_history_reopens_stored_results_before_and_after_a_restart(browser, results_db):
    env = {"OCR_STORE_DB": str(results_db)}
    with serve_app(env) as url:
        before = reopen(browser, url, "scans/delivery.png")
        assert "Delivery note 3141" in before
        assert "Receipt 2718" in reopen(browser, url, "scans/receipt.png")
    with serve_app(env) as url:  # a fresh server process: only the store remembers
        assert reopen(browser, url, "scans/delivery.png") == before
